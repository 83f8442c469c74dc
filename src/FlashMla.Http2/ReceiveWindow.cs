namespace FlashMla.Http2;

/// <summary>
/// One receive window (a stream's or the connection's, RFC 9113 section 5.2): DATA arriving takes from it,
/// bytes the receiver is done with go back, and the WINDOW_UPDATE policy decides when what went back is worth a
/// frame: at <c>batchBytes</c>, or at once when asked (a message's end, padding no one will read).
/// Thread-safe: the reader loop charges it while the application gives back.
/// </summary>
internal sealed class ReceiveWindow(int size, int batchBytes)
{
    private readonly object _lock = new();
    private long _available = size;
    private int _unacknowledged;

    public int Size { get; } = size;

    /// <summary>What the peer may still send: 0 or less while it waits for this side's WINDOW_UPDATE.</summary>
    public long Available
    {
        get
        {
            lock (_lock) return _available;
        }
    }

    /// <summary>Counts a DATA frame's whole length (padding included); false when the peer sent past the window.</summary>
    public bool TryReceive(int length)
    {
        lock (_lock)
        {
            _available -= length;
            return _available >= 0;
        }
    }

    /// <summary>
    /// <paramref name="bytes"/> are consumed: returns the increment to announce now (0: keep collecting). The
    /// window counts the increment as open from this moment, so the caller must send it.
    /// </summary>
    public int Release(int bytes, bool flush = false)
    {
        lock (_lock)
        {
            _unacknowledged += bytes;
            if (_unacknowledged == 0 || (_unacknowledged < batchBytes && !flush)) return 0;
            int increment = _unacknowledged;
            _unacknowledged = 0;
            _available += increment;
            return increment;
        }
    }
}
