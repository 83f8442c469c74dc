using FlashMla.Http2;
using System.Buffers;
using System.Buffers.Binary;
using System.Net.Sockets;

namespace FlashMla.Client.Transport;

/// <summary>
/// One cleartext HTTP/2 connection (h2c with prior knowledge) to one server: the preface and settings, a
/// reader loop that owns the socket's read side and the HPACK decoder, frame writes under the
/// <see cref="Http2FrameWriter"/>'s lock, and both directions of flow control. Streams ask it to open, to send
/// DATA and to give credit back; it fails them when the server resets them, sends GOAWAY or goes away.
/// </summary>
internal sealed class Http2Connection : IAsyncDisposable
{
    /// <summary>Largest header block accepted across HEADERS and CONTINUATION frames.</summary>
    private const int MaxHeaderBlockSize = 1024 * 1024;

    private readonly Socket _socket;
    private readonly LargeFrameHttp2Options _options;
    private readonly Http2TransportCounters _counters;
    private readonly Http2FrameReader _reader;
    private readonly Http2FrameWriter _writer;
    private readonly HpackDecoder _hpack = new(maxCapacity: 0);
    private readonly Dictionary<int, Http2Stream> _streams = [];
    private readonly TaskCompletionSource _settingsReceived = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private Task _readLoop = Task.CompletedTask;
    private int _nextStreamId = 1, _reservedStreams, _peerMaxConcurrentStreams = int.MaxValue;
    private volatile bool _accepting = true;
    private volatile Exception? _failure;
    private volatile int _peerMaxFrameSize = Http2Frames.DefaultMaxFrameSize;

    // Send flow control, under _flowLock.
    private readonly object _flowLock = new();
    private readonly List<Http2Stream> _connectionWindowWaiters = [];
    private long _connectionSendWindow = Http2Frames.DefaultWindowSize;
    private int _peerInitialWindow = Http2Frames.DefaultWindowSize;

    // Receive side, reader loop only.
    private long _connectionReceiveWindow;
    private int _connectionUnacked;
    private byte[] _payload = [];
    private byte[] _headerBlock = [];
    private int _headerBlockLength, _headerStreamId;
    private bool _headerEndStream;

    private Http2Connection(Socket socket, LargeFrameHttp2Options options, Http2TransportCounters counters)
    {
        _socket = socket;
        _options = options;
        _counters = counters;
        _reader = new Http2FrameReader(socket);
        _writer = new Http2FrameWriter(socket);
        _connectionReceiveWindow = options.ConnectionWindowSize;
    }

    /// <summary>False once the connection takes no new streams (GOAWAY, failure, stream ids spent, disposal).</summary>
    public bool IsAccepting => _accepting;

    /// <summary>Streams reserved or open; the handler opens another connection when the server's limit is reached.</summary>
    public int ActiveStreams => Volatile.Read(ref _reservedStreams);

