namespace FlashMla.Contracts.Wire;

/// <summary>
/// A message together with what must be given back once it is no longer needed: the pooled arrays its
/// tensors' bytes live in (a parsed request or response), or a hold on the buffers it wraps (an outgoing
/// response). The marshallers of <see cref="DecodeMarshallers"/> dispose an outgoing one as soon as it has
/// been serialized; whoever receives an incoming one disposes it when done with its tensors.
/// </summary>
public sealed class Leased<T>(T message, IDisposable? lease = null) : IDisposable where T : class
{
    private IDisposable? _lease = lease;

    public T Message { get; } = message;

    /// <summary>
    /// When an incoming message's last byte arrived (<see cref="System.Diagnostics.Stopwatch.GetTimestamp"/>), where the
    /// receiver knows it; 0 when it does not. The server's per-request timings start here.
    /// </summary>
    public long ReceivedAt { get; init; }

    /// <summary>True once disposed: the message's tensor bytes may then belong to someone else.</summary>
    public bool IsReleased => _lease is null;

    public void Dispose() => Interlocked.Exchange(ref _lease, null)?.Dispose();
}

/// <summary>Arrays rented from one pool, given back together, once.</summary>
public sealed class PooledArrays(System.Buffers.ArrayPool<byte> pool) : IDisposable
{
    private byte[]? _first;
    private List<byte[]>? _more;
    private int _disposed;

    public byte[] Rent(int length)
    {
        var array = pool.Rent(length);
        if (_first is null) _first = array;
        else (_more ??= []).Add(array);
        return array;
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        if (_first is not null) pool.Return(_first);
        if (_more is not null)
            foreach (var array in _more) pool.Return(array);
    }
}

/// <summary>One array already rented from <paramref name="pool"/>, given back once (a message parsed in place in it).</summary>
public sealed class PooledArray(System.Buffers.ArrayPool<byte> pool, byte[] array) : IDisposable
{
    private byte[]? _array = array;

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _array, null) is { } rented) pool.Return(rented);
    }
}

/// <summary>Several leases as one.</summary>
public sealed class Leases(params IDisposable?[] leases) : IDisposable
{
    public void Dispose()
    {
        foreach (var lease in leases) lease?.Dispose();
    }
}
