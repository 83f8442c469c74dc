using System.Buffers;
using System.Buffers.Binary;
using System.Net.Sockets;
using FlashMla.Http2;
using Grpc.Core;

namespace FlashMla.Server.DataPlane;

/// <summary>
/// One client connection of the data-plane listener: HTTP/2 over cleartext with prior knowledge (RFC 9113),
/// as gRPC clients speak it. One reader loop owns the socket's input and every stream's receive state; calls
/// run on their own tasks and write frames through one <see cref="Http2FrameWriter"/>. DATA payloads go from
/// the socket straight into each call's message buffers (<see cref="DataPlaneCall"/>), and responses leave
/// from the buffers they were computed into: Kestrel's input path copies each byte three times before the
/// gRPC parser sees it, this one never.
/// </summary>
internal sealed class DataPlaneConnection
{
    /// <summary>Largest frame this side accepts: 1 MiB, the size the client library sends.</summary>
    public const int MaxFrameSize = 1 << 20;

    /// <summary>Receive window per stream: room for a whole h_q 128, b 128 step (19 MB of q) in flight.</summary>
    public const int StreamWindow = 32 << 20;

    /// <summary>Receive window of the connection.</summary>
    public const int ConnectionWindow = 128 << 20;

    public const int MaxConcurrentStreams = 256;

    /// <summary>Largest header block (HEADERS and its CONTINUATIONs) accepted.</summary>
    public const int MaxHeaderBlockBytes = 64 * 1024;

    private const int HeaderTableSize = 4096;

    private readonly Socket _socket;
    private readonly Http2FrameReader _reader;
    private readonly Http2FrameWriter _writer;
    private readonly SendWindows _windows = new();
    private readonly HpackDecoder _hpack = new(HeaderTableSize);
    private readonly DataPlaneDispatcher _dispatcher;
    private readonly int _maxMessageBytes;
    private readonly Dictionary<int, DataPlaneCall> _calls = [];
    private readonly List<Task> _running = [];
    private readonly object _lock = new();
    private readonly CancellationTokenSource _closing = new();
    private readonly List<KeyValuePair<string, string>> _fields = [];
    private byte[] _headerBlock = new byte[16 * 1024];
    private int _lastStreamId;
    private bool _shuttingDown, _peerGoingAway;
    private long _connectionReceiveWindow = ConnectionWindow;
    private int _connectionUncredited;

    public DataPlaneConnection(Socket socket, DataPlaneDispatcher dispatcher, int maxMessageBytes)
    {
        _socket = socket;
        _dispatcher = dispatcher;
        _maxMessageBytes = maxMessageBytes;
        _reader = new Http2FrameReader(socket);
        _writer = new Http2FrameWriter(socket);
        Peer = socket.RemoteEndPoint?.ToString() ?? "unknown";
    }

    public string Peer { get; }

    /// <summary>Largest DATA frame the peer accepts (its SETTINGS_MAX_FRAME_SIZE).</summary>
    public int PeerMaxFrameSize { get; private set; } = Http2Frames.DefaultMaxFrameSize;

    /// <summary>Calls open now.</summary>
    public int ActiveCalls
    {
        get { lock (_lock) return _calls.Count; }
    }

