using System.Buffers;
using System.Net.Sockets;
using FlashMla.Http2;
using FlashMla.Server.Hosting;
using Grpc.Core;

namespace FlashMla.Server.DataPlane;

/// <summary>
/// The server role of one data-plane connection (HTTP/2 with prior knowledge over cleartext, or over TLS with ALPN h2,
/// as gRPC clients speak it) on the shared engine (<see cref="Http2Connection"/>): a client's HEADERS open a call, which runs on a task of
/// its own; GOAWAY and shutdown stop new calls. DATA payloads go from the socket straight into each call's message
/// buffers, and responses leave from the buffers they were computed into: Kestrel's input path copies each byte
/// three times before the gRPC parser sees it, this one never.
/// </summary>
internal sealed class DataPlaneConnection : Http2Connection
{
    /// <summary>Largest frame this side accepts: 1 MiB, the size the client library sends.</summary>
    public const int MaxFrameSize = 1 << 20;

    /// <summary>Receive window per stream: room for a whole h_q 128, b 128 step (19 MB of q) in flight.</summary>
    public const int StreamWindow = 32 << 20;

    /// <summary>Receive window of the connection.</summary>
    public const int ConnectionWindow = 128 << 20;

    /// <summary>Most streams the option MaxStreamsPerConnection may allow (the reset budget is sized by it).</summary>
    public const int MaxConcurrentStreams = 256;

    private static Http2Settings SettingsFor(int maxConcurrentStreams) => new()
    {
        MaxFrameSize = MaxFrameSize,
        StreamWindow = StreamWindow,
        ConnectionWindow = ConnectionWindow,
        MaxConcurrentStreams = maxConcurrentStreams,
        // A call over the list limit is answered on its stream (OnHeaderListTooLarge); the larger block limit is what
        // lets its block be decoded, keeping HPACK in step, instead of ending the connection. Advertised: what the gRPC
        // port's Kestrel advertises (its decode limit), so that a client that honours the setting (grpc-go) sends an
        // oversized call to either port and gets the same RESOURCE_EXHAUSTED, not a local error on this one alone.
        MaxHeaderBlockBytes = RequestHeaderLimit.MaxBlockBytes,
        MaxHeaderListSize = RequestHeaderLimit.MaxBlockBytes,
        StreamHeaderListLimit = RequestHeaderLimit.MaxListBytes,
    };

    private readonly DataPlaneDispatcher _dispatcher;
    private readonly int _maxMessageBytes, _maxConcurrentStreams;
    private readonly ArrayPool<byte> _pool;
    private readonly List<Task> _running = [];
    private readonly CancellationTokenSource _closing = new();
    private readonly StreamResetBudget _resets = new();
    private readonly TaskCompletionSource _callsDone = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly TaskCompletionSource _closed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly ConnectionTimeouts _timeouts;
    private readonly long _openedAt = Environment.TickCount64;
    private volatile int _lastStreamId;
    private bool _shuttingDown, _peerGoingAway; // under StreamsLock
    private long _idleSince = Environment.TickCount64; // when the last stream closed; under StreamsLock
    private volatile bool _settingsReceived;
    private long _dataBytesReceived; // DATA payload bytes, all streams
    private long _bodyWaitSince, _bodyBytesAtWaitStart; // the listener's timeout watch only
    private int _timedOut;
    private readonly string[] _certificateNames;

    /// <param name="transport">What the frames travel over: a NetworkStream over <paramref name="socket"/>, or an SslStream after its handshake.</param>
    /// <param name="pool">The page-locked pool request messages are received into (its view within the budget of bytes held).</param>
    /// <param name="maxConcurrentStreams">Streams the client may have open (option MaxStreamsPerConnection).</param>
    /// <param name="timeouts">When the connection is closed for what its client does not do.</param>
    /// <param name="ioBuffers">The listener's pool of the frame reader's and writer's buffers.</param>
    public DataPlaneConnection(Socket socket, Stream transport, DataPlaneDispatcher dispatcher, int maxMessageBytes, ArrayPool<byte> pool,
        int maxConcurrentStreams, ConnectionTimeouts timeouts, ConnectionBufferPool ioBuffers)
        : base(socket, transport, SettingsFor(maxConcurrentStreams), ioBuffers)
    {
        _timeouts = timeouts;
        _dispatcher = dispatcher;
        _maxMessageBytes = maxMessageBytes;
        _maxConcurrentStreams = maxConcurrentStreams;
        _pool = pool;
        Peer = socket.RemoteEndPoint?.ToString() ?? "unknown";
        // The client certificate is the connection's for its whole life (verified in the handshake); the token file's
        // mapping of its names is looked up per call, so a reload applies to the next call.
        _certificateNames = dispatcher.CertificateNamesOf((transport as System.Net.Security.SslStream)?.RemoteCertificate);
    }

