using System.Buffers;
using System.Collections.Concurrent;

namespace FlashMla.Http2.Tests;

/// <summary>A pool that counts what it hands out and what comes back: a test sees every array returned once, and the bytes rented.</summary>
internal sealed class CountingPool : ArrayPool<byte>
{
    private readonly ArrayPool<byte> _inner = Create(1 << 30, 64);
    private readonly ConcurrentDictionary<byte[], int> _out = new(ReferenceEqualityComparer.Instance);
    private long _rents, _requestedBytes;

    public long Rents => Interlocked.Read(ref _rents);

    /// <summary>Bytes asked for (not the rounded-up array sizes).</summary>
    public long RequestedBytes => Interlocked.Read(ref _requestedBytes);

    public int Outstanding => _out.Count;

    public override byte[] Rent(int minimumLength)
    {
        var array = _inner.Rent(minimumLength);
        Interlocked.Increment(ref _rents);
        Interlocked.Add(ref _requestedBytes, minimumLength);
        Assert.True(_out.TryAdd(array, 0), "an array was handed out twice");
        return array;
    }

    public override void Return(byte[] array, bool clearArray = false)
    {
        Assert.True(_out.TryRemove(array, out _), "an array came back that was not out (twice, or never rented)");
        _inner.Return(array, clearArray);
    }

    /// <summary>Waits (briefly) until every array is back: some go back on the reader loop's thread after the call has ended.</summary>
    public async Task AllReturnedAsync()
    {
        for (int i = 0; i < 200 && Outstanding > 0; i++) await Task.Delay(10);
        Assert.Equal(0, Outstanding);
    }
}