    /// <summary>Serves the connection until the peer closes it or a protocol error ends it.</summary>
    public async Task RunAsync()
    {
        try
        {
            await ReadPrefaceAsync().ConfigureAwait(false);
            await SendInitialSettingsAsync().ConfigureAwait(false);
            await ReadFramesAsync().ConfigureAwait(false);
        }
        catch (Http2ConnectionException ex)
        {
            _dispatcher.Log.LogWarning("Data-plane connection from {Peer} closed with {Code}: {Reason}", Peer, ex.Code, ex.Message);
            await GoAwayAsync(ex.Code).ConfigureAwait(false);
        }
        catch (HpackDecodingException ex)
        {
            _dispatcher.Log.LogWarning("Data-plane connection from {Peer} closed with {Code}: {Reason}", Peer, Http2ErrorCode.CompressionError, ex.Message);
            await GoAwayAsync(Http2ErrorCode.CompressionError).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or SocketException or ObjectDisposedException or OperationCanceledException)
        {
            // The peer went away, or the listener aborted the connection.
        }
        finally
        {
            await CloseAsync().ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Graceful shutdown: GOAWAY (no new calls), and every open call's request stream ends with UNAVAILABLE once
    /// the requests already received are handed out; calls then finish what is in flight and send trailers.
    /// </summary>
    public void BeginShutdown()
    {
        DataPlaneCall[] calls;
        lock (_lock)
        {
            if (_shuttingDown) return;
            _shuttingDown = true;
            calls = [.. _calls.Values];
            _writer.QueueGoAway(_lastStreamId, Http2ErrorCode.NoError);
        }
        foreach (var call in calls) call.FailInput(new RpcException(new Status(StatusCode.Unavailable, "the server is shutting down")));
    }

    /// <summary>Closes the socket now: open calls are cancelled.</summary>
    public void Abort()
    {
        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
        }
        _socket.Dispose();
    }

    // ---- Used by calls ----

    public void QueueStreamWindowUpdate(int streamId, int increment) => _writer.QueueWindowUpdate(streamId, increment);

    public ValueTask<int> TakeSendCreditAsync(int streamId, int wanted, CancellationToken cancellationToken) =>
        _windows.TakeAsync(streamId, wanted, cancellationToken);

    /// <summary>Credit taken for a frame that was never sent.</summary>
    public void ReturnSendCredit(int streamId, int bytes) => _windows.Return(streamId, bytes);

    public void QueueRstStream(int streamId, Http2ErrorCode code) => _writer.QueueRstStream(streamId, code);

    public async ValueTask SendResponseHeadersAsync(int streamId, CancellationToken cancellationToken)
    {
        var block = ArrayPool<byte>.Shared.Rent(GrpcWireHeaders.MaxHeaderBlockBytes);
        try
        {
            int length = GrpcWireHeaders.WriteResponseHeaders(block);
            await WriteFrameAsync(new Http2FrameHeader(length, Http2FrameType.Headers, Http2FrameFlags.EndHeaders, streamId),
                block.AsMemory(0, length), cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(block);
        }
    }

    /// <summary>The trailers (with the response headers first when none were sent: a trailers-only response).</summary>
    public async ValueTask SendTrailersAsync(int streamId, Status status, bool includeHeaders)
    {
        var block = ArrayPool<byte>.Shared.Rent(GrpcWireHeaders.MaxHeaderBlockBytes);
        try
        {
            int length = includeHeaders ? GrpcWireHeaders.WriteResponseHeaders(block) : 0;
            length += GrpcWireHeaders.WriteTrailers(block.AsSpan(length), status.StatusCode, status.Detail);
            await WriteFrameAsync(new Http2FrameHeader(length, Http2FrameType.Headers, Http2FrameFlags.EndHeaders | Http2FrameFlags.EndStream, streamId),
                block.AsMemory(0, length), CancellationToken.None).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(block);
        }
    }

    public async ValueTask SendDataAsync(int streamId, IReadOnlyList<ReadOnlyMemory<byte>> parts, CancellationToken cancellationToken)
    {
        int length = 0;
        for (int i = 0; i < parts.Count; i++) length += parts[i].Length;
        await _writer.EnterAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            await _writer.WritePartsLockedAsync(new Http2FrameHeader(length, Http2FrameType.Data, Http2FrameFlags.None, streamId), parts)
                .ConfigureAwait(false);
        }
        finally
        {
            _writer.Exit();
        }
    }

    private async ValueTask WriteFrameAsync(Http2FrameHeader header, ReadOnlyMemory<byte> payload, CancellationToken cancellationToken)
    {
        await _writer.EnterAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            await _writer.WriteFrameLockedAsync(header, payload).ConfigureAwait(false);
        }
        finally
        {
            _writer.Exit();
        }
    }

    // ---- The reader loop ----

    private async Task ReadPrefaceAsync()
    {
        var preface = new byte[Http2Frames.Preface.Length];
        await _reader.ReadExactlyAsync(preface).ConfigureAwait(false);
        if (!preface.AsSpan().SequenceEqual(Http2Frames.Preface))
            throw new Http2ConnectionException(Http2ErrorCode.ProtocolError,
                "the connection did not start with the HTTP/2 preface (this port speaks HTTP/2 with prior knowledge only)");
    }