    public string Peer { get; }

    /// <summary>Calls open now.</summary>
    public int ActiveCalls => StreamCount;

    /// <summary>Serves the connection until the peer closes it or a protocol error ends it.</summary>
    public async Task RunAsync()
    {
        try
        {
            await ReadPrefaceAsync().ConfigureAwait(false);
            await SendOpeningAsync(default, CancellationToken.None).ConfigureAwait(false);
            await ReadFramesAsync().ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is Http2ConnectionException or HpackDecodingException)
        {
            var code = ex is Http2ConnectionException connection ? connection.Code : Http2ErrorCode.CompressionError;
            _dispatcher.Log.LogWarning("Data-plane connection from {Peer} closed with {Code}: {Reason}", Peer, code, ex.Message);
            await SendGoAwayAsync(_lastStreamId, code).ConfigureAwait(false);
            await DrainInputAsync().ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or SocketException or ObjectDisposedException or OperationCanceledException)
        {
            // The peer went away, or the listener aborted the connection.
        }
        finally
        {
            await CloseAsync().ConfigureAwait(false);
            _callsDone.TrySetResult();
            _closed.TrySetResult();
        }
    }

    /// <summary>
    /// Graceful shutdown: GOAWAY (no new calls), and every open call's request stream ends with UNAVAILABLE once
    /// the requests already received are handed out; calls then finish what is in flight and send trailers.
    /// </summary>
    public void BeginShutdown()
    {
        lock (StreamsLock)
        {
            if (_shuttingDown) return;
            _shuttingDown = true;
            Writer.QueueGoAway(_lastStreamId, Http2ErrorCode.NoError);
            if (StreamCount == 0) _callsDone.TrySetResult();
        }
        foreach (DataPlaneCall call in Streams()) call.Requests.Fail(new RpcException(Services.DecodeStreamPump.ShuttingDown));
    }

    /// <summary>How long a drained connection waits for the client to close its side before closing the socket.</summary>
    private static readonly TimeSpan Linger = TimeSpan.FromSeconds(1);

    /// <summary>
    /// <see cref="BeginShutdown"/>, then, once every call has sent its trailers, a graceful close: the last frames
    /// flushed, our side shut (FIN), and the socket closed when the client closes its own or after <see cref="Linger"/>.
    /// Closing at once could reset the connection (unread input makes the kernel answer with RST) and lose the
    /// trailers still on their way.
    /// </summary>
    public async Task DrainAsync()
    {
        BeginShutdown();
        await _callsDone.Task.ConfigureAwait(false);
        try
        {
            using var flush = new CancellationTokenSource(Linger);
            await Writer.FlushControlAsync(flush.Token).ConfigureAwait(false);
            Socket.Shutdown(SocketShutdown.Send);
        }
        catch (Exception ex) when (ex is IOException or OperationCanceledException or ObjectDisposedException or SocketException)
        {
            // Gone already, or not reading: closing is all that is left.
        }
        if (await Task.WhenAny(_closed.Task, Task.Delay(Linger)).ConfigureAwait(false) != _closed.Task) Abort();
        await _closed.Task.ConfigureAwait(false);
    }

    /// <summary>Closes the socket now: open calls are cancelled.</summary>
    public void Abort() => CloseSocket(new IOException("the data-plane connection was closed"));

    // ---- Headers and trailers of responses ----

