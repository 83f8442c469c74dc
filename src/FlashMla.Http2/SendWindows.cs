namespace FlashMla.Http2;

/// <summary>
/// HTTP/2 flow control of what this side sends (RFC 9113, section 5.2): the connection's window and each
/// stream's, opened by the peer's WINDOW_UPDATE frames and SETTINGS_INITIAL_WINDOW_SIZE. A writer takes credit
/// before each DATA frame and waits while either window is shut; only the writers a change concerns wake (the
/// stream's own, or those waiting on the connection's window). One lock: windows change a few times per
/// megabyte, so contention is negligible next to the sends themselves.
/// </summary>
internal sealed class SendWindows
{
    private readonly object _lock = new();
    private readonly Dictionary<int, StreamWindow> _streams = [];
    private readonly List<StreamWindow> _waitingOnConnection = [];
    private long _connection = Http2Frames.DefaultWindowSize;
    private long _initialStream = Http2Frames.DefaultWindowSize;
    private Exception? _closed;

    private sealed class StreamWindow(long size)
    {
        public long Size = size;
        public TaskCompletionSource? Waiter;

        public void Wake()
        {
            Waiter?.TrySetResult();
            Waiter = null;
        }
    }

    public void AddStream(int streamId)
    {
        lock (_lock) _streams[streamId] = new StreamWindow(_initialStream);
    }

    /// <summary>Forgets a stream that sends no more and wakes its writer if it waits for credit (it then sees the stream gone).</summary>
    public void RemoveStream(int streamId)
    {
        lock (_lock)
        {
            if (!_streams.Remove(streamId, out var stream)) return;
            _waitingOnConnection.Remove(stream);
            stream.Wake();
        }
    }

    /// <summary>A WINDOW_UPDATE: stream 0 is the connection. False when the window would pass 2^31-1 (FLOW_CONTROL_ERROR).</summary>
    public bool Open(int streamId, int increment)
    {
        lock (_lock)
        {
            if (streamId == 0)
            {
                if (_connection + increment > Http2Frames.MaxWindowSize) return false;
                _connection += increment;
                WakeConnectionWaiters();
            }
            else if (_streams.TryGetValue(streamId, out var stream))
            {
                if (stream.Size + increment > Http2Frames.MaxWindowSize) return false;
                stream.Size += increment;
                stream.Wake();
            }
            // else: a stream that sends no more; nothing waits on it
        }
        return true;
    }

    /// <summary>Gives back credit taken by <see cref="TakeAsync"/> for a frame that was never sent.</summary>
    public void Return(int streamId, int bytes)
    {
        lock (_lock)
        {
            _connection += bytes;
            if (_streams.TryGetValue(streamId, out var stream))
            {
                stream.Size += bytes;
                stream.Wake();
            }
            WakeConnectionWaiters();
        }
    }

    /// <summary>SETTINGS_INITIAL_WINDOW_SIZE changed: every open stream's window moves by the difference (it may go negative).</summary>
    public bool SetInitialStreamWindow(long size)
    {
        lock (_lock)
        {
            long delta = size - _initialStream;
            foreach (var stream in _streams.Values)
                if (stream.Size + delta > Http2Frames.MaxWindowSize) return false;
            _initialStream = size;
            foreach (var stream in _streams.Values)
            {
                stream.Size += delta;
                stream.Wake();
            }
        }
        return true;
    }

    /// <summary>
    /// Takes credit for up to <paramref name="wanted"/> bytes on <paramref name="streamId"/>: at least one byte,
    /// waiting until both windows allow it. Throws <see cref="IOException"/> when the connection is closed and
    /// <see cref="OperationCanceledException"/> when the stream sends no more or the caller cancelled.
    /// </summary>
    public async ValueTask<int> TakeAsync(int streamId, int wanted, CancellationToken cancellationToken)
    {
        while (true)
        {
            Task opened;
            lock (_lock)
            {
                if (_closed is not null) throw new IOException("the HTTP/2 connection is closed", _closed);
                if (!_streams.TryGetValue(streamId, out var stream)) throw new OperationCanceledException($"HTTP/2 stream {streamId} sends no more");
                long granted = Math.Min(wanted, Math.Min(_connection, stream.Size));
                if (granted > 0)
                {
                    _connection -= granted;
                    stream.Size -= granted;
                    return (int)granted;
                }
                stream.Waiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                if (_connection <= 0 && !_waitingOnConnection.Contains(stream)) _waitingOnConnection.Add(stream);
                opened = stream.Waiter.Task;
            }
            await opened.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Fails every present and future wait: the connection is gone.</summary>
    public void Close(Exception reason)
    {
        lock (_lock)
        {
            _closed ??= reason;
            foreach (var stream in _streams.Values) stream.Wake();
        }
    }

    private void WakeConnectionWaiters()
    {
        foreach (var stream in _waitingOnConnection) stream.Wake();
        _waitingOnConnection.Clear();
    }
}
