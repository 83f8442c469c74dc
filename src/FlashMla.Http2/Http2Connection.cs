using System.Buffers;
using System.Buffers.Binary;
using System.Net.Sockets;

namespace FlashMla.Http2;

/// <summary>
/// The HTTP/2 engine of one connection (RFC 9113), whichever side opened it: the reader loop that owns the
/// socket's input, the HPACK decoder and every stream's receive side; SETTINGS, PING, GOAWAY, WINDOW_UPDATE,
/// RST_STREAM and PRIORITY handled here, once; both directions of flow control; header blocks assembled and
/// decoded; DATA handed to each stream to read straight into its own memory; and the writes, under one
/// <see cref="Http2FrameWriter"/>, of HEADERS (with CONTINUATION) and of DATA straight from the caller's memory.
/// A role (the server's data-plane connection, the client's) says what a header block means, which stream ids
/// are its peer's to open, and what a GOAWAY does to its streams.
/// </summary>
internal abstract class Http2Connection
{
    /// <summary>Acks owed but not sent past this: a peer sending PING or SETTINGS without reading the answers.</summary>
    private const int MaxQueuedControlBytes = 1 << 20;

    private readonly Dictionary<int, Http2Stream> _streams = [];
    private readonly HpackDecoder _hpack;
    private readonly ReceiveWindow _connectionReceive;
    private readonly List<KeyValuePair<string, string>> _fields = [];
    private byte[] _payload = new byte[256];
    private byte[] _headerBlock = new byte[RetainedHeaderBlockBytes];
    private volatile int _peerMaxFrameSize = Http2Frames.DefaultMaxFrameSize;
    private volatile int _peerMaxConcurrentStreams = int.MaxValue;
    private long _lastFrameReceivedAt = Environment.TickCount64;
    private volatile int _frameInProgress = NoFrame;
    private const int NoFrame = -1;
    private Http2Stream? _wakeAfterFrame; // the reader loop's own

    /// <param name="socket">The connection's socket: closed, and half-closed for a drain, here.</param>
    /// <param name="transport">What frames are read from and written to: a NetworkStream over <paramref name="socket"/> for
    /// cleartext, an authenticated SslStream over it for TLS. Disposed with the connection.</param>
    /// <param name="ioBuffers">Where the reader's and writer's buffers come from (the shared pool by default).</param>
    protected Http2Connection(Socket socket, Stream transport, Http2Settings local, ArrayPool<byte>? ioBuffers = null)
    {
        Socket = socket;
        Transport = transport;
        Local = local;
        Reader = new Http2FrameReader(transport, ioBuffers);
        // Cleartext: the writer may send a frame's pieces with one gathering send on the socket itself.
        Writer = new Http2FrameWriter(transport, ioBuffers, transport is NetworkStream ? socket : null);
        _hpack = new HpackDecoder(local.HeaderTableSize);
        _connectionReceive = new ReceiveWindow(local.ConnectionWindow, local.ConnectionWindow / 4);
    }

    protected Socket Socket { get; }
    protected Stream Transport { get; }
    public Http2Settings Local { get; }
    internal Http2FrameReader Reader { get; }
    internal Http2FrameWriter Writer { get; }
    internal SendWindows SendWindows { get; } = new();

    /// <summary>The peer's SETTINGS_MAX_FRAME_SIZE.</summary>
    public int PeerMaxFrameSize => _peerMaxFrameSize;

    /// <summary>The peer's SETTINGS_MAX_CONCURRENT_STREAMS (unlimited until it says).</summary>
    public int PeerMaxConcurrentStreams => _peerMaxConcurrentStreams;

    /// <summary>When (<see cref="Environment.TickCount64"/>) the last frame arrived: a keep-alive pings a peer silent for too long.</summary>
    public long LastFrameReceivedAt => Volatile.Read(ref _lastFrameReceivedAt);

    /// <summary>
    /// The type of the frame whose header arrived and whose payload (or, for HEADERS, header block) is still being
    /// read, since <see cref="LastFrameReceivedAt"/>; null between frames. A server's timeouts tell a slow sender by it.
    /// </summary>
    public Http2FrameType? FrameInProgress
    {
        get
        {
            int type = _frameInProgress;
            return type == NoFrame ? null : (Http2FrameType)type;
        }
    }

