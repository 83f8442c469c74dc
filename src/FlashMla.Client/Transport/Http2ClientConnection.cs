using FlashMla.Http2;
using System.Buffers;
using System.Net.Security;
using System.Net.Sockets;

namespace FlashMla.Client.Transport;

/// <summary>
/// The client role of one HTTP/2 connection to one server (h2c with prior knowledge, or TLS with ALPN h2), on the shared
/// engine (<see cref="Http2Connection"/>): the preface and a wait for the server's SETTINGS, stream slots under
/// its MAX_CONCURRENT_STREAMS, requests opened as streams whose bodies go out as DATA, and what the server's
/// GOAWAY or a dead socket does to them.
/// </summary>
internal sealed class Http2ClientConnection : Http2Connection, IAsyncDisposable
{
    private readonly LargeFrameHttp2Options _options;
    private readonly Http2TransportCounters _counters;
    private readonly TaskCompletionSource _settingsReceived = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private Task _readLoop = Task.CompletedTask;
    private int _nextStreamId = 1, _reservedStreams; // under StreamsLock
    private volatile bool _accepting = true;
    private volatile Exception? _failure;
    private readonly CancellationTokenSource _closing = new();
    private readonly Http2ClientKeepAlive _keepAlive;

    private Http2ClientConnection(Socket socket, Stream transport, LargeFrameHttp2Options options, Http2TransportCounters counters) : base(socket, transport, new Http2Settings
    {
        // Table size 0: the server's encoder never indexes, so no response depends on earlier ones.
        HeaderTableSize = 0,
        DisablePush = true,
        StreamWindow = options.StreamWindowSize,
        MaxFrameSize = options.MaxFrameSize,
        ConnectionWindow = options.ConnectionWindowSize,
        MaxHeaderBlockBytes = 1024 * 1024,
    })
    {
        _options = options;
        _counters = counters;
        _keepAlive = new Http2ClientKeepAlive(options);
    }

    /// <summary>False once the connection takes no new streams (GOAWAY, failure, stream ids spent, disposal).</summary>
    public bool IsAccepting => _accepting;

    /// <summary>Streams reserved or open; the handler opens another connection when the server's limit is reached.</summary>
    public int ActiveStreams => Volatile.Read(ref _reservedStreams);

