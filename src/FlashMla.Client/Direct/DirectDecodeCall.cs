using System.Buffers;
using System.Buffers.Binary;
using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using FlashMla.Contracts.V1;
using FlashMla.Contracts.Wire;
using FlashMla.Client.Transport;
using Grpc.Core;

namespace FlashMla.Client.Direct;

/// <summary>
/// One gRPC call to flashmla.v1.Decoder spoken straight over an <see cref="HttpMessageInvoker"/> (the
/// library's <see cref="Transport.LargeFrameHttp2Handler"/>), without Grpc.Net.Client: a request goes out as
/// its gRPC prefix and envelope plus the caller's tensor memory itself (no serialization copy), and each
/// response message is received by the connection's reader loop straight from the frames into one array of the
/// call's pool (<see cref="GrpcResponseReceiver"/>) and parsed in place, its tensors wrapping slices of that array:
/// after the socket, no copy of the response's bytes. Grpc.Net.Client copies a response twice (into its message
/// buffer, then the marshaller into the pool) and a request once. The gRPC semantics (trailers, status, deadline,
/// cancellation) are those of the gRPC over HTTP/2 protocol.
/// </summary>
internal sealed class DirectDecodeCall : IClientStreamWriter<Leased<DecodeRequest>>, IAsyncStreamReader<Leased<DecodeResponse>>, IDisposable
{
    private readonly ArrayPool<byte> _pool;
    private readonly int _maxMessageBytes;
    private readonly CancellationTokenSource _cancellation;
    private readonly DateTime? _deadline;
    private readonly CancellationToken _callerToken;
    private readonly RequestBody _body = new();
    private readonly Task<HttpResponseMessage> _responseTask;
    private readonly SemaphoreSlim _writeLock = new(1, 1);
    private readonly byte[] _prefix = new byte[TensorMessageWriter.GrpcPrefixSize];
    private ReadOnlyMemory<byte>[] _pieces = new ReadOnlyMemory<byte>[4]; // under _writeLock
    private HttpResponseMessage? _response;
    private Stream? _responseStream;
    private Status? _status;
    private Metadata _trailers = [];
    private Leased<DecodeResponse>? _current;
    private bool _completed;

    public DirectDecodeCall(HttpMessageInvoker http, Uri address, string method, ArrayPool<byte> pool, int maxMessageBytes, CallOptions options)
    {
        _pool = pool;
        _maxMessageBytes = maxMessageBytes;
        _deadline = options.Deadline;
        _callerToken = options.CancellationToken;
        _cancellation = CancellationTokenSource.CreateLinkedTokenSource(options.CancellationToken);
        var request = new HttpRequestMessage(HttpMethod.Post, new Uri(address, method))
        {
            Version = HttpVersion.Version20,
            VersionPolicy = HttpVersionPolicy.RequestVersionExact,
            Content = _body,
        };
        request.Headers.TE.Add(new TransferCodingWithQualityHeaderValue("trailers"));
        // The library's handler then receives each response message whole into one array of the pool (no copy after the socket).
        request.Options.Set(GrpcResponseReceiver.OptionKey, new GrpcMessageReceiving(pool, maxMessageBytes));
        if (options.Deadline is { } deadline)
        {
            var left = deadline.ToUniversalTime() - DateTime.UtcNow;
            if (left < TimeSpan.Zero) left = TimeSpan.Zero;
            request.Headers.TryAddWithoutValidation("grpc-timeout", FormatTimeout(left));
            _cancellation.CancelAfter(left);
        }
        _responseTask = http.SendAsync(request, _cancellation.Token);
    }

    // ---- Writing requests ----

    public WriteOptions? WriteOptions { get; set; }

    public Task WriteAsync(Leased<DecodeRequest> message) => WriteAsync(message, CancellationToken.None);

    public Task WriteAsync(Leased<DecodeRequest> message, CancellationToken cancellationToken) => WriteAsync(message, cancellationToken, disposeMessage: true);

