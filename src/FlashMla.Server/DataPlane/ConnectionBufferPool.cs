using System.Buffers;
using System.Collections.Concurrent;

namespace FlashMla.Server.DataPlane;

/// <summary>
/// The I/O buffers every data-plane connection holds while it lives (the frame reader's 64 KiB receive buffer, the
/// frame writer's 32 KiB scratch), shared by the listener's connections, so that what connection churn leaves behind
/// is bounded and visible: <see cref="Outstanding"/> is what open connections hold, <see cref="RetainedBytes"/> what
/// is kept for the next ones, at most <see cref="MaxRetainedPerSize"/> arrays of each size (6 MiB). The shared
/// ArrayPool they came from before keeps up to 32 arrays per size per core plus one per thread, and trims them only
/// under memory pressure. The arrays live on the pinned object heap: long-lived and handed to every socket call, they
/// stay out of the compacting heap's regions. Other sizes (a scratch buffer grown for a large header block) are
/// plain arrays, never kept.
/// </summary>
internal sealed class ConnectionBufferPool(params int[] sizes) : ArrayPool<byte>
{
    /// <summary>Arrays of one size kept for the next connections: enough for a burst of reconnects, a few MiB at most.</summary>
    public const int MaxRetainedPerSize = 64;

    private readonly int[] _sizes = sizes;
    private readonly ConcurrentBag<byte[]>[] _free = [.. sizes.Select(_ => new ConcurrentBag<byte[]>())];
    private long _outstanding, _retainedBytes;

    /// <summary>Arrays rented and not yet returned: what open connections hold.</summary>
    public long Outstanding => Interlocked.Read(ref _outstanding);

    /// <summary>Bytes kept for later connections.</summary>
    public long RetainedBytes => Interlocked.Read(ref _retainedBytes);

    /// <summary>The most bytes the pool can keep.</summary>
    public long MaxRetainedBytes => _sizes.Sum(s => (long)s) * MaxRetainedPerSize;

    public override byte[] Rent(int minimumLength)
    {
        Interlocked.Increment(ref _outstanding);
        int bucket = Array.IndexOf(_sizes, minimumLength);
        if (bucket < 0) return new byte[minimumLength];
        if (_free[bucket].TryTake(out var array))
        {
            Interlocked.Add(ref _retainedBytes, -array.Length);
            return array;
        }
        return GC.AllocateUninitializedArray<byte>(minimumLength, pinned: true);
    }

    public override void Return(byte[] array, bool clearArray = false)
    {
        Interlocked.Decrement(ref _outstanding);
        int bucket = Array.IndexOf(_sizes, array.Length);
        if (bucket < 0 || _free[bucket].Count >= MaxRetainedPerSize) return; // dropped: the GC takes it
        if (clearArray) Array.Clear(array);
        Interlocked.Add(ref _retainedBytes, array.Length);
        _free[bucket].Add(array);
    }
}