    /// <summary>The block of every response's headers: the same bytes each time, encoded once.</summary>
    private static readonly byte[] ResponseHeaders = GrpcWireHeaders.ResponseHeadersBlock();

    public ValueTask SendResponseHeadersAsync(Http2Stream stream, CancellationToken cancellationToken) =>
        WriteHeadersAsync(stream, ResponseHeaders, endStream: false, cancellationToken);

    /// <summary>The trailers (with the response headers first when none were sent: a trailers-only response).</summary>
    public async ValueTask SendTrailersAsync(Http2Stream stream, Status status, bool includeHeaders)
    {
        var block = ArrayPool<byte>.Shared.Rent(GrpcWireHeaders.MaxHeaderBlockBytes);
        try
        {
            int length = GrpcWireHeaders.WriteTrailers(block, status.StatusCode, status.Detail, includeHeaders);
            await WriteHeadersAsync(stream, block.AsMemory(0, length), endStream: true, CancellationToken.None).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(block);
        }
    }

    // ---- The engine's questions ----

    protected override bool IsIdle(int streamId) => streamId > _lastStreamId;

    protected override void OnHeaderBlock(int streamId, List<KeyValuePair<string, string>> fields, bool endStream)
    {
        if (streamId % 2 == 0)
            throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"HEADERS on stream {streamId}: client streams are odd");
        if (streamId <= _lastStreamId)
        {
            if (FindStream(streamId, Http2FrameType.Headers) is { } existing) DeliverHeaders(existing, fields, endStream); // the client's trailers
            else Writer.QueueRstStream(streamId, Http2ErrorCode.StreamClosed); // a stream this side already closed
            return;
        }
        _lastStreamId = streamId;

        bool refuse, full;
        lock (StreamsLock)
        {
            full = StreamCount >= _maxConcurrentStreams;
            refuse = _shuttingDown || _peerGoingAway || full;
        }
        if (refuse)
        {
            Writer.QueueRstStream(streamId, Http2ErrorCode.RefusedStream);
            // Reset calls stay open until their tasks see it, so a reset loop that outruns them lands here:
            // a stream refused for the limit costs the reset budget too.
            if (full && !_shuttingDown) SpendResetBudget();
            return;
        }
        GrpcRequestHead head;
        Security.Caller caller;
        try
        {
            head = GrpcWireHeaders.ReadRequest(fields);
            // Before the call exists: a call without a valid token is answered from its headers, its body never read.
            caller = _dispatcher.Authenticate(head, _certificateNames);
            if (!_dispatcher.Serves(head.Path))
                throw new RpcException(new Status(StatusCode.Unimplemented,
                    $"{head.Path} is not served on the data-plane port, which serves {DataPlaneDispatcher.ServiceName} and {DataPlaneDispatcher.AppendKvPath} only; use the gRPC port"));
        }
        catch (RpcException ex)
        {
            _dispatcher.Count(GrpcWireHeaders.PathOf(fields), ex.Status);
            _ = RejectAsync(streamId, ex.Status, endStream, ex is NotGrpcException ? NotGrpcException.HttpStatus : 200);
            return;
        }