    /// <param name="tls">Null: cleartext (h2c); else the TLS handshake's settings (https).</param>
    public static async Task<Http2ClientConnection> ConnectAsync(string host, int port, ClientTlsCredentials? tls, LargeFrameHttp2Options options,
        Http2TransportCounters counters, CancellationToken cancellationToken)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(options.ConnectTimeout);
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        if (options.SocketBufferSize > 0)
        {
            socket.SendBufferSize = options.SocketBufferSize;
            socket.ReceiveBufferSize = options.SocketBufferSize;
        }
        Http2ClientConnection? connection = null;
        try
        {
            await socket.ConnectAsync(host, port, timeout.Token).ConfigureAwait(false);
            var transport = tls is null ? new NetworkStream(socket, ownsSocket: false) : await HandshakeAsync(socket, host, tls, timeout.Token).ConfigureAwait(false);
            connection = new Http2ClientConnection(socket, transport, options, counters);
            await connection.SendOpeningAsync(Http2Frames.Preface.ToArray(), timeout.Token).ConfigureAwait(false);
            connection._readLoop = Task.Run(connection.ReadLoopAsync, CancellationToken.None);
            await connection._settingsReceived.Task.WaitAsync(timeout.Token).ConfigureAwait(false);
            if (Http2ClientKeepAlive.IsEnabled(options))
            {
                _ = Task.Run(() => connection._keepAlive.RunAsync(connection, failure => connection.Abort(failure), connection._closing.Token),
                    CancellationToken.None);
            }
            counters.ConnectionOpened();
            return connection;
        }
        catch (Exception ex)
        {
            if (connection is not null) await connection.DisposeAsync().ConfigureAwait(false);
            else socket.Dispose();
            if (ex is OperationCanceledException && cancellationToken.IsCancellationRequested) throw;
            string why = ex is OperationCanceledException ? $"no HTTP/2 SETTINGS within {options.ConnectTimeout.TotalSeconds:F0} s"
                : ex is System.Security.Authentication.AuthenticationException ? TlsFailure(ex) : ex.Message;
            throw new HttpRequestException(ex is System.Security.Authentication.AuthenticationException ? HttpRequestError.SecureConnectionError : HttpRequestError.ConnectionError,
                $"HTTP/2 ({(tls is null ? "h2c" : "TLS")}) connection to {host}:{port} failed: {why}", ex is OperationCanceledException ? null : ex);
        }
    }

    /// <summary>What failed in a TLS handshake: SslStream says "see inner exception", OpenSSL's reason is innermost.</summary>
    private static string TlsFailure(Exception ex)
    {
        var reasons = new List<string>();
        for (var e = ex; e is not null; e = e.InnerException)
            if (!e.Message.Contains("see inner exception", StringComparison.Ordinal)) reasons.Add(e.Message);
        return "TLS handshake failed: " + (reasons.Count > 0 ? string.Join(": ", reasons) : ex.Message);
    }

    /// <summary>
    /// The TLS handshake; the server must pick h2 by ALPN (a server that picks nothing may speak HTTP/1.1 only). The
    /// SslStream sits on a <see cref="TlsRecordBatchingStream"/>, so its 16 KiB records leave and arrive in large pieces.
    /// </summary>
    private static async Task<Stream> HandshakeAsync(Socket socket, string host, ClientTlsCredentials tls, CancellationToken cancellationToken)
    {
        var records = new TlsRecordBatchingStream(new NetworkStream(socket, ownsSocket: false));
        var ssl = new SslStream(records, leaveInnerStreamOpen: false);
        try
        {
            await ssl.AuthenticateAsClientAsync(tls.ForHost(host), cancellationToken).ConfigureAwait(false);
            records.StartBatching();
            if (ssl.NegotiatedApplicationProtocol != SslApplicationProtocol.Http2)
                throw new System.Security.Authentication.AuthenticationException(
                    $"the server did not choose h2 by ALPN (application protocol '{ssl.NegotiatedApplicationProtocol}'); gRPC needs HTTP/2");
            return ssl;
        }
        catch
        {
            await ssl.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Reserves a stream slot under the server's MAX_CONCURRENT_STREAMS; false when full or closing.</summary>
    public bool TryReserveStream()
    {
        lock (StreamsLock)
        {
            if (!_accepting || _reservedStreams >= PeerMaxConcurrentStreams) return false;
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
        var stream = new Http2ClientStream(this, request, _options.StreamWindowSize);
        bool registered = false;
        byte[] block = Http2RequestHeaders.Encode(request, out int blockLength);
        try
        {
            await Writer.EnterAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                if (!_accepting || _failure is not null || Writer.Failure is not null)
                    throw new Http2ConnectionUnavailableException("the HTTP/2 connection closed before the request could start");
                lock (StreamsLock)
                {
                    stream.Id = _nextStreamId;
                    _nextStreamId += 2;
                    if (_nextStreamId > int.MaxValue - 2) _accepting = false; // stream ids spent: the next request opens a new connection
                    AddStream(stream);
                }
                registered = true;
                await WriteHeadersLockedAsync(stream.Id, block.AsMemory(0, blockLength), endStream: request.Content is null).ConfigureAwait(false);
            }
            finally
            {
                Writer.Exit();
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

    private async Task SendBodyAsync(Http2ClientStream stream, HttpContent content, CancellationToken cancellationToken)
    {
        try
        {
            await content.CopyToAsync(new Http2RequestStream(this, stream), cancellationToken).ConfigureAwait(false);
            if (!stream.RequestAbandoned)
            {
                if (stream.Failure is not null) throw stream.CannotSend();
                await WriteEndStreamAsync(stream).ConfigureAwait(false);
            }
            stream.MarkRequestEnded();
        }
        catch (Exception) when (stream.RequestAbandoned)
        {
            // The server reset the stream with NO_ERROR after its complete response while the body's end was going out.
            stream.MarkRequestEnded();
        }
        catch (Exception ex)
        {
            // The writer saw this exception already; the response must fail too, and the server must stop waiting.
            ResetStream(stream, Http2ErrorCode.Cancel, ex is OperationCanceledException or IOException
                ? ex : new IOException($"writing the request body of HTTP/2 stream {stream.Id} failed: {ex.Message}", ex));
        }
    }

    /// <summary>Sends <paramref name="data"/>'s pieces as DATA frames (the engine waits for credit); the rest is dropped once the server abandons the body.</summary>
    public async ValueTask SendDataAsync(Http2ClientStream stream, ReadOnlyMemory<ReadOnlyMemory<byte>> data, CancellationToken cancellationToken)
    {
        if (CannotSend(stream)) return;
        try
        {
            await WriteDataAsync(stream, data, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is OperationCanceledException or IOException && !cancellationToken.IsCancellationRequested)
        {
            if (CannotSend(stream)) return;
            if (_failure is { } failure) throw new IOException(failure.Message, failure);
            throw;
        }
    }

    /// <summary>
    /// True when the server abandoned the request body (the write ends quietly); throws when the stream failed or was
    /// reset otherwise; false when it can still send. The reset is read before the abandonment: a peer's reset is
    /// recorded with its code in one step, so a NO_ERROR reset after a complete response seen here is seen as such.
    /// </summary>
    private static bool CannotSend(Http2ClientStream stream)
    {
        bool reset = stream.IsReset;
        if (stream.RequestAbandoned) return true;
        if (stream.Failure is not null || reset) throw stream.CannotSend();
        return false;
    }

    protected override void OnDataReceived(int bytes) => _counters.DataReceived(bytes);

    protected override void OnDataSent(int bytes) => _counters.DataSent(bytes);

    // ---- Stream lifetime ----

    /// <summary>Resets a stream from this side (cancellation, a failed body) and fails it with <paramref name="failure"/>.</summary>
    public void ResetStream(Http2ClientStream stream, Http2ErrorCode code, Exception failure)
    {
        if (stream.Id != 0 && !stream.IsClosed) stream.Reset(code);
        stream.Fail(failure);
    }

    public void OnStreamClosed(Http2ClientStream stream)
    {
        bool idle;
        RemoveStream(stream);
        lock (StreamsLock)
        {
            _reservedStreams--;
            idle = !_accepting && StreamCount == 0;
        }
        // After GOAWAY the connection ends with its last stream.
        if (idle && _failure is null) Abort(new IOException("the HTTP/2 connection was closed after GOAWAY"), Http2ErrorCode.NoError);
    }

    private void ReleaseReservation()
    {
        lock (StreamsLock) _reservedStreams--;
    }

    // ---- The engine's questions ----

    protected override bool IsIdle(int streamId)
    {
        lock (StreamsLock) return (streamId & 1) == 0 || streamId >= _nextStreamId;
    }

    protected override void OnHeaderBlock(int streamId, List<KeyValuePair<string, string>> fields, bool endStream)
    {
        if (FindStream(streamId, Http2FrameType.Headers) is { } stream) DeliverHeaders(stream, fields, endStream);
    }

    protected override void OnPeerSettings() => _settingsReceived.TrySetResult();

    protected override void OnPingAck(ulong opaque) => _keepAlive.OnAck(opaque);

    protected override void OnGoAway(int lastStreamId, Http2ErrorCode code, string debug)
    {
        List<Http2ClientStream> unprocessed;
        bool idle;
        lock (StreamsLock)
        {
            _accepting = false;
            unprocessed = [.. Streams().Cast<Http2ClientStream>().Where(s => s.Id > lastStreamId)];
            idle = StreamCount == unprocessed.Count;
        }
        // Streams above the last id were never processed: safe to retry elsewhere, hence "unavailable".
        foreach (var stream in unprocessed)
        {
            stream.Fail(new HttpRequestException(HttpRequestError.ConnectionError,
                $"The server sent GOAWAY ({code}{(debug.Length > 0 ? ", " + debug : "")}) without processing HTTP/2 stream {stream.Id}; it may be retried on a new connection.",
                new Http2StreamNotProcessedException("GOAWAY")));
        }
        if (idle) Abort(new IOException($"the server closed the HTTP/2 connection with GOAWAY ({code})"), Http2ErrorCode.NoError);
    }

    // ---- The reader loop and shutdown ----

    private async Task ReadLoopAsync()
    {
        Exception failure;
        Http2ErrorCode? goAway = null;
        try
        {
            await ReadFramesAsync().ConfigureAwait(false);
            failure = new IOException("the server closed the HTTP/2 connection");
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
        Reader.Dispose();
    }

    /// <summary>Ends the connection: no new streams, every open stream fails with <paramref name="failure"/>, the socket closes.</summary>
    private void Abort(Exception failure, Http2ErrorCode? sendGoAway = null)
    {
        if (Interlocked.CompareExchange(ref _failure, failure, null) is not null) return;
        _accepting = false;
        _closing.Cancel();
        _settingsReceived.TrySetException(failure);
        foreach (Http2ClientStream stream in Streams()) stream.Fail(failure);
        _ = CloseAsync(failure, sendGoAway);
    }

    private async Task CloseAsync(Exception failure, Http2ErrorCode? goAway)
    {
        if (goAway is { } code) await SendGoAwayAsync(0, code).ConfigureAwait(false); // this client accepts no server-initiated streams
        CloseSocket(failure);
        Writer.Dispose();
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

/// <summary>
/// Inside a stream's failure: the server will never process the stream (it was above the last stream id of the
/// server's GOAWAY, or reset with REFUSED_STREAM), so nothing of the request was seen, and the whole request may be
/// sent again on a new connection.
/// </summary>
internal sealed class Http2StreamNotProcessedException(string message) : IOException(message)
{
    /// <summary>Whether <paramref name="failure"/> or an exception inside it says the stream was never processed.</summary>
    public static bool IsIn(Exception? failure)
    {
        for (; failure is not null; failure = failure.InnerException)
            if (failure is Http2StreamNotProcessedException) return true;
        return false;
    }
}