    /// <summary>Writes one request; <paramref name="disposeMessage"/> false keeps the message for a retry (the unary call disposes it).</summary>
    internal async Task WriteAsync(Leased<DecodeRequest> message, CancellationToken cancellationToken, bool disposeMessage)
    {
        TensorMessageWriter? wire = null;
        try
        {
            wire = DecodeMarshallers.LayRequest(message.Message);
            long size = wire.Length - TensorMessageWriter.GrpcPrefixSize;
            if (size > _maxMessageBytes)
                throw new RpcException(new Status(StatusCode.ResourceExhausted,
                    $"Sending message exceeds the maximum configured message size ({size} > {_maxMessageBytes} bytes)."));
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _cancellation.Token);
            await _writeLock.WaitAsync(linked.Token).ConfigureAwait(false);
            try
            {
                if (_completed) throw new InvalidOperationException("the request stream is already complete");
                var stream = _body.Stream.IsCompletedSuccessfully ? _body.Stream.Result : await BodyStreamAsync(linked.Token).ConfigureAwait(false);
                if (stream is Http2RequestStream frames)
                {
                    // The whole message as one DATA frame (one send when it fits the writer's scratch buffer): a write per
                    // piece was four frames and four sends per request, and the server's reader woke for each.
                    if (_pieces.Length < wire.PieceCount) _pieces = new ReadOnlyMemory<byte>[wire.PieceCount];
                    wire.Pieces.CopyTo(_pieces);
                    try
                    {
                        await frames.WritePiecesAsync(_pieces.AsMemory(0, wire.PieceCount), linked.Token).ConfigureAwait(false);
                    }
                    finally
                    {
                        _pieces.AsSpan().Clear(); // hold no reference to the caller's memory past the write
                    }
                }
                else
                {
                    for (int i = 0; i < wire.PieceCount; i++) await stream.WriteAsync(wire.Pieces[i], linked.Token).ConfigureAwait(false);
                }
            }
            finally
            {
                _writeLock.Release();
            }
        }
        catch (Exception ex) when (ex is not RpcException)
        {
            throw Failure(ex);
        }
        finally
        {
            wire?.Dispose();
            if (disposeMessage) message.Dispose();
        }
    }

    /// <summary>
    /// The request body's stream, which the handler hands over once the HEADERS are out. A connection that never
    /// opens (nothing listening, no SETTINGS within the connect timeout) or dies first never asks for the body: it
    /// fails the response instead, and that failure is the write's.
    /// </summary>
    private async Task<Stream> BodyStreamAsync(CancellationToken cancellationToken)
    {
        await Task.WhenAny(_body.Stream, _responseTask).WaitAsync(cancellationToken).ConfigureAwait(false);
        if (_body.Stream.IsCompleted) return await _body.Stream.ConfigureAwait(false);
        await _responseTask.ConfigureAwait(false); // throws the connection's failure
        throw new IOException("the server answered before the request body was asked for"); // Failure reads its status
    }

    public async Task CompleteAsync()
    {
        await _writeLock.WaitAsync().ConfigureAwait(false);
        try
        {
            _completed = true;
            _body.Complete();
        }
        finally
        {
            _writeLock.Release();
        }
    }

    // ---- Reading responses ----

    public Leased<DecodeResponse> Current => _current ?? throw new InvalidOperationException("no current response");

    public async Task<bool> MoveNext(CancellationToken cancellationToken)
    {
        if (_status is not null) return Ended();
        try
        {
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _cancellation.Token);
            var stream = await ResponseStreamAsync(linked.Token).ConfigureAwait(false);
            if (stream is null) return Ended();
            if (stream is Http2ResponseStream { ReceivesMessages: true } messages) return await NextWholeMessageAsync(messages, linked.Token).ConfigureAwait(false);
            if (!await ReadFullyAsync(stream, _prefix, allowEnd: true, linked.Token).ConfigureAwait(false))
            {
                _status = ReadStatus(_response!.TrailingHeaders, trailersOnly: false);
                return Ended();
            }
            if (_prefix[0] != 0) throw new RpcException(new Status(StatusCode.Internal, "the server sent a compressed message, which this client did not ask for"));
            uint length = BinaryPrimitives.ReadUInt32BigEndian(_prefix.AsSpan(1));
            if (length > (uint)_maxMessageBytes)
                throw new RpcException(new Status(StatusCode.ResourceExhausted,
                    $"Received message exceeds the maximum configured message size ({length} > {_maxMessageBytes} bytes)."));
            var array = _pool.Rent(Math.Max(1, (int)length));
            try
            {
                await ReadFullyAsync(stream, array.AsMemory(0, (int)length), allowEnd: false, linked.Token).ConfigureAwait(false);
                var message = DecodeMarshallers.ParseResponseInPlace(array.AsMemory(0, (int)length));
                _current = new Leased<DecodeResponse>(message, new PooledArray(_pool, array));
                return true;
            }
            catch
            {
                _pool.Return(array);
                throw;
            }
        }
        catch (Exception ex) when (ex is not RpcException)
        {
            throw Failure(ex);
        }
    }

    /// <summary>The next message as the reader loop received it, whole in one array of the pool: parsed in place, the array now the response's.</summary>
    private async Task<bool> NextWholeMessageAsync(Http2ResponseStream stream, CancellationToken cancellationToken)
    {
        if (await stream.ReadMessageAsync(cancellationToken).ConfigureAwait(false) is not { } received)
        {
            _status = ReadStatus(_response!.TrailingHeaders, trailersOnly: false);
            return Ended();
        }
        try
        {
            var message = DecodeMarshallers.ParseResponseInPlace(received.Array.AsMemory(0, received.Length));
            _current = new Leased<DecodeResponse>(message, new PooledArray(_pool, received.Array));
            return true;
        }
        catch
        {
            _pool.Return(received.Array);
            throw;
        }
    }

    private bool Ended()
    {
        var status = _status!.Value;
        if (status.StatusCode == StatusCode.OK) return false;
        throw new RpcException(status, _trailers);
    }

    /// <summary>The response body once the headers are in; null when the response was trailers-only (status set).</summary>
    private async ValueTask<Stream?> ResponseStreamAsync(CancellationToken cancellationToken)
    {
        if (_responseStream is not null) return _responseStream;
        var response = await _responseTask.WaitAsync(cancellationToken).ConfigureAwait(false);
        _response = response;
        if (response.StatusCode != HttpStatusCode.OK)
        {
            _status = new Status(HttpStatusToGrpc(response.StatusCode), $"the server answered HTTP {(int)response.StatusCode}");
            return null;
        }
        if (response.Headers.Contains("grpc-status"))
        {
            _status = ReadStatus(response.Headers, trailersOnly: true);
            return null;
        }
        _responseStream = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
        return _responseStream;
    }

    private static async ValueTask<bool> ReadFullyAsync(Stream stream, Memory<byte> destination, bool allowEnd, CancellationToken cancellationToken)
    {
        int filled = 0;
        while (filled < destination.Length)
        {
            int n = await stream.ReadAsync(destination[filled..], cancellationToken).ConfigureAwait(false);
            if (n == 0)
            {
                if (filled == 0 && allowEnd) return false;
                throw new RpcException(new Status(StatusCode.Internal, "the response ended inside a message"));
            }
            filled += n;
        }
        return true;
    }

    private Status ReadStatus(HttpHeaders headers, bool trailersOnly)
    {
        var trailers = new Metadata();
        foreach (var (name, values) in headers)
            if (name.StartsWith("grpc-", StringComparison.Ordinal) || !trailersOnly)
                foreach (var value in values) trailers.Add(name, value);
        _trailers = trailers;
        string? code = headers.TryGetValues("grpc-status", out var codes) ? codes.FirstOrDefault() : null;
        string message = headers.TryGetValues("grpc-message", out var messages) ? Uri.UnescapeDataString(messages.FirstOrDefault() ?? "") : "";
        if (code is null || !int.TryParse(code, NumberStyles.None, CultureInfo.InvariantCulture, out int number))
            return new Status(StatusCode.Internal, "the response ended without a grpc-status");
        return new Status((StatusCode)number, message);
    }

    private RpcException Failure(Exception ex)
    {
        // Our own timer cancels at the deadline (it may fire a little early); the caller's token is the caller's.
        if (_deadline is { } deadline && (DateTime.UtcNow >= deadline.ToUniversalTime() ||
                (_cancellation.IsCancellationRequested && !_callerToken.IsCancellationRequested)))
            return new RpcException(new Status(StatusCode.DeadlineExceeded, "the call's deadline passed"));
        if (_cancellation.IsCancellationRequested || ex is OperationCanceledException)
            return new RpcException(new Status(StatusCode.Cancelled, "the call was cancelled", ex));
        // The server may have ended the call with a status while a write was still going (it refused a message).
        if (_response is null && _responseTask.IsCompletedSuccessfully) _response = _responseTask.Result;
        if (_response is { } response && response.Headers.Contains("grpc-status"))
        {
            var status = ReadStatus(response.Headers, trailersOnly: true);
            if (status.StatusCode != StatusCode.OK) return new RpcException(status, _trailers);
        }
        return new RpcException(new Status(StatusCode.Unavailable, "the decode call failed: " + ex.Message, ex));
    }

    /// <summary>
    /// The call failed because the server never processed its stream (GOAWAY above it, or REFUSED_STREAM) and the
    /// response had not started: the same request may go again as a new call.
    /// </summary>
    public bool WasNotProcessed(RpcException failure) =>
        _responseStream is null && failure.StatusCode == StatusCode.Unavailable && Http2StreamNotProcessedException.IsIn(failure.Status.DebugException);

    public Status GetStatus() => _status ?? throw new InvalidOperationException("the call has not ended");

    public Metadata GetTrailers() => _trailers;

    public async Task<Metadata> ResponseHeadersAsync()
    {
        var response = await _responseTask.ConfigureAwait(false);
        var headers = new Metadata();
        foreach (var (name, values) in response.Headers)
            foreach (var value in values) headers.Add(name, value);
        return headers;
    }

    public void Dispose()
    {
        _body.Complete();
        _cancellation.Cancel();
        _responseStream?.Dispose();
        _response?.Dispose();
        _cancellation.Dispose();
    }

    /// <summary>A grpc-timeout value: at most 8 digits, in the finest unit that fits.</summary>
    internal static string FormatTimeout(TimeSpan timeout)
    {
        long ticks = Math.Max(0, timeout.Ticks);
        (long Ticks, char Unit)[] units = [(TimeSpan.TicksPerMicrosecond, 'u'), (TimeSpan.TicksPerMillisecond, 'm'),
            (TimeSpan.TicksPerSecond, 'S'), (TimeSpan.TicksPerMinute, 'M'), (TimeSpan.TicksPerHour, 'H')];
        foreach (var (perUnit, unit) in units)
        {
            long amount = (ticks + perUnit - 1) / perUnit;
            if (amount < 100_000_000) return amount.ToString(CultureInfo.InvariantCulture) + unit;
        }
        return "99999999H";
    }

    private static StatusCode HttpStatusToGrpc(HttpStatusCode code) => code switch
    {
        HttpStatusCode.BadRequest => StatusCode.Internal,
        HttpStatusCode.Unauthorized => StatusCode.Unauthenticated,
        HttpStatusCode.Forbidden => StatusCode.PermissionDenied,
        HttpStatusCode.NotFound => StatusCode.Unimplemented,
        HttpStatusCode.TooManyRequests or HttpStatusCode.BadGateway or HttpStatusCode.ServiceUnavailable or HttpStatusCode.GatewayTimeout =>
            StatusCode.Unavailable,
        _ => StatusCode.Unknown,
    };

    /// <summary>The request body: hands the handler's stream to the writer, and ends when the writer completes.</summary>
    private sealed class RequestBody : HttpContent
    {
        private readonly TaskCompletionSource<Stream> _stream = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly TaskCompletionSource _done = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public RequestBody() => Headers.ContentType = new MediaTypeHeaderValue("application/grpc");

        public Task<Stream> Stream => _stream.Task;

        public void Complete() => _done.TrySetResult();

        protected override async Task SerializeToStreamAsync(Stream stream, TransportContext? context)
        {
            _stream.TrySetResult(stream);
            await _done.Task.ConfigureAwait(false);
        }

        protected override Task SerializeToStreamAsync(Stream stream, TransportContext? context, CancellationToken cancellationToken) =>
            SerializeToStreamAsync(stream, context);

        protected override bool TryComputeLength(out long length)
        {
            length = 0;
            return false;
        }
    }
}
