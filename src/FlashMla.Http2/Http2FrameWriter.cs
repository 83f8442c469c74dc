using System.Buffers;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace FlashMla.Http2;

/// <summary>
/// Writes frames to one connection's transport (the socket's NetworkStream, or an SslStream over it) under one async lock, a frame at a time, so streams interleave
/// at frame boundaries. Control frames (WINDOW_UPDATE, SETTINGS and PING acks, RST_STREAM) are queued without
/// waiting: whoever holds or next takes the lock sends them ahead of its own frame, so the reader loop never
/// blocks behind a megabyte DATA frame. A DATA payload larger than the scratch buffer goes to the socket
/// straight from the caller's memory (under TLS: SslStream encrypts it from there, and every write ends with a flush, which
/// sends the TLS records it made in one go: <see cref="TlsRecordBatchingStream"/>).
/// </summary>
internal sealed class Http2FrameWriter : IDisposable
{
    /// <summary>The scratch buffer's size (it grows past it only for a header block larger than that).</summary>
    public const int ScratchSize = 32 * 1024;

    private readonly Stream _transport;
    private readonly Socket? _socket;
    private readonly List<ArraySegment<byte>> _segments = new(8); // one gathering send's buffers, under the lock
    private readonly SemaphoreSlim _lock = new(1, 1);
    private readonly object _controlGate = new();
    private readonly ArrayPool<byte> _buffers;
    private byte[] _scratch;
    private byte[] _control = new byte[256];
    private int _controlLength;
    private volatile Exception? _failure;

    /// <param name="buffers">Where the scratch buffer comes from and goes back to (the shared pool by default).</param>
    /// <param name="socket">The socket under a cleartext <paramref name="transport"/> (null under TLS): a frame whose payload has pieces
    /// too large for the scratch buffer then goes out in one gathering send (sendmsg) instead of one send per piece.</param>
    public Http2FrameWriter(Stream transport, ArrayPool<byte>? buffers = null, Socket? socket = null)
    {
        _transport = transport;
        _socket = socket;
        _buffers = buffers ?? ArrayPool<byte>.Shared;
        _scratch = _buffers.Rent(ScratchSize);
    }

    /// <summary>Bytes of control frames queued and not yet sent.</summary>
    public int QueuedControlBytes => Volatile.Read(ref _controlLength);

    /// <summary>Set when a send failed: the connection can write nothing more.</summary>
    public Exception? Failure => _failure;

    /// <summary>Takes the write lock (frames written under it keep their order on the wire).</summary>
    public Task EnterAsync(CancellationToken cancellationToken) => _lock.WaitAsync(cancellationToken);

    /// <summary>Gives the write lock back, then sends control frames queued meanwhile, if nobody else took the lock.</summary>
    public void Exit()
    {
        _lock.Release();
        TryFlushControl();
    }

    /// <summary>Writes one frame; the caller holds the lock. Queued control frames go first.</summary>
    public async ValueTask WriteFrameLockedAsync(Http2FrameHeader header, ReadOnlyMemory<byte> payload)
    {
        ThrowIfFailed();
        int used = TakeControl(_scratch);
        header.Write(_scratch.AsSpan(used));
        used += Http2FrameHeader.Size;
        try
        {
            if (payload.Length <= _scratch.Length - used)
            {
                payload.Span.CopyTo(_scratch.AsSpan(used));
                await SendAsync(_scratch.AsMemory(0, used + payload.Length)).ConfigureAwait(false);
            }
            else
            {
                await SendAsync(_scratch.AsMemory(0, used)).ConfigureAwait(false);
                await SendAsync(payload).ConfigureAwait(false);
            }
            await FlushAsync().ConfigureAwait(false);
        }
        catch (Exception ex) when (IsTransportFailure(ex))
        {
            throw Fail(ex);
        }
    }