    private async Task SendInitialSettingsAsync()
    {
        var frames = new byte[Http2Frames.SettingsFrameSize(3) + Http2Frames.WindowUpdateFrameSize];
        int n = Http2Frames.WriteSettings(frames,
        [
            (Http2Setting.MaxConcurrentStreams, MaxConcurrentStreams),
            (Http2Setting.InitialWindowSize, StreamWindow),
            (Http2Setting.MaxFrameSize, MaxFrameSize),
        ]);
        n += Http2Frames.WriteWindowUpdate(frames.AsSpan(n), 0, ConnectionWindow - Http2Frames.DefaultWindowSize);
        await _writer.EnterAsync(CancellationToken.None).ConfigureAwait(false);
        try
        {
            await _writer.WriteRawLockedAsync(frames.AsMemory(0, n)).ConfigureAwait(false);
        }
        finally
        {
            _writer.Exit();
        }
    }

    private async Task ReadFramesAsync()
    {
        bool first = true;
        while (await _reader.ReadHeaderAsync().ConfigureAwait(false) is { } header)
        {
            if (header.Length > MaxFrameSize)
                throw new Http2ConnectionException(Http2ErrorCode.FrameSizeError, $"{header.Type} frame of {header.Length} bytes, above the {MaxFrameSize} allowed");
            if (first && (header.Type != Http2FrameType.Settings || header.Has(Http2FrameFlags.Ack)))
                throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "the client's first frame must be SETTINGS");
            first = false;
            switch (header.Type)
            {
                case Http2FrameType.Data: await OnDataAsync(header).ConfigureAwait(false); break;
                case Http2FrameType.Headers: await OnHeadersAsync(header).ConfigureAwait(false); break;
                case Http2FrameType.Priority: await OnPriorityAsync(header).ConfigureAwait(false); break;
                case Http2FrameType.RstStream: await OnRstStreamAsync(header).ConfigureAwait(false); break;
                case Http2FrameType.Settings: await OnSettingsAsync(header).ConfigureAwait(false); break;
                case Http2FrameType.Ping: await OnPingAsync(header).ConfigureAwait(false); break;
                case Http2FrameType.GoAway: await OnGoAwayAsync(header).ConfigureAwait(false); break;
                case Http2FrameType.WindowUpdate: await OnWindowUpdateAsync(header).ConfigureAwait(false); break;
                case Http2FrameType.PushPromise:
                    throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "a client must not send PUSH_PROMISE");
                case Http2FrameType.Continuation:
                    throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "CONTINUATION without a HEADERS frame before it");
                default:
                    await _reader.SkipAsync(header.Length).ConfigureAwait(false); // unknown frame types are ignored (section 4.1)
                    break;
            }
        }
    }

    private async ValueTask OnDataAsync(Http2FrameHeader header)
    {
        if (header.StreamId == 0) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "DATA on stream 0");
        _connectionReceiveWindow -= header.Length;
        if (_connectionReceiveWindow < 0)
            throw new Http2ConnectionException(Http2ErrorCode.FlowControlError, "DATA past the connection's receive window");
        var call = Find(header.StreamId);
        if (call is null)
        {
            if (header.StreamId > _lastStreamId)
                throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"DATA on stream {header.StreamId}, which was never opened");
            await _reader.SkipAsync(header.Length).ConfigureAwait(false); // a stream this side already closed
        }
        else
        {
            if (call.InputEndedByPeer)
                throw new Http2ConnectionException(Http2ErrorCode.StreamClosed, $"DATA on stream {header.StreamId} after its END_STREAM");
            if (!call.TryTakeReceiveWindow(header.Length))
            {
                await _reader.SkipAsync(header.Length).ConfigureAwait(false);
                ResetStream(call, Http2ErrorCode.FlowControlError, "the client sent past the stream's receive window");
            }
            else
            {
                int padding = 0, dataLength = header.Length;
                if (header.Has(Http2FrameFlags.Padded))
                {
                    if (header.Length < 1) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "padded DATA frame without a pad length");
                    var pad = new byte[1];
                    await _reader.ReadExactlyAsync(pad).ConfigureAwait(false);
                    padding = pad[0];
                    dataLength = header.Length - 1 - padding;
                    if (dataLength < 0) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "DATA frame's padding is longer than its payload");
                }
                await call.ReceiveAsync(_reader, dataLength).ConfigureAwait(false);
                if (padding > 0) await _reader.SkipAsync(padding).ConfigureAwait(false);
                call.CreditOverhead(header.Length - dataLength);
                if (header.Has(Http2FrameFlags.EndStream)) call.EndInputByPeer();
            }
        }
        _connectionUncredited += header.Length;
        if (_connectionUncredited >= ConnectionWindow / 4)
        {
            _writer.QueueWindowUpdate(0, _connectionUncredited);
            _connectionReceiveWindow += _connectionUncredited;
            _connectionUncredited = 0;
        }
    }

    private async ValueTask OnHeadersAsync(Http2FrameHeader header)
    {
        int streamId = header.StreamId;
        if (streamId == 0 || streamId % 2 == 0)
            throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"HEADERS on stream {streamId}: client streams are odd and non-zero");
        int blockLength = await ReadHeaderBlockAsync(header).ConfigureAwait(false);
        _fields.Clear();
        _hpack.Decode(_headerBlock.AsSpan(0, blockLength), _fields);
        bool endStream = header.Has(Http2FrameFlags.EndStream);

        var existing = Find(streamId);
        if (existing is not null)
        {
            // Trailers from the client: they must end the stream.
            if (!endStream) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"a second HEADERS on stream {streamId} without END_STREAM");
            existing.EndInputByPeer();
            return;
        }
        if (streamId <= _lastStreamId)
        {
            _writer.QueueRstStream(streamId, Http2ErrorCode.StreamClosed); // a stream this side already closed
            return;
        }
        _lastStreamId = streamId;

        bool refuse;
        lock (_lock) refuse = _shuttingDown || _peerGoingAway || _calls.Count >= MaxConcurrentStreams;
        if (refuse)
        {
            _writer.QueueRstStream(streamId, Http2ErrorCode.RefusedStream);
            return;
        }
        GrpcRequestHead head;
        try
        {
            head = GrpcWireHeaders.ReadRequest(_fields);
            if (!_dispatcher.Serves(head.Path))
                throw new RpcException(new Status(StatusCode.Unimplemented,
                    $"{head.Path} is not served on the data-plane port, which serves {DataPlaneDispatcher.ServiceName} only; use the gRPC port"));
        }
        catch (RpcException ex)
        {
            _dispatcher.Count(GrpcWireHeaders.PathOf(_fields), ex.Status);
            _ = RejectAsync(streamId, ex.Status, endStream);
            return;
        }

        var call = new DataPlaneCall(this, streamId, head.Path, head.Timeout, head.Encoding, _maxMessageBytes, StreamWindow, _closing.Token);
        lock (_lock)
        {
            _calls.Add(streamId, call);
            _windows.AddStream(streamId);
        }
        if (endStream) call.EndInputByPeer();
        var context = new DataPlaneCallContext(call, Peer, head.Authority);
        var run = Task.Run(() => RunCallAsync(call, context));
        lock (_lock)
        {
            _running.RemoveAll(static t => t.IsCompleted);
            _running.Add(run);
        }
    }

    /// <summary>Reads a HEADERS payload and its CONTINUATIONs into <see cref="_headerBlock"/>, padding and priority removed.</summary>
    private async ValueTask<int> ReadHeaderBlockAsync(Http2FrameHeader header)
    {
        int length = 0;
        var frame = header;
        while (true)
        {
            if (length + frame.Length > MaxHeaderBlockBytes)
                throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"header block larger than {MaxHeaderBlockBytes} bytes");
            if (_headerBlock.Length < length + frame.Length) Array.Resize(ref _headerBlock, Math.Min(MaxHeaderBlockBytes, 2 * (length + frame.Length)));
            var payload = _headerBlock.AsMemory(length, frame.Length);
            await _reader.ReadExactlyAsync(payload).ConfigureAwait(false);
            if (frame.Type == Http2FrameType.Headers)
            {
                var (offset, count) = Http2Frames.Unpad(frame, payload.Span);
                payload.Span.Slice(offset, count).CopyTo(_headerBlock.AsSpan(length));
                length += count;
            }
            else
            {
                length += frame.Length;
            }
            if (frame.Has(Http2FrameFlags.EndHeaders)) return length;
            var next = await _reader.ReadHeaderAsync().ConfigureAwait(false)
                ?? throw new IOException("the client closed the connection inside a header block");
            if (next.Type != Http2FrameType.Continuation || next.StreamId != header.StreamId)
                throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "a header block must continue with CONTINUATION frames of its stream");
            if (next.Length > MaxFrameSize) throw new Http2ConnectionException(Http2ErrorCode.FrameSizeError, "CONTINUATION frame too large");
            frame = next;
        }
    }

    private async ValueTask OnPriorityAsync(Http2FrameHeader header)
    {
        if (header.StreamId == 0) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "PRIORITY on stream 0");
        if (header.Length != 5)
        {
            await _reader.SkipAsync(header.Length).ConfigureAwait(false);
            _writer.QueueRstStream(header.StreamId, Http2ErrorCode.FrameSizeError);
            return;
        }
        await _reader.SkipAsync(5).ConfigureAwait(false); // priorities are advisory; all streams are equal here
    }

    private async ValueTask OnRstStreamAsync(Http2FrameHeader header)
    {
        if (header.StreamId == 0) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "RST_STREAM on stream 0");
        if (header.Length != 4) throw new Http2ConnectionException(Http2ErrorCode.FrameSizeError, "RST_STREAM must be 4 bytes");
        await _reader.SkipAsync(4).ConfigureAwait(false);
        if (header.StreamId > _lastStreamId)
            throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"RST_STREAM on stream {header.StreamId}, which was never opened");
        Find(header.StreamId)?.OnResetByPeer();
    }

    private async ValueTask OnSettingsAsync(Http2FrameHeader header)
    {
        if (header.StreamId != 0) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "SETTINGS on a stream");
        if (header.Has(Http2FrameFlags.Ack))
        {
            if (header.Length != 0) throw new Http2ConnectionException(Http2ErrorCode.FrameSizeError, "SETTINGS ack with a payload");
            return;
        }
        if (header.Length % 6 != 0) throw new Http2ConnectionException(Http2ErrorCode.FrameSizeError, "SETTINGS payload not a multiple of 6 bytes");
        var payload = new byte[header.Length];
        await _reader.ReadExactlyAsync(payload).ConfigureAwait(false);
        for (int i = 0; i < payload.Length; i += 6)
        {
            var id = (Http2Setting)BinaryPrimitives.ReadUInt16BigEndian(payload.AsSpan(i));
            uint value = BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(i + 2));
            switch (id)
            {
                case Http2Setting.InitialWindowSize:
                    if (value > Http2Frames.MaxWindowSize || !_windows.SetInitialStreamWindow(value))
                        throw new Http2ConnectionException(Http2ErrorCode.FlowControlError, $"SETTINGS_INITIAL_WINDOW_SIZE {value} is too large");
                    break;
                case Http2Setting.MaxFrameSize:
                    if (value is < Http2Frames.DefaultMaxFrameSize or > Http2Frames.MaxAllowedFrameSize)
                        throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"SETTINGS_MAX_FRAME_SIZE {value} is out of range");
                    PeerMaxFrameSize = (int)value;
                    break;
                case Http2Setting.EnablePush:
                    if (value > 1) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"SETTINGS_ENABLE_PUSH {value}");
                    break;
            }
            // HEADER_TABLE_SIZE: this side's encoder never uses the dynamic table. The rest are advisory here.
        }
        ThrowIfFlooded();
        _writer.QueueSettingsAck();
    }

    /// <summary>Acks owed but not sent past this: a client sending PING or SETTINGS without reading the answers.</summary>
    private const int MaxQueuedControlBytes = 1 << 20;

    private void ThrowIfFlooded()
    {
        if (_writer.QueuedControlBytes > MaxQueuedControlBytes)
            throw new Http2ConnectionException(Http2ErrorCode.EnhanceYourCalm,
                $"more than {MaxQueuedControlBytes} bytes of PING and SETTINGS acks unsent: the client does not read");
    }

    private async ValueTask OnPingAsync(Http2FrameHeader header)
    {
        if (header.StreamId != 0) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "PING on a stream");
        if (header.Length != 8) throw new Http2ConnectionException(Http2ErrorCode.FrameSizeError, "PING must be 8 bytes");
        var payload = new byte[8];
        await _reader.ReadExactlyAsync(payload).ConfigureAwait(false);
        if (header.Has(Http2FrameFlags.Ack)) return;
        ThrowIfFlooded();
        _writer.QueuePingAck(BinaryPrimitives.ReadUInt64BigEndian(payload));
    }

    private async ValueTask OnGoAwayAsync(Http2FrameHeader header)
    {
        if (header.StreamId != 0) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "GOAWAY on a stream");
        await _reader.SkipAsync(header.Length).ConfigureAwait(false);
        lock (_lock) _peerGoingAway = true; // the client opens no more streams; the open ones finish
    }

    private async ValueTask OnWindowUpdateAsync(Http2FrameHeader header)
    {
        if (header.Length != 4) throw new Http2ConnectionException(Http2ErrorCode.FrameSizeError, "WINDOW_UPDATE must be 4 bytes");
        var payload = new byte[4];
        await _reader.ReadExactlyAsync(payload).ConfigureAwait(false);
        int increment = (int)(BinaryPrimitives.ReadUInt32BigEndian(payload) & 0x7FFF_FFFF);
        if (header.StreamId == 0)
        {
            if (increment == 0) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "WINDOW_UPDATE of 0 on the connection");
            if (!_windows.Open(0, increment)) throw new Http2ConnectionException(Http2ErrorCode.FlowControlError, "the connection's send window passed 2^31-1");
            return;
        }
        if (header.StreamId > _lastStreamId)
            throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"WINDOW_UPDATE on stream {header.StreamId}, which was never opened");
        var call = Find(header.StreamId);
        if (call is null) return;
        if (increment == 0) ResetStream(call, Http2ErrorCode.ProtocolError, "WINDOW_UPDATE of 0");
        else if (!_windows.Open(header.StreamId, increment)) ResetStream(call, Http2ErrorCode.FlowControlError, "the stream's send window passed 2^31-1");
    }

    // ---- Calls ----

    private async Task RunCallAsync(DataPlaneCall call, DataPlaneCallContext context)
    {
        var status = await _dispatcher.ServeAsync(call, context).ConfigureAwait(false);
        await call.FinishAsync(status).ConfigureAwait(false);
        // The response is complete; a client still sending is told to stop (RFC 9113, section 8.1).
        if (!call.InputEndedByPeer) call.Reset(Http2ErrorCode.NoError);
        lock (_lock)
        {
            _calls.Remove(call.StreamId);
            _windows.RemoveStream(call.StreamId);
        }
        call.Close();
    }

    private async Task RejectAsync(int streamId, Status status, bool endStream)
    {
        try
        {
            await SendTrailersAsync(streamId, status, includeHeaders: true).ConfigureAwait(false);
            if (!endStream) _writer.QueueRstStream(streamId, Http2ErrorCode.NoError);
        }
        catch (IOException)
        {
        }
    }

    private void ResetStream(DataPlaneCall call, Http2ErrorCode code, string reason)
    {
        _dispatcher.Log.LogWarning("Data-plane stream {StreamId} from {Peer} reset with {Code}: {Reason}", call.StreamId, Peer, code, reason);
        call.Reset(code);
        call.Cancel();
    }

    private DataPlaneCall? Find(int streamId)
    {
        lock (_lock) return _calls.GetValueOrDefault(streamId);
    }

    private async Task GoAwayAsync(Http2ErrorCode code)
    {
        try
        {
            _writer.QueueGoAway(_lastStreamId, code);
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(1));
            await _writer.FlushControlAsync(timeout.Token).ConfigureAwait(false);
            // Close our side, then read what the client still sends for a moment: closing with unread input
            // makes the kernel answer with RST, which can destroy the GOAWAY before the client reads it.
            _socket.Shutdown(SocketShutdown.Send);
            var sink = new byte[16 * 1024];
            while (await _socket.ReceiveAsync(sink, SocketFlags.None, timeout.Token).ConfigureAwait(false) > 0)
            {
            }
        }
        catch (Exception ex) when (ex is IOException or OperationCanceledException or ObjectDisposedException or SocketException)
        {
        }
    }

    private async Task CloseAsync()
    {
        _closing.Cancel();
        _windows.Close(new IOException("the data-plane connection closed"));
        DataPlaneCall[] calls;
        Task[] running;
        lock (_lock)
        {
            calls = [.. _calls.Values];
            running = [.. _running];
        }
        foreach (var call in calls) call.Cancel();
        Abort();
        await Task.WhenAll(running).ConfigureAwait(false);
        _writer.Dispose();
        _reader.Dispose();
        _closing.Dispose();
    }
}
