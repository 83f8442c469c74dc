using FlashMla.Http2;

namespace FlashMla.Server.DataPlane;

/// <summary>
/// HTTP/2 flow control of what this side sends (RFC 9113, section 5.2): the connection's window and each
/// stream's, opened by the peer's WINDOW_UPDATE frames and SETTINGS_INITIAL_WINDOW_SIZE. A response's writer
/// takes credit before each DATA frame and waits when either window is shut. One lock: windows change a few
/// times per megabyte, so contention is negligible next to the sends themselves.
/// </summary>
internal sealed class SendWindows
{
    private readonly object _lock = new();
    private readonly Dictionary<int, StreamWindow> _streams = [];
    private long _connection = Http2Frames.DefaultWindowSize;
    private long _initialStream = Http2Frames.DefaultWindowSize;
    private TaskCompletionSource _opened = NewSignal();
    private Exception? _closed;

    private sealed class StreamWindow(long size)
    {
        public long Size = size;
    }

    public void AddStream(int streamId)
    {
        lock (_lock) _streams[streamId] = new StreamWindow(_initialStream);
    }

    /// <summary>Forgets a finished stream and wakes its writer if it waits for credit (it then sees the stream gone).</summary>
    public void RemoveStream(int streamId)
    {
        lock (_lock)
        {
            _streams.Remove(streamId);
            Wake();
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
            }
            else if (_streams.TryGetValue(streamId, out var stream))
            {
                if (stream.Size + increment > Http2Frames.MaxWindowSize) return false;
                stream.Size += increment;
            }
            else
            {
                return true; // a stream already closed: nothing waits on it
            }
            Wake();
        }
        return true;
    }

    /// <summary>Gives back credit taken by <see cref="TakeAsync"/> for a frame that was never sent.</summary>
    public void Return(int streamId, int bytes)
    {
        lock (_lock)
        {
            _connection += bytes;
            if (_streams.TryGetValue(streamId, out var stream)) stream.Size += bytes;
            Wake();
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
            foreach (var stream in _streams.Values) stream.Size += delta;
            Wake();
        }
        return true;
    }

    /// <summary>
    /// Takes credit for up to <paramref name="wanted"/> bytes on <paramref name="streamId"/>: at least one byte,
    /// waiting until both windows allow it. Throws when the connection is closed or the call cancelled.
    /// </summary>
    public async ValueTask<int> TakeAsync(int streamId, int wanted, CancellationToken cancellationToken)
    {
        while (true)
        {
            Task opened;
            lock (_lock)
            {
                if (_closed is not null) throw new IOException("the connection is closed", _closed);
                if (!_streams.TryGetValue(streamId, out var stream)) throw new OperationCanceledException("the stream is closed");
                long granted = Math.Min(wanted, Math.Min(_connection, stream.Size));
                if (granted > 0)
                {
                    _connection -= granted;
                    stream.Size -= granted;
                    return (int)granted;
                }
                opened = _opened.Task;
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
            Wake();
        }
    }

    private void Wake()
    {
        _opened.TrySetResult();
        _opened = NewSignal();
    }

    private static TaskCompletionSource NewSignal() => new(TaskCreationOptions.RunContinuationsAsynchronously);
}
