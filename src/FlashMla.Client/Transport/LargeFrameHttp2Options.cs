using FlashMla.Http2;
namespace FlashMla.Client.Transport;

/// <summary>Settings of <see cref="LargeFrameHttp2Handler"/>: frame size, flow-control windows, socket buffers, connect timeout, keep-alive.</summary>
public sealed record LargeFrameHttp2Options
{
    /// <summary>
    /// SETTINGS_MAX_FRAME_SIZE advertised to the server (the largest DATA frame it may send us) and the cap
    /// on the frames we send (the server's own setting caps them too). 16 KiB to 16 MiB - 1.
    /// </summary>
    public int MaxFrameSize { get; init; } = 1024 * 1024;

    /// <summary>
    /// SETTINGS_INITIAL_WINDOW_SIZE: bytes the server may send on one stream before the application has read
    /// them; also the most a stream holds in memory on this side.
    /// </summary>
    public int StreamWindowSize { get; init; } = 16 * 1024 * 1024;

    /// <summary>Receive window of the whole connection (raised from 64 KiB by the first WINDOW_UPDATE).</summary>
    public int ConnectionWindowSize { get; init; } = 64 * 1024 * 1024;

    /// <summary>SO_SNDBUF and SO_RCVBUF in bytes; 0 leaves the OS default (on Linux that keeps buffer auto-tuning).</summary>
    public int SocketBufferSize { get; init; }

    /// <summary>Time allowed for the TCP connect plus the server's first SETTINGS frame.</summary>
    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// How long the server may stay silent before the connection sends a PING to see whether it is still there
    /// (as SocketsHttpHandler's KeepAlivePingDelay, and the same 30 s FlashMlaClient gives SocketsHttpHandler);
    /// <see cref="Timeout.InfiniteTimeSpan"/> turns keep-alive off.
    /// </summary>
    public TimeSpan KeepAlivePingDelay { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Time allowed for a keep-alive PING's ack; without it the connection closes and its calls fail with UNAVAILABLE.</summary>
    public TimeSpan KeepAlivePingTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Whether keep-alive PINGs go out on a connection without calls too (the default, as SocketsHttpHandler) or only while calls are open.</summary>
    public HttpKeepAlivePingPolicy KeepAlivePingPolicy { get; init; } = HttpKeepAlivePingPolicy.Always;

    /// <summary>TLS of https:// addresses: trusted CAs, the expected server name, a client certificate. Null: the system's trust store, no client certificate.</summary>
    public ClientTlsOptions? Tls { get; init; }

    /// <summary>Where the handler counts frames and bytes; null for a private set (see <see cref="LargeFrameHttp2Handler.Counters"/>).</summary>
    public Http2TransportCounters? Counters { get; init; }

    internal void Validate()
    {
        if (MaxFrameSize is < Http2Frames.DefaultMaxFrameSize or > Http2Frames.MaxAllowedFrameSize)
            throw new ArgumentOutOfRangeException(nameof(MaxFrameSize), MaxFrameSize, "must be 16384 to 16777215 (RFC 9113, section 6.5.2)");
        if (StreamWindowSize < Http2Frames.DefaultWindowSize)
            throw new ArgumentOutOfRangeException(nameof(StreamWindowSize), StreamWindowSize, "must be at least 65535");
        if (ConnectionWindowSize < Http2Frames.DefaultWindowSize)
            throw new ArgumentOutOfRangeException(nameof(ConnectionWindowSize), ConnectionWindowSize, "must be at least 65535");
        ArgumentOutOfRangeException.ThrowIfNegative(SocketBufferSize);
        if (ConnectTimeout <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(ConnectTimeout), ConnectTimeout, "must be positive");
        if (KeepAlivePingDelay <= TimeSpan.Zero && KeepAlivePingDelay != Timeout.InfiniteTimeSpan)
            throw new ArgumentOutOfRangeException(nameof(KeepAlivePingDelay), KeepAlivePingDelay, "must be positive, or Timeout.InfiniteTimeSpan for no keep-alive");
        if (KeepAlivePingTimeout <= TimeSpan.Zero)
            throw new ArgumentOutOfRangeException(nameof(KeepAlivePingTimeout), KeepAlivePingTimeout, "must be positive");
    }
}

/// <summary>
/// What crossed the wire through one or more <see cref="LargeFrameHttp2Handler"/>s: DATA frames and payload
/// bytes each way and the largest DATA frame seen each way. Thread-safe; read it while calls run.
/// </summary>
public sealed class Http2TransportCounters
{
    private long _dataFramesReceived, _dataBytesReceived, _largestFrameReceived;
    private long _dataFramesSent, _dataBytesSent, _largestFrameSent;
    private long _connectionsOpened;

    public long DataFramesReceived => Volatile.Read(ref _dataFramesReceived);
    public long DataBytesReceived => Volatile.Read(ref _dataBytesReceived);
    public long LargestDataFrameReceived => Volatile.Read(ref _largestFrameReceived);
    public long DataFramesSent => Volatile.Read(ref _dataFramesSent);
    public long DataBytesSent => Volatile.Read(ref _dataBytesSent);
    public long LargestDataFrameSent => Volatile.Read(ref _largestFrameSent);
    public long ConnectionsOpened => Volatile.Read(ref _connectionsOpened);

    internal void DataReceived(int bytes) => Count(ref _dataFramesReceived, ref _dataBytesReceived, ref _largestFrameReceived, bytes);

    internal void DataSent(int bytes) => Count(ref _dataFramesSent, ref _dataBytesSent, ref _largestFrameSent, bytes);

    internal void ConnectionOpened() => Interlocked.Increment(ref _connectionsOpened);

    public override string ToString() =>
        $"DATA received {DataFramesReceived} frames, {DataBytesReceived} B (largest {LargestDataFrameReceived} B); " +
        $"sent {DataFramesSent} frames, {DataBytesSent} B (largest {LargestDataFrameSent} B); {ConnectionsOpened} connection(s)";

    private static void Count(ref long frames, ref long bytes, ref long largest, int size)
    {
        Interlocked.Increment(ref frames);
        Interlocked.Add(ref bytes, size);
        long seen = Volatile.Read(ref largest);
        while (size > seen)
        {
            long previous = Interlocked.CompareExchange(ref largest, size, seen);
            if (previous == seen) break;
            seen = previous;
        }
    }
}