        var call = new DataPlaneCall(this, streamId, head, caller, _maxMessageBytes, _pool, _closing.Token, _dispatcher.Log);
        AddStream(call);
        if (endStream) EndInput(call);
        var run = Task.Run(() => RunCallAsync(call));
        lock (_running)
        {
            _running.RemoveAll(static t => t.IsCompleted);
            _running.Add(run);
        }
    }

    protected override void OnHeaderListTooLarge(int streamId, List<KeyValuePair<string, string>> fields, long listSize, bool endStream)
    {
        if (streamId % 2 == 0)
            throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"HEADERS on stream {streamId}: client streams are odd");
        var status = RequestHeaderLimit.Refusal(listSize);
        if (streamId <= _lastStreamId)
        {
            // The client's trailers on a call already running: the call fails as for any stream error.
            if (FindStream(streamId, Http2FrameType.Headers) is { } existing)
                existing.FailWithStreamError(new Http2StreamException(Http2ErrorCode.ProtocolError, status.Detail));
            else Writer.QueueRstStream(streamId, Http2ErrorCode.StreamClosed);
            return;
        }
        _lastStreamId = streamId;
        _dispatcher.Refuse(GrpcWireHeaders.PathOf(fields), status);
        _ = RejectAsync(streamId, status, endStream);
    }

    protected override void OnGoAway(int lastStreamId, Http2ErrorCode code, string debug)
    {
        lock (StreamsLock) _peerGoingAway = true; // the client opens no more streams; the open ones finish
    }

    /// <summary>
    /// The client reset a call this side had not answered yet, or opened one past MAX_CONCURRENT_STREAMS (on the
    /// reader loop). Past the budget the connection ends with GOAWAY(ENHANCE_YOUR_CALM): the throw is a connection
    /// error, which <see cref="RunAsync"/> handles.
    /// </summary>
    public void SpendResetBudget()
    {
        if (!_resets.TrySpend())
            throw new Http2ConnectionException(Http2ErrorCode.EnhanceYourCalm,
                $"the client reset or overran more than {StreamResetBudget.Burst} streams before they were answered, faster than " +
                $"{StreamResetBudget.RefillPerSecond} a second plus one per call it let finish");
    }

    // ---- Timeouts: what the client does not do (ConnectionTimeouts), checked by the listener a few times a second ----

    protected override void OnPeerSettings() => _settingsReceived = true;

    protected override void OnDataReceived(int bytes) => Interlocked.Add(ref _dataBytesReceived, bytes);

    /// <summary>
    /// Closes the connection if its client has been idle (no stream open) past the keep-alive timeout: GOAWAY and a
    /// graceful close; or if it is too slow with what it began: its preface and SETTINGS, a frame other than DATA
    /// (a request's header block), or the request messages it is sending: GOAWAY(ENHANCE_YOUR_CALM) and close.
    /// </summary>
    public void CheckTimeouts(long now)
    {
        if (Volatile.Read(ref _timedOut) != 0) return;
        long idleSince;
        lock (StreamsLock)
        {
            if (_shuttingDown) return;
            idleSince = StreamCount == 0 ? _idleSince : long.MaxValue;
        }
        string? slow = null;
        if (!_settingsReceived)
        {
            if (Past(_openedAt, now, _timeouts.RequestHeaders)) slow = $"no preface and SETTINGS within {_timeouts.RequestHeaders.TotalSeconds:g} s";
        }
        else if (FrameInProgress is { } frame && frame != Http2FrameType.Data && Past(LastFrameReceivedAt, now, _timeouts.RequestHeaders))
        {
            slow = $"a {frame} frame still not whole after {_timeouts.RequestHeaders.TotalSeconds:g} s";
        }
        else if (BodyBelowMinimumRate(now) is { } rate)
        {
            slow = $"request messages arrived at {rate:F0} bytes/s, below the minimum of {_timeouts.MinBodyBytesPerSecond:g}";
        }
        if (slow is not null)
        {
            if (Interlocked.Exchange(ref _timedOut, 1) == 0) _ = TimeOutAsync(slow);
        }
        else if (idleSince != long.MaxValue && Past(idleSince, now, _timeouts.KeepAlive))
        {
            if (Interlocked.Exchange(ref _timedOut, 1) == 0) _ = DrainAsync(); // GOAWAY(NO_ERROR), then the graceful close
        }
    }

    private static bool Past(long since, long now, TimeSpan limit) => limit != Timeout.InfiniteTimeSpan && now - since > limit.TotalMilliseconds;

    /// <summary>
    /// The average rate of DATA since the connection began to owe the server bytes (a DATA frame half read, or a
    /// stream with a message begun and window to send the rest), once that has lasted past the grace period and
    /// only if it is below the minimum; null otherwise. A stream the server holds back (its window spent) owes nothing.
    /// </summary>
    private double? BodyBelowMinimumRate(long now)
    {
        if (_timeouts.MinBodyBytesPerSecond <= 0) return null;
        long bytes = Interlocked.Read(ref _dataBytesReceived);
        if (FrameInProgress != Http2FrameType.Data && !AnyMessageOwed())
        {
            _bodyWaitSince = 0;
            return null;
        }
        if (_bodyWaitSince == 0)
        {
            _bodyWaitSince = now;
            _bodyBytesAtWaitStart = bytes;
            return null;
        }
        double seconds = (now - _bodyWaitSince) / 1000.0;
        if (seconds <= _timeouts.BodyGrace.TotalSeconds) return null;
        double rate = (bytes - _bodyBytesAtWaitStart) / seconds;
        return rate < _timeouts.MinBodyBytesPerSecond ? rate : null;
    }

    private bool AnyMessageOwed()
    {
        foreach (DataPlaneCall call in Streams())
            if (call.Requests.MessageInProgress && call.ReceiveWindow.Available > 0) return true;
        return false;
    }

    private async Task TimeOutAsync(string reason)
    {
        _dispatcher.Log.LogInformation("Data-plane connection from {Peer} closed: {Reason}", Peer, reason);
        await SendGoAwayAsync(_lastStreamId, Http2ErrorCode.EnhanceYourCalm).ConfigureAwait(false);
        Abort();
    }

    // ---- Calls ----

    private async Task ReadPrefaceAsync()
    {
        var preface = new byte[Http2Frames.Preface.Length];
        await Reader.ReadExactlyAsync(preface).ConfigureAwait(false);
        if (!preface.AsSpan().SequenceEqual(Http2Frames.Preface))
            throw new Http2ConnectionException(Http2ErrorCode.ProtocolError,
                "the connection did not start with the HTTP/2 preface (this port speaks HTTP/2 with prior knowledge only)");
    }

    private async Task RunCallAsync(DataPlaneCall call)
    {
        var status = await _dispatcher.ServeAsync(call).ConfigureAwait(false);
        if (await call.Responses.FinishAsync(status).ConfigureAwait(false)) _resets.Earn();
        // The response is complete; a client still sending is told to stop (RFC 9113, section 8.1).
        if (!call.InputEnded) call.Reset(Http2ErrorCode.NoError);
        RemoveStream(call);
        call.Close();
        lock (StreamsLock)
        {
            if (StreamCount > 0) return;
            _idleSince = Environment.TickCount64;
            if (_shuttingDown) _callsDone.TrySetResult();
        }
    }

    /// <summary>
    /// A call refused before it started: trailers-only, on a stream this side never registered, then, while the
    /// client may still be sending its body, RST_STREAM(NO_ERROR): RFC 9113, section 8.1 lets a server answer before
    /// the request is complete and ask the client to stop so, and says a client must not take it as an error of the
    /// response (Kestrel, grpc-go and grpcio servers do the same). Without the reset a client with more body than the
    /// stream's window would wait for credit this side never gives. DATA still in flight is skipped, its connection
    /// credit given back (<see cref="Http2Connection"/>). EarlyRefusalTests pins what clients make of it.
    /// </summary>
    private async Task RejectAsync(int streamId, Status status, bool endStream, int httpStatus = 200)
    {
        var block = ArrayPool<byte>.Shared.Rent(GrpcWireHeaders.MaxHeaderBlockBytes);
        try
        {
            int length = GrpcWireHeaders.WriteTrailers(block, status.StatusCode, status.Detail, includeHeaders: true, httpStatus);
            await Writer.EnterAsync(CancellationToken.None).ConfigureAwait(false);
            try
            {
                await WriteHeadersLockedAsync(streamId, block.AsMemory(0, length), endStream: true).ConfigureAwait(false);
            }
            finally
            {
                Writer.Exit();
            }
            if (!endStream) Writer.QueueRstStream(streamId, Http2ErrorCode.NoError);
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException or OperationCanceledException)
        {
            // The connection ended first: nobody is left to tell.
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(block);
        }
    }

    private async Task CloseAsync()
    {
        _closing.Cancel();
        var calls = Streams();
        Task[] running;
        lock (_running) running = [.. _running];
        foreach (DataPlaneCall call in calls) call.Cancel();
        Abort();
        await Task.WhenAll(running).ConfigureAwait(false);
        Writer.Dispose();
        Reader.Dispose();
        _closing.Dispose();
    }
}