    /// <summary>Guards the stream table; roles take it for their own stream bookkeeping too.</summary>
    protected object StreamsLock => _streams;

    protected int StreamCount
    {
        get { lock (_streams) return _streams.Count; }
    }

    // ---- What a role decides ----

    /// <summary>True for a stream id nobody opened yet: a frame on it (other than a peer's opening HEADERS) is a connection error.</summary>
    protected abstract bool IsIdle(int streamId);

    /// <summary>A whole, decoded header block on <paramref name="streamId"/>; the fields are valid during the call only.</summary>
    protected abstract void OnHeaderBlock(int streamId, List<KeyValuePair<string, string>> fields, bool endStream);

    /// <summary>
    /// A whole header block on <paramref name="streamId"/> whose list is <paramref name="listSize"/> bytes, above
    /// <see cref="Http2Settings.StreamHeaderListLimit"/> (or else <see cref="Http2Settings.MaxHeaderListSize"/>);
    /// <paramref name="fields"/> holds the fields up to the limit. The
    /// block was decoded (the HPACK table is in step), so this is the stream's fault alone: by default it is reset
    /// (a role with a protocol on top answers it in that protocol's words).
    /// </summary>
    protected virtual void OnHeaderListTooLarge(int streamId, List<KeyValuePair<string, string>> fields, long listSize, bool endStream) =>
        Writer.QueueRstStream(streamId, Http2ErrorCode.ProtocolError); // not REFUSED_STREAM: a retry would fail the same way

    /// <summary>The peer's GOAWAY: it opens no more streams, and processed none above <paramref name="lastStreamId"/>.</summary>
    protected abstract void OnGoAway(int lastStreamId, Http2ErrorCode code, string debug);

    /// <summary>The peer's SETTINGS were applied (and acknowledged).</summary>
    protected virtual void OnPeerSettings()
    {
    }

    /// <summary>The peer acknowledged a PING of ours (the client's keep-alive).</summary>
    protected virtual void OnPingAck(ulong opaque)
    {
    }

    /// <summary>Counts a DATA payload received (the client's transport counters).</summary>
    protected virtual void OnDataReceived(int bytes)
    {
    }

    /// <summary>Counts a DATA payload sent.</summary>
    protected virtual void OnDataSent(int bytes)
    {
    }

    // ---- Streams ----

    protected void AddStream(Http2Stream stream)
    {
        lock (_streams)
        {
            _streams.Add(stream.Id, stream);
            SendWindows.AddStream(stream.Id);
        }
    }

    /// <summary>Forgets a finished stream: frames still arriving for it are read and dropped.</summary>
    protected void RemoveStream(Http2Stream stream)
    {
        lock (_streams) _streams.Remove(stream.Id);
        SendWindows.RemoveStream(stream.Id);
        stream.MarkRemoved();
    }

    protected Http2Stream[] Streams()
    {
        lock (_streams) return [.. _streams.Values];
    }