    /// <summary>
    /// Writes one frame whose payload is <paramref name="parts"/> in order; the caller holds the lock. Parts that
    /// fit go out in one send with the header; larger ones go to the socket straight from their memory: on a
    /// cleartext socket all in one gathering send when they are arrays, else one send each.
    /// </summary>
    public async ValueTask WritePartsLockedAsync(Http2FrameHeader header, IReadOnlyList<ReadOnlyMemory<byte>> parts)
    {
        ThrowIfFailed();
        int used = TakeControl(_scratch);
        header.Write(_scratch.AsSpan(used));
        used += Http2FrameHeader.Size;
        try
        {
            if (_socket is not null && CanGather(parts, used))
            {
                await GatherLockedAsync(parts, used).ConfigureAwait(false);
                return;
            }
            for (int i = 0; i < parts.Count; i++)
            {
                var part = parts[i];
                if (part.Length <= _scratch.Length - used)
                {
                    part.Span.CopyTo(_scratch.AsSpan(used));
                    used += part.Length;
                    continue;
                }
                if (used > 0) await SendAsync(_scratch.AsMemory(0, used)).ConfigureAwait(false);
                used = 0;
                await SendAsync(part).ConfigureAwait(false);
            }
            if (used > 0) await SendAsync(_scratch.AsMemory(0, used)).ConfigureAwait(false);
            await FlushAsync().ConfigureAwait(false);
        }
        catch (Exception ex) when (IsTransportFailure(ex))
        {
            throw Fail(ex);
        }
    }

    /// <summary>
    /// Whether the frame has a part too large for the scratch buffer (else one plain send does it) and every such part
    /// is an array (a gathering send takes array segments): the same walk as <see cref="GatherLockedAsync"/>'s.
    /// </summary>
    private bool CanGather(IReadOnlyList<ReadOnlyMemory<byte>> parts, int used)
    {
        bool large = false;
        for (int i = 0; i < parts.Count; i++)
        {
            if (parts[i].Length <= _scratch.Length - used)
            {
                used += parts[i].Length;
                continue;
            }
            if (!MemoryMarshal.TryGetArray(parts[i], out _)) return false;
            large = true;
        }
        return large;
    }

    /// <summary>Small parts copied behind the header in the scratch buffer, large ones as their own arrays, all in one send.</summary>
    private async ValueTask GatherLockedAsync(IReadOnlyList<ReadOnlyMemory<byte>> parts, int used)
    {
        _segments.Clear();
        int runStart = 0;
        long total = used;
        for (int i = 0; i < parts.Count; i++)
        {
            var part = parts[i];
            total += part.Length;
            if (part.Length <= _scratch.Length - used)
            {
                part.Span.CopyTo(_scratch.AsSpan(used));
                used += part.Length;
                continue;
            }
            MemoryMarshal.TryGetArray(part, out var array); // CanGather checked it
            if (used > runStart) _segments.Add(new ArraySegment<byte>(_scratch, runStart, used - runStart));
            runStart = used;
            _segments.Add(array);
        }
        if (used > runStart) _segments.Add(new ArraySegment<byte>(_scratch, runStart, used - runStart));
        try
        {
            // A stream socket's send completes only once every byte is out (it waits for room as needed).
            int sent = await _socket!.SendAsync(_segments, SocketFlags.None).ConfigureAwait(false);
            if (sent != total) throw new IOException($"a gathering send wrote {sent} of {total} bytes");
        }
        finally
        {
            _segments.Clear(); // hold no reference to the callers' buffers
        }
    }

    /// <summary>Writes raw bytes (the preface and first SETTINGS); the caller holds the lock.</summary>
    public async ValueTask WriteRawLockedAsync(ReadOnlyMemory<byte> bytes)
    {
        ThrowIfFailed();
        try
        {
            await SendAsync(bytes).ConfigureAwait(false);
            await FlushAsync().ConfigureAwait(false);
        }
        catch (Exception ex) when (IsTransportFailure(ex))
        {
            throw Fail(ex);
        }
    }

    public void QueueWindowUpdate(int streamId, int increment)
    {
        Span<byte> frame = stackalloc byte[Http2Frames.WindowUpdateFrameSize];
        Queue(frame[..Http2Frames.WriteWindowUpdate(frame, streamId, increment)]);
    }

    public void QueueRstStream(int streamId, Http2ErrorCode code)
    {
        Span<byte> frame = stackalloc byte[Http2Frames.RstStreamFrameSize];
        Queue(frame[..Http2Frames.WriteRstStream(frame, streamId, code)]);
    }

    public void QueueSettingsAck()
    {
        Span<byte> frame = stackalloc byte[Http2FrameHeader.Size];
        Queue(frame[..Http2Frames.WriteSettingsAck(frame)]);
    }

    public void QueuePingAck(ulong opaque)
    {
        Span<byte> frame = stackalloc byte[Http2Frames.PingFrameSize];
        Queue(frame[..Http2Frames.WritePing(frame, opaque, ack: true)]);
    }