    public static async Task<Http2Connection> ConnectAsync(string host, int port, LargeFrameHttp2Options options, Http2TransportCounters counters,
        CancellationToken cancellationToken)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(options.ConnectTimeout);
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        if (options.SocketBufferSize > 0)
        {
            socket.SendBufferSize = options.SocketBufferSize;
            socket.ReceiveBufferSize = options.SocketBufferSize;
        }
        Http2Connection? connection = null;
        try
        {
            await socket.ConnectAsync(host, port, timeout.Token).ConfigureAwait(false);
            connection = new Http2Connection(socket, options, counters);
            await connection.StartAsync(timeout.Token).ConfigureAwait(false);
            counters.ConnectionOpened();
            return connection;
        }
        catch (Exception ex)
        {
            if (connection is not null) await connection.DisposeAsync().ConfigureAwait(false);
            else socket.Dispose();
            if (ex is OperationCanceledException && cancellationToken.IsCancellationRequested) throw;
            string why = ex is OperationCanceledException ? $"no HTTP/2 SETTINGS within {options.ConnectTimeout.TotalSeconds:F0} s" : ex.Message;
            throw new HttpRequestException(HttpRequestError.ConnectionError,
                $"HTTP/2 (h2c) connection to {host}:{port} failed: {why}", ex is OperationCanceledException ? null : ex);
        }
    }

    /// <summary>Sends the preface, our SETTINGS and the connection window, then waits for the server's SETTINGS.</summary>
    private async Task StartAsync(CancellationToken cancellationToken)
    {
        ReadOnlySpan<(Http2Setting, uint)> settings =
        [
            // Table size 0: the server's encoder never indexes, so no response depends on earlier ones.
            (Http2Setting.HeaderTableSize, 0),
            (Http2Setting.EnablePush, 0),
            (Http2Setting.InitialWindowSize, (uint)_options.StreamWindowSize),
            (Http2Setting.MaxFrameSize, (uint)_options.MaxFrameSize),
        ];
        var start = new byte[Http2Frames.Preface.Length + Http2Frames.SettingsFrameSize(settings.Length) + Http2Frames.WindowUpdateFrameSize];
        int n = Http2Frames.Preface.Length;
        Http2Frames.Preface.CopyTo(start);
        n += Http2Frames.WriteSettings(start.AsSpan(n), settings);
        int increment = _options.ConnectionWindowSize - Http2Frames.DefaultWindowSize;
        if (increment > 0) n += Http2Frames.WriteWindowUpdate(start.AsSpan(n), 0, increment);

        await _writer.EnterAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            await _writer.WriteRawLockedAsync(start.AsMemory(0, n)).ConfigureAwait(false);
        }
        finally
        {
            _writer.Exit();
        }
        _readLoop = Task.Run(ReadLoopAsync, CancellationToken.None);
        await _settingsReceived.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Reserves a stream slot under the server's MAX_CONCURRENT_STREAMS; false when full or closing.</summary>
    public bool TryReserveStream()
    {
        lock (_streams)
        {
            if (!_accepting || _reservedStreams >= _peerMaxConcurrentStreams) return false;
            _reservedStreams++;
            return true;
        }
    }

    /// <summary>
    /// Opens a stream for <paramref name="request"/> (a slot must be reserved) and returns the response when its
    /// headers arrive; the request body keeps going out meanwhile, which is what full-duplex calls need.
    /// Throws <see cref="Http2ConnectionUnavailableException"/> when the connection closed before the HEADERS
    /// went out (nothing was sent: the caller may retry on another connection).
    /// </summary>
    public async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        var stream = new Http2Stream(this, request, _options.StreamWindowSize);
        bool registered = false;
        byte[] block = Http2RequestHeaders.Encode(request, out int blockLength);
        try
        {
            await _writer.EnterAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                if (!_accepting || _failure is not null || _writer.Failure is not null)
                    throw new Http2ConnectionUnavailableException("the HTTP/2 connection closed before the request could start");
                lock (_flowLock) stream.SendWindow = _peerInitialWindow;
                lock (_streams)
                {
                    stream.Id = _nextStreamId;
                    _nextStreamId += 2;
                    if (_nextStreamId > int.MaxValue - 2) _accepting = false; // stream ids spent: the next request opens a new connection
                    _streams.Add(stream.Id, stream);
                }
                registered = true;
                await WriteHeadersLockedAsync(stream.Id, block.AsMemory(0, blockLength), endStream: request.Content is null).ConfigureAwait(false);
            }
            finally
            {
                _writer.Exit();
            }
        }
        catch (Exception ex)
        {
            if (registered) stream.Fail(ex);
            else ReleaseReservation();
            throw ex is OperationCanceledException or HttpRequestException ? ex : new HttpRequestException(HttpRequestError.ConnectionError, ex.Message, ex);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(block);
        }

        if (request.Content is { } content) _ = SendBodyAsync(stream, content, cancellationToken);
        else stream.MarkRequestEnded();
        stream.RegisterCancellation(cancellationToken);
        try
        {
            return await stream.ResponseReady.ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is not OperationCanceledException and not HttpRequestException)
        {
            throw new HttpRequestException(ex is HttpProtocolException ? HttpRequestError.HttpProtocolError : HttpRequestError.ConnectionError,
                ex.Message, ex);
        }
    }

    private async Task SendBodyAsync(Http2Stream stream, HttpContent content, CancellationToken cancellationToken)
    {
        try
        {
            await content.CopyToAsync(new Http2RequestStream(this, stream), cancellationToken).ConfigureAwait(false);
            await SendEndStreamAsync(stream).ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            // The writer saw this exception already; the response must fail too, and the server must stop waiting.
            ResetStream(stream, Http2ErrorCode.Cancel, ex is OperationCanceledException or IOException
                ? ex : new IOException($"writing the request body of HTTP/2 stream {stream.Id} failed: {ex.Message}", ex));
        }
    }

    /// <summary>Sends <paramref name="data"/> as DATA frames, waiting for send credit of the stream and the connection.</summary>
    public async ValueTask SendDataAsync(Http2Stream stream, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        while (!data.IsEmpty)
        {
            int frameLimit = Math.Min(_peerMaxFrameSize, _options.MaxFrameSize);
            int n = await ReserveSendWindowAsync(stream, Math.Min(data.Length, frameLimit), cancellationToken).ConfigureAwait(false);
            if (n == 0) return; // abandoned by the server: drop the rest
            bool sent = false;
            try
            {
                await _writer.EnterAsync(cancellationToken).ConfigureAwait(false);
                try
                {
                    ThrowIfCannotSend(stream);
                    await _writer.WriteFrameLockedAsync(new Http2FrameHeader(n, Http2FrameType.Data, Http2FrameFlags.None, stream.Id), data[..n])
                        .ConfigureAwait(false);
                    sent = true;
                }
                finally
                {
                    _writer.Exit();
                }
            }
            finally
            {
                if (!sent) GiveBackConnectionWindow(n);
            }
            _counters.DataSent(n);
            data = data[n..];
        }
    }

    private async ValueTask SendEndStreamAsync(Http2Stream stream)
    {
        if (!stream.RequestAbandoned)
        {
            await _writer.EnterAsync(CancellationToken.None).ConfigureAwait(false);
            try
            {
                if (!stream.RequestAbandoned)
                {
                    ThrowIfCannotSend(stream);
                    await _writer.WriteFrameLockedAsync(new Http2FrameHeader(0, Http2FrameType.Data, Http2FrameFlags.EndStream, stream.Id), default)
                        .ConfigureAwait(false);
                }
            }
            finally
            {
                _writer.Exit();
            }
        }
        stream.MarkRequestEnded();
    }

    private static void ThrowIfCannotSend(Http2Stream stream)
    {
        if (stream.Failure is { } failure) throw failure is OperationCanceledException ? new OperationCanceledException(failure.Message, failure) : new IOException(failure.Message, failure);
        if (stream.ResetSent) throw new IOException($"HTTP/2 stream {stream.Id} was reset");
    }

    private async Task WriteHeadersLockedAsync(int streamId, ReadOnlyMemory<byte> block, bool endStream)
    {
        // A block larger than the server's frame size continues in CONTINUATION frames, back to back under the lock.
        int frameLimit = _peerMaxFrameSize;
        var first = block[..Math.Min(block.Length, frameLimit)];
        var flags = (endStream ? Http2FrameFlags.EndStream : 0) | (first.Length == block.Length ? Http2FrameFlags.EndHeaders : 0);
        await _writer.WriteFrameLockedAsync(new Http2FrameHeader(first.Length, Http2FrameType.Headers, flags, streamId), first).ConfigureAwait(false);
        block = block[first.Length..];
        while (!block.IsEmpty)
        {
            var part = block[..Math.Min(block.Length, frameLimit)];
            block = block[part.Length..];
            await _writer.WriteFrameLockedAsync(new Http2FrameHeader(part.Length, Http2FrameType.Continuation,
                block.IsEmpty ? Http2FrameFlags.EndHeaders : 0, streamId), part).ConfigureAwait(false);
        }
    }

    // ---- flow control ----

    /// <summary>Takes up to <paramref name="wanted"/> bytes of send credit; 0 when the server abandoned the request body.</summary>
    private async ValueTask<int> ReserveSendWindowAsync(Http2Stream stream, int wanted, CancellationToken cancellationToken)
    {
        while (true)
        {
            Task wait;
            lock (_flowLock)
            {
                if (stream.RequestAbandoned) return 0;
                ThrowIfCannotSend(stream);
                if (_failure is { } failure) throw new IOException(failure.Message, failure);
                long available = Math.Min(Math.Min(stream.SendWindow, _connectionSendWindow), wanted);
                if (available > 0)
                {
                    stream.SendWindow -= available;
                    _connectionSendWindow -= available;
                    return (int)available;
                }
                stream.WindowWaiter ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                if (_connectionSendWindow <= 0 && !_connectionWindowWaiters.Contains(stream)) _connectionWindowWaiters.Add(stream);
                wait = stream.WindowWaiter.Task;
            }
            await wait.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    private void GiveBackConnectionWindow(int bytes)
    {
        lock (_flowLock)
        {
            _connectionSendWindow += bytes;
            WakeConnectionWaitersLocked();
        }
    }

    /// <summary>Wakes a stream's writer so it looks again at its state (reset, abandoned, failed).</summary>
    public void WakeSender(Http2Stream stream)
    {
        lock (_flowLock) WakeLocked(stream);
    }

    private static void WakeLocked(Http2Stream stream)
    {
        stream.WindowWaiter?.TrySetResult();
        stream.WindowWaiter = null;
    }

    private void WakeConnectionWaitersLocked()
    {
        foreach (var waiter in _connectionWindowWaiters) WakeLocked(waiter);
        _connectionWindowWaiters.Clear();
    }

    /// <summary>The application read <paramref name="bytes"/> of a stream's body: the server may send that much more.</summary>
    public void SendStreamCredit(Http2Stream stream, int bytes)
    {
        if (!stream.IsClosed && !stream.ResetSent) _writer.QueueWindowUpdate(stream.Id, bytes);
    }

    // ---- stream lifetime ----

    /// <summary>Resets a stream from this side (cancellation, a stream error) and fails it with <paramref name="failure"/>.</summary>
    public void ResetStream(Http2Stream stream, Http2ErrorCode code, Exception failure)
    {
        if (stream.Id != 0 && !stream.IsClosed && stream.TryMarkResetSent()) _writer.QueueRstStream(stream.Id, code);
        stream.Fail(failure);
    }

    public void OnStreamClosed(Http2Stream stream)
    {
        bool idle;
        lock (_streams)
        {
            _streams.Remove(stream.Id);
            _reservedStreams--;
            idle = !_accepting && _streams.Count == 0;
        }
        lock (_flowLock) _connectionWindowWaiters.Remove(stream);
        // After GOAWAY the connection ends with its last stream.
        if (idle && _failure is null) Abort(new IOException("the HTTP/2 connection was closed after GOAWAY"), sendGoAway: Http2ErrorCode.NoError);
    }

    private void ReleaseReservation()
    {
        lock (_streams) _reservedStreams--;
    }

    private Http2Stream? FindStream(int streamId)
    {
        lock (_streams)
        {
            if (_streams.TryGetValue(streamId, out var stream)) return stream;
            // Frames on a stream we closed are normal (they were in flight); on one never opened, a protocol error.
            if ((streamId & 1) == 0 || streamId >= _nextStreamId)
                throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"frame on stream {streamId}, which this client never opened");
            return null;
        }
    }

    // ---- the reader loop ----

    private async Task ReadLoopAsync()
    {
        Exception failure;
        Http2ErrorCode? goAway = null;
        try
        {
            while (true)
            {
                var next = await _reader.ReadHeaderAsync().ConfigureAwait(false);
                if (next is not { } header)
                {
                    failure = new IOException("the server closed the HTTP/2 connection");
                    break;
                }
                if (header.Length > _options.MaxFrameSize)
                    throw new Http2ConnectionException(Http2ErrorCode.FrameSizeError, $"{header.Type} frame of {header.Length} bytes, above the {_options.MaxFrameSize} advertised");
                if (_headerStreamId != 0 && header.Type != Http2FrameType.Continuation)
                    throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"{header.Type} frame where CONTINUATION of stream {_headerStreamId} was due");
                await DispatchAsync(header).ConfigureAwait(false);
            }
        }
        catch (Http2ConnectionException ex)
        {
            goAway = ex.Code;
            failure = new HttpProtocolException((long)ex.Code, $"HTTP/2 protocol error ({ex.Code}): {ex.Message}", null);
        }
        catch (HpackDecodingException ex)
        {
            goAway = Http2ErrorCode.CompressionError;
            failure = new HttpProtocolException((long)Http2ErrorCode.CompressionError, ex.Message, null);
        }
        catch (Exception ex)
        {
            failure = _failure ?? new IOException("reading from the HTTP/2 connection failed: " + ex.Message, ex);
        }
        Abort(failure, goAway);
        _reader.Dispose();
        if (_payload.Length > 0) ArrayPool<byte>.Shared.Return(_payload);
        if (_headerBlock.Length > 0) ArrayPool<byte>.Shared.Return(_headerBlock);
    }

    private async ValueTask DispatchAsync(Http2FrameHeader header)
    {
        switch (header.Type)
        {
            case Http2FrameType.Data:
                await ReadDataAsync(header).ConfigureAwait(false);
                return;
            case Http2FrameType.Headers:
            case Http2FrameType.Continuation:
                await ReadHeaderBlockAsync(header).ConfigureAwait(false);
                return;
            case Http2FrameType.Priority:
                if (header.StreamId == 0) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "PRIORITY on stream 0");
                await _reader.SkipAsync(header.Length).ConfigureAwait(false);
                return;
            case Http2FrameType.RstStream:
                var reset = await ReadControlPayloadAsync(header, exactLength: 4, onStream: true).ConfigureAwait(false);
                FindStream(header.StreamId)?.OnReset((Http2ErrorCode)BinaryPrimitives.ReadUInt32BigEndian(reset.Span));
                return;
            case Http2FrameType.Settings:
                await ReadSettingsAsync(header).ConfigureAwait(false);
                return;
            case Http2FrameType.PushPromise:
                throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "PUSH_PROMISE although this client disabled push");
            case Http2FrameType.Ping:
                var ping = await ReadControlPayloadAsync(header, exactLength: 8, onStream: false).ConfigureAwait(false);
                if (!header.Has(Http2FrameFlags.Ack)) _writer.QueuePingAck(BinaryPrimitives.ReadUInt64BigEndian(ping.Span));
                return;
            case Http2FrameType.GoAway:
                await ReadGoAwayAsync(header).ConfigureAwait(false);
                return;
            case Http2FrameType.WindowUpdate:
                await ReadWindowUpdateAsync(header).ConfigureAwait(false);
                return;
            default:
                await _reader.SkipAsync(header.Length).ConfigureAwait(false); // unknown frame types are ignored (RFC 9113, section 4.1)
                return;
        }
    }

    private async ValueTask ReadDataAsync(Http2FrameHeader header)
    {
        if (header.StreamId == 0) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "DATA on stream 0");
        _connectionReceiveWindow -= header.Length;
        if (_connectionReceiveWindow < 0) throw new Http2ConnectionException(Http2ErrorCode.FlowControlError, "the server sent more than the connection window");
        int padding = 0, length = header.Length;
        if (header.Has(Http2FrameFlags.Padded))
        {
            var pad = await ReadControlPayloadAsync(header with { Length = 1 }, exactLength: 1, onStream: true).ConfigureAwait(false);
            padding = pad.Span[0];
            length -= 1 + padding;
            if (length < 0) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "DATA frame's padding is longer than its payload");
        }
        var stream = FindStream(header.StreamId);
        _counters.DataReceived(length);
        try
        {
            if (stream is not null && stream.Failure is null)
            {
                stream.ChargeReceiveWindow(header.Length);
                if (length > 0)
                {
                    var array = ArrayPool<byte>.Shared.Rent(length);
                    try
                    {
                        await _reader.ReadExactlyAsync(array.AsMemory(0, length)).ConfigureAwait(false);
                    }
                    catch
                    {
                        ArrayPool<byte>.Shared.Return(array);
                        throw;
                    }
                    stream.OnData(array, length);
                }
                await _reader.SkipAsync(padding).ConfigureAwait(false);
                if (header.Has(Http2FrameFlags.EndStream)) stream.OnEndStream();
                if (header.Length - length > 0) SendStreamCredit(stream, header.Length - length); // padding is never read by anyone
            }
            else
            {
                await _reader.SkipAsync(length + padding).ConfigureAwait(false);
            }
        }
        catch (Http2StreamException ex) when (stream is not null)
        {
            ResetStream(stream, ex.Code, new HttpProtocolException((long)ex.Code, $"HTTP/2 stream {stream.Id}: {ex.Message}", null));
        }
        // Connection credit goes back on receipt: each stream's window bounds what it holds, and one unread
        // stream must not stall the others.
        _connectionUnacked += header.Length;
        if (_connectionUnacked >= _options.ConnectionWindowSize / 4)
        {
            _connectionReceiveWindow += _connectionUnacked;
            _writer.QueueWindowUpdate(0, _connectionUnacked);
            _connectionUnacked = 0;
        }
    }

    private async ValueTask ReadHeaderBlockAsync(Http2FrameHeader header)
    {
        if (header.StreamId == 0) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"{header.Type} on stream 0");
        if (header.Type == Http2FrameType.Continuation && header.StreamId != _headerStreamId)
            throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"CONTINUATION on stream {header.StreamId} with no header block open on it");
        var payload = await ReadControlPayloadAsync(header, exactLength: -1, onStream: true).ConfigureAwait(false);
        var (offset, length) = header.Type == Http2FrameType.Headers ? Http2Frames.Unpad(header, payload.Span) : (0, payload.Length);
        if (header.Type == Http2FrameType.Headers)
        {
            _headerBlockLength = 0;
            _headerStreamId = header.StreamId;
            _headerEndStream = header.Has(Http2FrameFlags.EndStream);
        }
        if (_headerBlockLength + length > MaxHeaderBlockSize)
            throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"header block larger than {MaxHeaderBlockSize} bytes");
        if (_headerBlock.Length < _headerBlockLength + length)
        {
            var grown = ArrayPool<byte>.Shared.Rent(Math.Max(_headerBlockLength + length, 4096));
            _headerBlock.AsSpan(0, _headerBlockLength).CopyTo(grown);
            if (_headerBlock.Length > 0) ArrayPool<byte>.Shared.Return(_headerBlock);
            _headerBlock = grown;
        }
        payload.Span.Slice(offset, length).CopyTo(_headerBlock.AsSpan(_headerBlockLength));
        _headerBlockLength += length;
        if (!header.Has(Http2FrameFlags.EndHeaders)) return;

        int streamId = _headerStreamId;
        _headerStreamId = 0;
        // Decode even for a stream we already closed: the HPACK state is the connection's.
        var headers = new List<KeyValuePair<string, string>>();
        _hpack.Decode(_headerBlock.AsSpan(0, _headerBlockLength), headers);
        var stream = FindStream(streamId);
        if (stream is null) return;
        try
        {
            stream.OnHeaders(headers, _headerEndStream);
        }
        catch (Http2StreamException ex)
        {
            ResetStream(stream, ex.Code, new HttpProtocolException((long)ex.Code, $"HTTP/2 stream {stream.Id}: {ex.Message}", null));
        }
    }

    private async ValueTask ReadSettingsAsync(Http2FrameHeader header)
    {
        if (header.StreamId != 0) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "SETTINGS on a stream");
        if (header.Has(Http2FrameFlags.Ack))
        {
            if (header.Length != 0) throw new Http2ConnectionException(Http2ErrorCode.FrameSizeError, "SETTINGS ack with a payload");
            return;
        }
        if (header.Length % 6 != 0) throw new Http2ConnectionException(Http2ErrorCode.FrameSizeError, $"SETTINGS of {header.Length} bytes, not a multiple of 6");
        var payload = await ReadControlPayloadAsync(header, exactLength: -1, onStream: false).ConfigureAwait(false);
        for (int i = 0; i < payload.Length; i += 6)
        {
            var id = (Http2Setting)BinaryPrimitives.ReadUInt16BigEndian(payload.Span[i..]);
            uint value = BinaryPrimitives.ReadUInt32BigEndian(payload.Span[(i + 2)..]);
            switch (id)
            {
                case Http2Setting.MaxConcurrentStreams:
                    lock (_streams) _peerMaxConcurrentStreams = (int)Math.Min(value, int.MaxValue);
                    break;
                case Http2Setting.InitialWindowSize:
                    if (value > Http2Frames.MaxWindowSize)
                        throw new Http2ConnectionException(Http2ErrorCode.FlowControlError, $"SETTINGS_INITIAL_WINDOW_SIZE {value} is above 2^31-1");
                    ApplyInitialWindow((int)value);
                    break;
                case Http2Setting.MaxFrameSize:
                    if (value is < Http2Frames.DefaultMaxFrameSize or > Http2Frames.MaxAllowedFrameSize)
                        throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"SETTINGS_MAX_FRAME_SIZE {value} is outside 16384..16777215");
                    _peerMaxFrameSize = (int)value;
                    break;
                case Http2Setting.EnablePush:
                    if (value > 1) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"SETTINGS_ENABLE_PUSH {value}");
                    break;
                default:
                    break; // HEADER_TABLE_SIZE (our encoder never indexes), MAX_HEADER_LIST_SIZE, unknown: nothing to do
            }
        }
        _writer.QueueSettingsAck();
        _settingsReceived.TrySetResult();
    }

    private void ApplyInitialWindow(int value)
    {
        lock (_flowLock)
        {
            long delta = value - (long)_peerInitialWindow;
            _peerInitialWindow = value;
            lock (_streams)
            {
                foreach (var stream in _streams.Values)
                {
                    stream.SendWindow += delta;
                    if (stream.SendWindow > Http2Frames.MaxWindowSize)
                        throw new Http2ConnectionException(Http2ErrorCode.FlowControlError, $"stream {stream.Id}'s window above 2^31-1 after SETTINGS");
                    WakeLocked(stream);
                }
            }
        }
    }

    private async ValueTask ReadWindowUpdateAsync(Http2FrameHeader header)
    {
        var payload = await ReadControlPayloadAsync(header, exactLength: 4, onStream: false).ConfigureAwait(false);
        int increment = (int)(BinaryPrimitives.ReadUInt32BigEndian(payload.Span) & 0x7FFF_FFFF);
        if (header.StreamId == 0)
        {
            if (increment == 0) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "WINDOW_UPDATE of 0 on the connection");
            lock (_flowLock)
            {
                _connectionSendWindow += increment;
                if (_connectionSendWindow > Http2Frames.MaxWindowSize)
                    throw new Http2ConnectionException(Http2ErrorCode.FlowControlError, "connection window above 2^31-1");
                WakeConnectionWaitersLocked();
            }
            return;
        }
        var stream = FindStream(header.StreamId);
        if (stream is null) return;
        if (increment == 0)
        {
            ResetStream(stream, Http2ErrorCode.ProtocolError, new HttpProtocolException((long)Http2ErrorCode.ProtocolError,
                $"HTTP/2 stream {stream.Id}: WINDOW_UPDATE of 0", null));
            return;
        }
        lock (_flowLock)
        {
            stream.SendWindow += increment;
            if (stream.SendWindow <= Http2Frames.MaxWindowSize)
            {
                WakeLocked(stream);
                return;
            }
        }
        ResetStream(stream, Http2ErrorCode.FlowControlError, new HttpProtocolException((long)Http2ErrorCode.FlowControlError,
            $"HTTP/2 stream {stream.Id}: window above 2^31-1", null));
    }

    private async ValueTask ReadGoAwayAsync(Http2FrameHeader header)
    {
        if (header.StreamId != 0) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, "GOAWAY on a stream");
        if (header.Length < 8) throw new Http2ConnectionException(Http2ErrorCode.FrameSizeError, $"GOAWAY of {header.Length} bytes");
        var payload = await ReadControlPayloadAsync(header, exactLength: -1, onStream: false).ConfigureAwait(false);
        int lastStreamId = (int)(BinaryPrimitives.ReadUInt32BigEndian(payload.Span) & 0x7FFF_FFFF);
        var code = (Http2ErrorCode)BinaryPrimitives.ReadUInt32BigEndian(payload.Span[4..]);
        string debug = payload.Length > 8 ? System.Text.Encoding.UTF8.GetString(payload.Span[8..]) : "";
        List<Http2Stream> unprocessed;
        bool idle;
        lock (_streams)
        {
            _accepting = false;
            unprocessed = [.. _streams.Values.Where(s => s.Id > lastStreamId)];
            idle = _streams.Count == unprocessed.Count;
        }
        // Streams above the last id were never processed: safe to retry elsewhere, hence "unavailable".
        foreach (var stream in unprocessed)
        {
            stream.Fail(new HttpRequestException(HttpRequestError.ConnectionError,
                $"The server sent GOAWAY ({code}{(debug.Length > 0 ? ", " + debug : "")}) without processing HTTP/2 stream {stream.Id}; it may be retried on a new connection.",
                new IOException("GOAWAY")));
        }
        if (idle) Abort(new IOException($"the server closed the HTTP/2 connection with GOAWAY ({code})"), Http2ErrorCode.NoError);
    }

    /// <summary>Reads a non-DATA payload into a reused buffer (valid until the next frame).</summary>
    private async ValueTask<ReadOnlyMemory<byte>> ReadControlPayloadAsync(Http2FrameHeader header, int exactLength, bool onStream)
    {
        if (exactLength >= 0 && header.Length != exactLength)
            throw new Http2ConnectionException(Http2ErrorCode.FrameSizeError, $"{header.Type} frame of {header.Length} bytes, expected {exactLength}");
        if (onStream && header.StreamId == 0) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"{header.Type} on stream 0");
        if (!onStream && header.StreamId != 0 && header.Type != Http2FrameType.WindowUpdate)
            throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"{header.Type} on stream {header.StreamId}");
        if (_payload.Length < header.Length)
        {
            if (_payload.Length > 0) ArrayPool<byte>.Shared.Return(_payload);
            _payload = ArrayPool<byte>.Shared.Rent(Math.Max(header.Length, 4096));
        }
        var payload = _payload.AsMemory(0, header.Length);
        await _reader.ReadExactlyAsync(payload).ConfigureAwait(false);
        return payload;
    }

    // ---- shutdown ----

    /// <summary>Ends the connection: no new streams, every open stream fails with <paramref name="failure"/>, the socket closes.</summary>
    private void Abort(Exception failure, Http2ErrorCode? sendGoAway = null)
    {
        if (Interlocked.CompareExchange(ref _failure, failure, null) is not null) return;
        _accepting = false;
        _settingsReceived.TrySetException(failure);
        Http2Stream[] open;
        lock (_streams) open = [.. _streams.Values];
        foreach (var stream in open) stream.Fail(failure);
        lock (_flowLock) WakeConnectionWaitersLocked();
        _ = CloseSocketAsync(sendGoAway);
    }

    private async Task CloseSocketAsync(Http2ErrorCode? goAway)
    {
        if (goAway is { } code && _writer.Failure is null)
        {
            int lastStreamId = 0; // this client accepts no server-initiated streams
            _writer.QueueGoAway(lastStreamId, code);
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(1));
            try
            {
                await _writer.FlushControlAsync(timeout.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is OperationCanceledException or IOException)
            {
                // The server is gone or stuck; closing the socket is all that is left.
            }
        }
        try
        {
            _socket.Shutdown(SocketShutdown.Both);
        }
        catch (SocketException)
        {
            // Already reset by the server.
        }
        _socket.Dispose();
        _writer.Dispose();
    }

    public async ValueTask DisposeAsync()
    {
        Abort(new ObjectDisposedException(nameof(LargeFrameHttp2Handler), "the HTTP/2 connection was disposed"), Http2ErrorCode.NoError);
        try
        {
            await _readLoop.ConfigureAwait(false);
        }
        catch (Exception)
        {
            // The loop records its failure in _failure; nothing is left to report at disposal.
        }
    }
}

/// <summary>The connection closed before a request's HEADERS went out: nothing was sent, another connection may take it.</summary>
internal sealed class Http2ConnectionUnavailableException(string message) : HttpRequestException(HttpRequestError.ConnectionError, message);