    /// <summary>The open stream <paramref name="streamId"/>, or null for one already closed; throws for one never opened.</summary>
    protected Http2Stream? FindStream(int streamId, Http2FrameType type)
    {
        lock (_streams)
        {
            if (_streams.TryGetValue(streamId, out var stream)) return stream;
            if (IsIdle(streamId)) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"{type} frame on stream {streamId}, which was never opened");
            return null; // closed: its frames were in flight
        }
    }

    // ---- The opening and the reader loop ----

    /// <summary>Sends <paramref name="preface"/> (a client's; empty for a server), then our SETTINGS and connection window.</summary>
    protected async Task SendOpeningAsync(ReadOnlyMemory<byte> preface, CancellationToken cancellationToken)
    {
        var frames = new byte[preface.Length + Http2Settings.MaxOpeningBytes];
        preface.CopyTo(frames);
        int n = preface.Length + Local.WriteOpening(frames.AsSpan(preface.Length));
        await Writer.EnterAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            await Writer.WriteRawLockedAsync(frames.AsMemory(0, n)).ConfigureAwait(false);
        }
        finally
        {
            Writer.Exit();
        }
    }

    /// <summary>
    /// Reads and handles frames until the peer closes the connection between frames. Throws
    /// <see cref="Http2ConnectionException"/> or <see cref="HpackDecodingException"/> for a connection error (the
    /// caller sends GOAWAY), IOException or SocketException when the socket fails.
    /// </summary>
    protected async Task ReadFramesAsync()
    {
        bool first = true;
        while (await Reader.ReadHeaderAsync().ConfigureAwait(false) is { } header)
        {
            if (header.Length > Local.MaxFrameSize)
                throw new Http2ConnectionException(Http2ErrorCode.FrameSizeError, $"{header.Type} frame of {header.Length} bytes, above the {Local.MaxFrameSize} advertised");
            if (first && (header.Type != Http2FrameType.Settings || header.Has(Http2FrameFlags.Ack)))
                throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "the peer's first frame must be SETTINGS");
            first = false;
            Volatile.Write(ref _lastFrameReceivedAt, Environment.TickCount64);
            _frameInProgress = (int)header.Type;
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
                    throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "PUSH_PROMISE, which this side never allows");
                case Http2FrameType.Continuation:
                    throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "CONTINUATION without a HEADERS frame before it");
                default:
                    await Reader.SkipAsync(header.Length).ConfigureAwait(false); // unknown frame types are ignored (section 4.1)
                    break;
            }
            _frameInProgress = NoFrame;
            if (_wakeAfterFrame is { } woken)
            {
                // The frame gave a waiting reader what it waits for: it resumes on this thread, and the loop goes on as a
                // new work item (off the woken reader's path: with one request in flight nothing else is coming anyway).
                _wakeAfterFrame = null;
                await new ThreadHandOff<Http2Stream>(static stream => stream.OnReaderWake(), woken);
            }
        }
    }

    /// <summary>
    /// Called on the reader loop by a stream whose application reader waits for what the current frame delivered:
    /// once the frame is handled, <see cref="Http2Stream.OnReaderWake"/> runs on this thread while the loop moves to
    /// another (<see cref="ThreadHandOff{TState}"/>), so the reader resumes without a thread-pool hop and whatever
    /// it runs next (the application's code) never holds up the connection's other streams.
    /// </summary>
    internal void WakeAfterFrame(Http2Stream stream)
    {
        if (_wakeAfterFrame is { } other && other != stream)
            ThreadPool.UnsafeQueueUserWorkItem(static s => s.OnReaderWake(), other, preferLocal: false); // one frame, one stream: never in practice
        _wakeAfterFrame = stream;
    }

    private async ValueTask OnDataAsync(Http2FrameHeader header)
    {
        if (header.StreamId == 0) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "DATA on stream 0");
        if (!_connectionReceive.TryReceive(header.Length))
            throw new Http2ConnectionException(Http2ErrorCode.FlowControlError, "DATA past the connection's receive window");
        var stream = FindStream(header.StreamId, header.Type);
        int padding = 0, length = header.Length;
        if (header.Has(Http2FrameFlags.Padded))
        {
            if (length < 1) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "padded DATA frame without a pad length");
            padding = (await ReadPayloadAsync(1).ConfigureAwait(false)).Span[0];
            length -= 1 + padding;
            if (length < 0) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "DATA frame's padding is longer than its payload");
        }
        OnDataReceived(length);
        if (stream is null || stream.IsReset)
        {
            await Reader.SkipAsync(length + padding).ConfigureAwait(false); // a stream this side already closed or reset
        }
        else if (stream.InputEnded || !stream.ReceiveWindow.TryReceive(header.Length))
        {
            await Reader.SkipAsync(length + padding).ConfigureAwait(false);
            stream.FailWithStreamError(stream.InputEnded
                ? new Http2StreamException(Http2ErrorCode.StreamClosed, "DATA after the stream's END_STREAM")
                : new Http2StreamException(Http2ErrorCode.FlowControlError, "the peer sent more than the stream's window"));
        }
        else
        {
            try
            {
                await stream.OnDataAsync(Reader, length).ConfigureAwait(false);
            }
            catch (Http2StreamException ex)
            {
                await Reader.SkipAsync(length).ConfigureAwait(false);
                stream.FailWithStreamError(ex);
            }
            await Reader.SkipAsync(padding).ConfigureAwait(false);
            if (header.Length > length) stream.Release(header.Length - length, flush: true); // the pad length and padding: nobody reads them
            if (header.Has(Http2FrameFlags.EndStream)) EndInput(stream);
        }
        // Connection credit goes back on receipt: each stream's window bounds what it holds, and one stream the
        // application does not read must not stall the others.
        int increment = _connectionReceive.Release(header.Length);
        if (increment > 0) Writer.QueueWindowUpdate(0, increment);
    }

    private async ValueTask OnHeadersAsync(Http2FrameHeader header)
    {
        if (header.StreamId == 0) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "HEADERS on stream 0");
        int length = await ReadHeaderBlockAsync(header).ConfigureAwait(false);
        _fields.Clear();
        // Decoded whatever becomes of the stream: the HPACK table is the connection's.
        long maxListSize = Local.StreamHeaderListLimit ?? Local.MaxHeaderListSize ?? long.MaxValue;
        long listSize = _hpack.Decode(_headerBlock.AsSpan(0, length), _fields, maxListSize);
        // A block larger than most is not worth its buffer for the connection's life.
        if (_headerBlock.Length > RetainedHeaderBlockBytes) _headerBlock = new byte[RetainedHeaderBlockBytes];
        if (listSize > maxListSize) OnHeaderListTooLarge(header.StreamId, _fields, listSize, header.Has(Http2FrameFlags.EndStream));
        else OnHeaderBlock(header.StreamId, _fields, header.Has(Http2FrameFlags.EndStream));
    }

    private const int RetainedHeaderBlockBytes = 16 * 1024;

    /// <summary>Hands a header block to an open stream; a stream error it raises resets the stream, END_STREAM ends its input.</summary>
    protected void DeliverHeaders(Http2Stream stream, List<KeyValuePair<string, string>> fields, bool endStream)
    {
        if (stream.IsReset) return;
        if (stream.InputEnded)
        {
            stream.FailWithStreamError(new Http2StreamException(Http2ErrorCode.StreamClosed, "HEADERS after the stream's END_STREAM"));
            return;
        }
        try
        {
            stream.OnHeaders(fields, endStream);
        }
        catch (Http2StreamException ex)
        {
            stream.FailWithStreamError(ex);
            return;
        }
        if (endStream) EndInput(stream);
    }

    /// <summary>The peer ended its side of <paramref name="stream"/> (END_STREAM, or a stream opened by HEADERS that carried it).</summary>
    protected static void EndInput(Http2Stream stream)
    {
        stream.MarkInputEnded();
        try
        {
            stream.OnEndStream();
        }
        catch (Http2StreamException ex)
        {
            stream.FailWithStreamError(ex);
        }
    }

    /// <summary>Reads a HEADERS payload and its CONTINUATIONs into <see cref="_headerBlock"/>, padding and priority removed.</summary>
    private async ValueTask<int> ReadHeaderBlockAsync(Http2FrameHeader header)
    {
        int length = 0;
        var frame = header;
        while (true)
        {
            if (length + frame.Length > Local.MaxHeaderBlockBytes)
                throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"header block larger than {Local.MaxHeaderBlockBytes} bytes");
            if (_headerBlock.Length < length + frame.Length)
                Array.Resize(ref _headerBlock, Math.Min(Local.MaxHeaderBlockBytes, 2 * (length + frame.Length)));
            var payload = _headerBlock.AsMemory(length, frame.Length);
            await Reader.ReadExactlyAsync(payload).ConfigureAwait(false);
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
            var next = await Reader.ReadHeaderAsync().ConfigureAwait(false)
                ?? throw new IOException("the peer closed the connection inside a header block");
            if (next.Type != Http2FrameType.Continuation || next.StreamId != header.StreamId)
                throw new Http2ConnectionException(Http2ErrorCode.ProtocolError,
                    $"{next.Type} frame on stream {next.StreamId} where CONTINUATION of stream {header.StreamId} was due");
            if (next.Length > Local.MaxFrameSize)
                throw new Http2ConnectionException(Http2ErrorCode.FrameSizeError, $"CONTINUATION frame of {next.Length} bytes, above the {Local.MaxFrameSize} advertised");
            frame = next;
        }
    }

    private async ValueTask OnPriorityAsync(Http2FrameHeader header)
    {
        if (header.StreamId == 0) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "PRIORITY on stream 0");
        await Reader.SkipAsync(header.Length).ConfigureAwait(false); // priorities are advisory; all streams are equal here
        if (header.Length != 5) Writer.QueueRstStream(header.StreamId, Http2ErrorCode.FrameSizeError);
    }

    private async ValueTask OnRstStreamAsync(Http2FrameHeader header)
    {
        if (header.StreamId == 0) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "RST_STREAM on stream 0");
        var code = (Http2ErrorCode)BinaryPrimitives.ReadUInt32BigEndian((await ReadControlAsync(header, 4).ConfigureAwait(false)).Span);
        FindStream(header.StreamId, header.Type)?.ResetByPeer(code);
    }

    private async ValueTask OnSettingsAsync(Http2FrameHeader header)
    {
        if (header.StreamId != 0) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "SETTINGS on a stream");
        if (header.Has(Http2FrameFlags.Ack))
        {
            if (header.Length != 0) throw new Http2ConnectionException(Http2ErrorCode.FrameSizeError, "SETTINGS ack with a payload");
            return;
        }
        if (header.Length % 6 != 0) throw new Http2ConnectionException(Http2ErrorCode.FrameSizeError, $"SETTINGS of {header.Length} bytes, not a multiple of 6");
        var payload = await ReadPayloadAsync(header.Length).ConfigureAwait(false);
        for (int i = 0; i < payload.Length; i += 6)
        {
            var id = (Http2Setting)BinaryPrimitives.ReadUInt16BigEndian(payload.Span[i..]);
            uint value = BinaryPrimitives.ReadUInt32BigEndian(payload.Span[(i + 2)..]);
            switch (id)
            {
                case Http2Setting.InitialWindowSize:
                    if (value > Http2Frames.MaxWindowSize || !SendWindows.SetInitialStreamWindow(value))
                        throw new Http2ConnectionException(Http2ErrorCode.FlowControlError, $"SETTINGS_INITIAL_WINDOW_SIZE {value} takes a window above 2^31-1");
                    break;
                case Http2Setting.MaxFrameSize:
                    if (value is < Http2Frames.DefaultMaxFrameSize or > Http2Frames.MaxAllowedFrameSize)
                        throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"SETTINGS_MAX_FRAME_SIZE {value} is outside 16384..16777215");
                    _peerMaxFrameSize = (int)value;
                    break;
                case Http2Setting.MaxConcurrentStreams:
                    _peerMaxConcurrentStreams = (int)Math.Min(value, int.MaxValue);
                    break;
                case Http2Setting.EnablePush:
                    if (value > 1) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"SETTINGS_ENABLE_PUSH {value}");
                    break;
            }
            // HEADER_TABLE_SIZE: our encoder never indexes. MAX_HEADER_LIST_SIZE and unknown settings: advisory here.
        }
        ThrowIfFlooded();
        Writer.QueueSettingsAck();
        OnPeerSettings();
    }

    private async ValueTask OnPingAsync(Http2FrameHeader header)
    {
        if (header.StreamId != 0) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "PING on a stream");
        var payload = await ReadControlAsync(header, 8).ConfigureAwait(false);
        if (header.Has(Http2FrameFlags.Ack))
        {
            OnPingAck(BinaryPrimitives.ReadUInt64BigEndian(payload.Span));
            return;
        }
        ThrowIfFlooded();
        Writer.QueuePingAck(BinaryPrimitives.ReadUInt64BigEndian(payload.Span));
    }

    private void ThrowIfFlooded()
    {
        if (Writer.QueuedControlBytes > MaxQueuedControlBytes)
            throw new Http2ConnectionException(Http2ErrorCode.EnhanceYourCalm,
                $"more than {MaxQueuedControlBytes} bytes of PING and SETTINGS acks unsent: the peer does not read");
    }

    private async ValueTask OnGoAwayAsync(Http2FrameHeader header)
    {
        if (header.StreamId != 0) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "GOAWAY on a stream");
        if (header.Length < 8) throw new Http2ConnectionException(Http2ErrorCode.FrameSizeError, $"GOAWAY of {header.Length} bytes");
        var payload = await ReadPayloadAsync(header.Length).ConfigureAwait(false);
        int lastStreamId = (int)(BinaryPrimitives.ReadUInt32BigEndian(payload.Span) & 0x7FFF_FFFF);
        var code = (Http2ErrorCode)BinaryPrimitives.ReadUInt32BigEndian(payload.Span[4..]);
        OnGoAway(lastStreamId, code, System.Text.Encoding.UTF8.GetString(payload.Span[8..]));
    }

    private async ValueTask OnWindowUpdateAsync(Http2FrameHeader header)
    {
        var payload = await ReadControlAsync(header, 4).ConfigureAwait(false);
        int increment = (int)(BinaryPrimitives.ReadUInt32BigEndian(payload.Span) & 0x7FFF_FFFF);
        if (header.StreamId == 0)
        {
            if (increment == 0) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "WINDOW_UPDATE of 0 on the connection");
            if (!SendWindows.Open(0, increment)) throw new Http2ConnectionException(Http2ErrorCode.FlowControlError, "the connection's send window passed 2^31-1");
            return;
        }
        var stream = FindStream(header.StreamId, header.Type);
        if (stream is null) return;
        if (increment == 0) stream.FailWithStreamError(new Http2StreamException(Http2ErrorCode.ProtocolError, "WINDOW_UPDATE of 0"));
        else if (!SendWindows.Open(stream.Id, increment))
            stream.FailWithStreamError(new Http2StreamException(Http2ErrorCode.FlowControlError, "the stream's send window passed 2^31-1"));
    }

    /// <summary>A control frame's payload of exactly <paramref name="length"/> bytes (FRAME_SIZE_ERROR otherwise).</summary>
    private ValueTask<ReadOnlyMemory<byte>> ReadControlAsync(Http2FrameHeader header, int length)
    {
        if (header.Length != length)
            throw new Http2ConnectionException(Http2ErrorCode.FrameSizeError, $"{header.Type} frame of {header.Length} bytes, expected {length}");
        return ReadPayloadAsync(length);
    }

    /// <summary>The next <paramref name="length"/> payload bytes in a reused buffer, valid until the next read.</summary>
    private async ValueTask<ReadOnlyMemory<byte>> ReadPayloadAsync(int length)
    {
        if (_payload.Length < length) _payload = new byte[Math.Max(length, 2 * _payload.Length)];
        var payload = _payload.AsMemory(0, length);
        await Reader.ReadExactlyAsync(payload).ConfigureAwait(false);
        return payload;
    }

    // ---- Writing ----

    /// <summary>Writes a header block as HEADERS and, past the peer's frame size, CONTINUATIONs back to back; the caller holds the write lock.</summary>
    protected async ValueTask WriteHeadersLockedAsync(int streamId, ReadOnlyMemory<byte> block, bool endStream)
    {
        int frameLimit = PeerMaxFrameSize;
        var first = block[..Math.Min(block.Length, frameLimit)];
        var flags = (endStream ? Http2FrameFlags.EndStream : 0) | (first.Length == block.Length ? Http2FrameFlags.EndHeaders : 0);
        await Writer.WriteFrameLockedAsync(new Http2FrameHeader(first.Length, Http2FrameType.Headers, flags, streamId), first).ConfigureAwait(false);
        block = block[first.Length..];
        while (!block.IsEmpty)
        {
            var part = block[..Math.Min(block.Length, frameLimit)];
            block = block[part.Length..];
            await Writer.WriteFrameLockedAsync(new Http2FrameHeader(part.Length, Http2FrameType.Continuation,
                block.IsEmpty ? Http2FrameFlags.EndHeaders : 0, streamId), part).ConfigureAwait(false);
        }
    }

    /// <summary>Writes a header block on <paramref name="stream"/>, taking the write lock; nothing once the stream is reset.</summary>
    public async ValueTask WriteHeadersAsync(Http2Stream stream, ReadOnlyMemory<byte> block, bool endStream, CancellationToken cancellationToken)
    {
        await Writer.EnterAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            ThrowIfReset(stream);
            await WriteHeadersLockedAsync(stream.Id, block, endStream).ConfigureAwait(false);
        }
        finally
        {
            Writer.Exit();
        }
    }

    /// <summary>
    /// Sends <paramref name="pieces"/>, in order, as DATA frames on <paramref name="stream"/>: each frame as large as the
    /// send windows and both sides' frame sizes allow, its payload going to the socket straight from the pieces'
    /// memory. Waits for credit; credit taken for a frame that never went out goes back. Callers serialise their
    /// writes on one stream.
    /// </summary>
    public async ValueTask WriteDataAsync(Http2Stream stream, ReadOnlyMemory<ReadOnlyMemory<byte>> pieces, CancellationToken cancellationToken)
    {
        long remaining = 0;
        foreach (var piece in pieces.Span) remaining += piece.Length;
        int next = 0, offset = 0;
        var parts = stream.FrameParts;
        while (remaining > 0)
        {
            int limit = Math.Min(PeerMaxFrameSize, Local.MaxFrameSize);
            int frame = await SendWindows.TakeAsync(stream.Id, (int)Math.Min(remaining, limit), cancellationToken).ConfigureAwait(false);
            parts.Clear();
            for (int left = frame; left > 0;)
            {
                var current = pieces.Span[next];
                int n = Math.Min(left, current.Length - offset);
                parts.Add(current.Slice(offset, n));
                left -= n;
                offset += n;
                if (offset == current.Length)
                {
                    next++;
                    offset = 0;
                }
            }
            bool sent = false;
            try
            {
                await Writer.EnterAsync(cancellationToken).ConfigureAwait(false);
                try
                {
                    ThrowIfReset(stream);
                    await Writer.WritePartsLockedAsync(new Http2FrameHeader(frame, Http2FrameType.Data, Http2FrameFlags.None, stream.Id), parts)
                        .ConfigureAwait(false);
                    sent = true;
                }
                finally
                {
                    Writer.Exit();
                }
            }
            finally
            {
                // Cancelled before the frame went out: its credit is the connection's again, or it would leak away.
                if (!sent) SendWindows.Return(stream.Id, frame);
            }
            stream.CountSent(frame);
            OnDataSent(frame);
            remaining -= frame;
        }
        parts.Clear();
    }

    /// <summary>An empty DATA frame with END_STREAM: this side's half of the stream is done.</summary>
    public async ValueTask WriteEndStreamAsync(Http2Stream stream)
    {
        await Writer.EnterAsync(CancellationToken.None).ConfigureAwait(false);
        try
        {
            ThrowIfReset(stream);
            await Writer.WriteFrameLockedAsync(new Http2FrameHeader(0, Http2FrameType.Data, Http2FrameFlags.EndStream, stream.Id), default).ConfigureAwait(false);
        }
        finally
        {
            Writer.Exit();
        }
    }

    private static void ThrowIfReset(Http2Stream stream)
    {
        if (stream.IsReset) throw new IOException($"HTTP/2 stream {stream.Id} was reset");
    }

    // ---- Closing ----

    /// <summary>Queues GOAWAY and waits (a second at most) for it and every control frame before it to leave.</summary>
    protected async Task SendGoAwayAsync(int lastStreamId, Http2ErrorCode code)
    {
        if (Writer.Failure is not null) return;
        Writer.QueueGoAway(lastStreamId, code);
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(1));
        try
        {
            await Writer.FlushControlAsync(timeout.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or OperationCanceledException or ObjectDisposedException or SocketException)
        {
            // The peer is gone or stuck; closing the socket is all that is left.
        }
    }

    /// <summary>
    /// After the reader loop ended: closes our side, then reads what the peer still sends for a moment (closing
    /// with unread input makes the kernel answer with RST, which can destroy a GOAWAY before the peer reads it).
    /// </summary>
    protected async Task DrainInputAsync()
    {
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(1));
            Socket.Shutdown(SocketShutdown.Send);
            var sink = ArrayPool<byte>.Shared.Rent(16 * 1024);
            try
            {
                while (await Socket.ReceiveAsync(sink, SocketFlags.None, timeout.Token).ConfigureAwait(false) > 0)
                {
                }
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(sink);
            }
        }
        catch (Exception ex) when (ex is IOException or OperationCanceledException or ObjectDisposedException or SocketException)
        {
        }
    }

    /// <summary>Closes the socket now (the reader loop then ends) and fails every wait for send credit.</summary>
    protected void CloseSocket(Exception reason)
    {
        SendWindows.Close(reason);
        try
        {
            Socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
        {
            // Already reset by the peer.
        }
        Socket.Dispose();
        Transport.Dispose(); // an SslStream's native session goes with it
    }
}