    /// <summary>A PING of our own (keep-alive): the peer must answer it with an ack carrying <paramref name="opaque"/>.</summary>
    public void QueuePing(ulong opaque)
    {
        Span<byte> frame = stackalloc byte[Http2Frames.PingFrameSize];
        Queue(frame[..Http2Frames.WritePing(frame, opaque, ack: false)]);
    }

    public void QueueGoAway(int lastStreamId, Http2ErrorCode code)
    {
        Span<byte> frame = stackalloc byte[Http2FrameHeader.Size + 8];
        Queue(frame[..Http2Frames.WriteGoAway(frame, lastStreamId, code)]);
    }

    /// <summary>Sends whatever control frames are queued and waits for the send (used before closing the socket).</summary>
    public async Task FlushControlAsync(CancellationToken cancellationToken)
    {
        await EnterAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            await SendControlLockedAsync().ConfigureAwait(false);
        }
        finally
        {
            _lock.Release();
        }
    }

    private void Queue(ReadOnlySpan<byte> frame)
    {
        lock (_controlGate)
        {
            if (_controlLength + frame.Length > _control.Length) Array.Resize(ref _control, Math.Max(_control.Length * 2, _controlLength + frame.Length));
            frame.CopyTo(_control.AsSpan(_controlLength));
            _controlLength += frame.Length;
        }
        TryFlushControl();
    }

    private void TryFlushControl()
    {
        if (Volatile.Read(ref _controlLength) == 0 || _failure is not null) return;
        if (!_lock.Wait(0)) return; // the holder sends them when it writes its frame or after it exits
        _ = FlushControlAndExitAsync();
    }

    private async Task FlushControlAndExitAsync()
    {
        try
        {
            await SendControlLockedAsync().ConfigureAwait(false);
        }
        catch (IOException)
        {
            // Recorded in _failure; the reader loop sees the dead socket and fails the streams.
        }
        finally
        {
            Exit();
        }
    }

    private async ValueTask SendControlLockedAsync()
    {
        if (_failure is not null) return;
        int used = TakeControl(_scratch);
        if (used == 0) return;
        try
        {
            await SendAsync(_scratch.AsMemory(0, used)).ConfigureAwait(false);
            await FlushAsync().ConfigureAwait(false);
        }
        catch (Exception ex) when (IsTransportFailure(ex))
        {
            throw Fail(ex);
        }
    }

    /// <summary>Moves the queued control frames into <paramref name="destination"/> (the caller holds the lock).</summary>
    private int TakeControl(byte[] destination)
    {
        lock (_controlGate)
        {
            int n = _controlLength;
            if (n == 0) return 0;
            if (n > destination.Length - 1024)
            {
                // Thousands of queued frames: grow the scratch buffer rather than split the batch.
                _buffers.Return(_scratch);
                _scratch = destination = _buffers.Rent(n + ScratchSize);
            }
            _control.AsSpan(0, n).CopyTo(destination);
            _controlLength = 0;
            return n;
        }
    }

    private ValueTask SendAsync(ReadOnlyMemory<byte> bytes) => _transport.WriteAsync(bytes);

    /// <summary>
    /// The end of every write made under the lock: under TLS the records it made leave the
    /// <see cref="TlsRecordBatchingStream"/> below the SslStream in one send; a NetworkStream's flush does nothing.
    /// </summary>
    private Task FlushAsync() => _transport.FlushAsync();

    /// <summary>A write failed for a reason of the transport (NetworkStream and SslStream wrap the socket's errors in IOException).</summary>
    private static bool IsTransportFailure(Exception ex) => ex is IOException or SocketException or ObjectDisposedException;

    private void ThrowIfFailed()
    {
        if (_failure is { } failure) throw new IOException("the HTTP/2 connection can no longer be written to", failure);
    }

    private IOException Fail(Exception ex)
    {
        _failure ??= ex;
        return new IOException("writing to the HTTP/2 connection failed: " + ex.Message, ex);
    }

    public void Dispose()
    {
        // Only after the socket is closed and no writer holds the lock: the scratch buffer goes back to the pool.
        if (_lock.Wait(0))
        {
            _failure ??= new ObjectDisposedException(nameof(Http2FrameWriter));
            var scratch = Interlocked.Exchange(ref _scratch, []);
            if (scratch.Length > 0) _buffers.Return(scratch);
        }
    }
}
