namespace FlashMla.Http2;

/// <summary>
/// One stream as the engine (<see cref="Http2Connection"/>) sees it: its id, its receive window, whether the
/// peer ended its side or either side reset it, and the callbacks through which the reader loop hands the
/// role (a server call, a client request) what arrives. The role gives received bytes back with
/// <see cref="Release"/> and resets with <see cref="Reset"/>; both hold <see cref="Gate"/>, so no
/// WINDOW_UPDATE can follow the stream's RST_STREAM onto the wire.
/// </summary>
internal abstract class Http2Stream
{
    private bool _inputEnded, _resetSent, _resetReceived, _removed;
    private Http2ErrorCode _peerResetCode;
    private long _dataBytesSent;

    protected Http2Stream(Http2Connection connection, int receiveWindow, int creditBatchBytes)
    {
        Connection = connection;
        ReceiveWindow = new ReceiveWindow(receiveWindow, creditBatchBytes);
    }

    public Http2Connection Connection { get; }

    /// <summary>The stream id (a client's stream gets it when its HEADERS go out).</summary>
    public int Id { get; internal set; }

    internal ReceiveWindow ReceiveWindow { get; }

    /// <summary>Guards the stream's state; roles take it for transitions of their own that must not interleave with these.</summary>
    protected object Gate { get; } = new();

    /// <summary>The peer sent END_STREAM: nothing more arrives on the stream.</summary>
    public bool InputEnded
    {
        get { lock (Gate) return _inputEnded; }
    }

    /// <summary>Reset by either side: no frame may follow on it (RFC 9113, section 5.1).</summary>
    public bool IsReset
    {
        get { lock (Gate) return _resetSent || _resetReceived; }
    }

    /// <summary>
    /// The code of the peer's RST_STREAM; null when the peer has not reset the stream. Recorded with <see cref="IsReset"/>
    /// in one step, before the role hears of it (<see cref="OnReset"/>): a writer that sees the reset also sees its code.
    /// </summary>
    public Http2ErrorCode? PeerResetCode
    {
        get
        {
            lock (Gate) return _resetReceived ? _peerResetCode : null;
        }
    }

    /// <summary>DATA payload bytes sent on the stream so far: a writer that fails mid-message tells from it whether any went out.</summary>
    public long DataBytesSent => Volatile.Read(ref _dataBytesSent);

    /// <summary>The slices of one DATA frame being written (reused: a stream's writes are one at a time).</summary>
    internal List<ReadOnlyMemory<byte>> FrameParts { get; } = new(4);

    // ---- The reader loop calls these ----

    /// <summary>
    /// Receives the next <paramref name="length"/> payload bytes of a DATA frame from <paramref name="reader"/>: it must
    /// consume exactly that many (read or skip). It may throw <see cref="Http2StreamException"/> only before consuming
    /// any; the engine then skips them and resets the stream.
    /// </summary>
    protected internal abstract ValueTask OnDataAsync(Http2FrameReader reader, int length);

    /// <summary>A header block on this open stream (a response's headers, or trailers with <paramref name="endStream"/>).</summary>
    protected internal abstract void OnHeaders(List<KeyValuePair<string, string>> fields, bool endStream);

    /// <summary>The peer sent END_STREAM.</summary>
    protected internal abstract void OnEndStream();

    /// <summary>
    /// The stream was reset: by the peer (<paramref name="localReason"/> null), or by the engine for a stream error
    /// it found (the reason given). Not called for resets the role made itself.
    /// </summary>
    protected internal abstract void OnReset(Http2ErrorCode code, string? localReason);

    /// <summary>
    /// Wakes the application's reader that <see cref="Http2Connection.WakeAfterFrame"/> named: called after the frame,
    /// on the thread the reader loop just handed off, so the reader's continuation may run here, however long it takes.
    /// Must not throw.
    /// </summary>
    protected internal virtual void OnReaderWake()
    {
    }

    // ---- The role calls these ----

    /// <summary>
    /// Resets the stream with <paramref name="code"/>: once, and not after the peer reset it. No WINDOW_UPDATE follows, and a
    /// writer waiting for send credit wakes to find the stream gone. False when it was reset already.
    /// </summary>
    public bool Reset(Http2ErrorCode code)
    {
        lock (Gate)
        {
            if (_resetSent || _resetReceived) return false;
            _resetSent = true;
            Connection.Writer.QueueRstStream(Id, code);
        }
        Connection.SendWindows.RemoveStream(Id);
        return true;
    }

    /// <summary>
    /// Gives <paramref name="bytes"/> received back to the peer as stream window, in batches (or now, with
    /// <paramref name="flush"/>); nothing is announced once the stream cannot receive any more.
    /// </summary>
    public void Release(int bytes, bool flush = false)
    {
        lock (Gate)
        {
            int increment = ReceiveWindow.Release(bytes, flush);
            if (increment > 0 && !_inputEnded && !_resetSent && !_resetReceived && !_removed) Connection.Writer.QueueWindowUpdate(Id, increment);
        }
    }

    // ---- The engine's bookkeeping ----

    internal void MarkInputEnded()
    {
        lock (Gate) _inputEnded = true;
    }

    internal void ResetByPeer(Http2ErrorCode code)
    {
        lock (Gate)
        {
            _peerResetCode = code;
            _resetReceived = true;
        }
        Connection.SendWindows.RemoveStream(Id);
        OnReset(code, null);
    }

    internal void FailWithStreamError(Http2StreamException error)
    {
        if (Reset(error.Code)) OnReset(error.Code, error.Message);
    }

    internal void MarkRemoved()
    {
        lock (Gate) _removed = true;
    }

    internal void CountSent(int bytes) => Interlocked.Add(ref _dataBytesSent, bytes);
}
