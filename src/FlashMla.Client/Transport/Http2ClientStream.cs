using FlashMla.Http2;
using System.Buffers;
using System.Net;

namespace FlashMla.Client.Transport;

/// <summary>
/// One request/response exchange on a client connection. The engine's reader loop delivers headers, DATA and
/// resets; the application reads the response body through <see cref="Http2ResponseStream"/> and writes the
/// request body through <see cref="Http2RequestStream"/>. Received DATA payloads sit in pooled arrays until
/// read; stream credit (WINDOW_UPDATE) goes back as the application reads, so a stream never holds more than
/// its window.
/// </summary>
internal sealed class Http2ClientStream : Http2Stream
{
    private readonly Http2ClientConnection _connection;
    private readonly HttpRequestMessage _request;
    private readonly TaskCompletionSource<HttpResponseMessage> _responseReady = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly ReceivedDataQueue _received = new();
    private readonly GrpcResponseReceiver? _messages; // null: the body is read as bytes (Grpc.Net.Client's calls)
    private readonly ReadOnlyMemory<byte>[] _onePiece = new ReadOnlyMemory<byte>[1];
    private HttpResponseMessage? _response;
    private CancellationTokenRegistration _cancellation;
    private ReceivedData _current;
    private int _closed;
    private volatile bool _requestEnded, _responseEnded, _requestAbandoned;
    private volatile Exception? _failure;

    // Credit goes back in eighths of the window: few WINDOW_UPDATEs, and the server never runs dry.
    public Http2ClientStream(Http2ClientConnection connection, HttpRequestMessage request, int receiveWindow)
        : base(connection, receiveWindow, Math.Max(receiveWindow / 8, 1))
    {
        _connection = connection;
        _request = request;
        if (request.Options.TryGetValue(GrpcResponseReceiver.OptionKey, out var receiving)) _messages = new GrpcResponseReceiver(this, _received, receiving);
    }

    /// <summary>Whether the response body arrives as whole gRPC messages (<see cref="ReadMessageAsync"/>) rather than bytes.</summary>
    public bool ReceivesMessages => _messages is not null;

    public Task<HttpResponseMessage> ResponseReady => _responseReady.Task;

    /// <summary>
    /// The server wants no more request body: it ended the response and then reset with NO_ERROR. True from the moment
    /// the reset is recorded (<see cref="Http2Stream.PeerResetCode"/>), before <see cref="OnReset"/> runs: a writer on
    /// another thread that finds the stream reset must also find it abandoned, not failed (EarlyRefusalTests saw one
    /// fail in between).
    /// </summary>
    public bool RequestAbandoned => _requestAbandoned || (_responseEnded && PeerResetCode == Http2ErrorCode.NoError);

    public Exception? Failure => _failure;

    public bool IsClosed => Volatile.Read(ref _closed) != 0;

    /// <summary>One write's memory as the engine takes it (writes on a stream are one at a time).</summary>
    public ReadOnlyMemory<ReadOnlyMemory<byte>> AsPieces(ReadOnlyMemory<byte> data)
    {
        _onePiece[0] = data;
        return _onePiece;
    }

    public void RegisterCancellation(CancellationToken cancellationToken)
    {
        if (cancellationToken.CanBeCanceled)
            _cancellation = cancellationToken.UnsafeRegister(static (state, token) => ((Http2ClientStream)state!).Cancel(token), this);
        if (IsClosed) _cancellation.Unregister();
    }

    // ---- From the reader loop ----

    /// <summary>A decoded header block: the response headers, an informational response, or the trailers.</summary>
    protected internal override void OnHeaders(List<KeyValuePair<string, string>> headers, bool endStream)
    {
        if (_failure is not null) return;
        if (_response is null)
        {
            int status = ParseStatus(headers);
            if (status is >= 100 and < 200)
            {
                if (status == 101 || endStream) throw new Http2StreamException(Http2ErrorCode.ProtocolError, $"informational response {status} is not allowed here");
                return; // 1xx: wait for the real response
            }
            var response = new HttpResponseMessage((HttpStatusCode)status)
            {
                Version = HttpVersion.Version20,
                RequestMessage = _request,
                Content = new Http2ResponseContent(this),
            };
            foreach (var (name, value) in headers)
            {
                if (name.StartsWith(':')) continue;
                if (!response.Headers.TryAddWithoutValidation(name, value)) response.Content.Headers.TryAddWithoutValidation(name, value);
            }
            _response = response;
            _responseReady.TrySetResult(response);
            return;
        }
        if (!endStream) throw new Http2StreamException(Http2ErrorCode.ProtocolError, "a second HEADERS frame without END_STREAM (trailers must end the stream)");
        foreach (var (name, value) in headers)
        {
            if (name.StartsWith(':')) throw new Http2StreamException(Http2ErrorCode.ProtocolError, $"pseudo-header {name} in trailers");
            _response.TrailingHeaders.TryAddWithoutValidation(name, value);
        }
    }

    /// <summary>
    /// A DATA payload goes into a pooled array, queued until the application reads it; for a gRPC call that asked for
    /// whole messages, straight into the array of the message it belongs to (<see cref="GrpcResponseReceiver"/>).
    /// </summary>
    protected internal override async ValueTask OnDataAsync(Http2FrameReader reader, int length)
    {
        if (_response is null) throw new Http2StreamException(Http2ErrorCode.ProtocolError, "DATA before the response headers");
        if (_failure is not null || length == 0)
        {
            await reader.SkipAsync(length).ConfigureAwait(false);
            return;
        }
        if (_messages is not null)
        {
            if (await _messages.ReceiveAsync(reader, length).ConfigureAwait(false)) _connection.WakeAfterFrame(this);
            return;
        }
        var array = ArrayPool<byte>.Shared.Rent(length);
        try
        {
            await reader.ReadExactlyAsync(array.AsMemory(0, length)).ConfigureAwait(false);
        }
        catch
        {
            ArrayPool<byte>.Shared.Return(array);
            throw;
        }
        if (!_received.TryAdd(new ReceivedData(array, 0, length), out bool wakeOwed)) ArrayPool<byte>.Shared.Return(array);
        if (wakeOwed) _connection.WakeAfterFrame(this);
    }

    /// <summary>After the frame, on the thread the reader loop handed off: the body's reader resumes here (no thread-pool hop).</summary>
    protected internal override void OnReaderWake() => _received.Wake();

    protected internal override void OnEndStream()
    {
        if (_response is null) throw new Http2StreamException(Http2ErrorCode.ProtocolError, "END_STREAM before the response headers");
        _responseEnded = true;
        if (_messages?.EndOfBody() is { } cutShort)
        {
            Fail(cutShort);
            return;
        }
        if (_received.TryComplete(null)) _connection.WakeAfterFrame(this);
        TryClose();
    }

    /// <summary>
    /// The reader loop found the response unusable (a message over the limit, say): the stream is reset, so the server
    /// stops sending, and the call's reads throw <paramref name="failure"/> once the messages already whole are read.
    /// </summary>
    internal void FailFromReaderLoop(Exception failure) => _connection.ResetStream(this, Http2ErrorCode.Cancel, failure);

    protected internal override void OnReset(Http2ErrorCode code, string? localReason)
    {
        if (localReason is not null)
        {
            Fail(new HttpProtocolException((long)code, $"HTTP/2 stream {Id}: {localReason}", null));
            return;
        }
        if (code == Http2ErrorCode.NoError && _responseEnded)
        {
            // The response is complete and the server does not want the rest of the request (RFC 9113, section 8.1).
            _requestAbandoned = true;
            TryClose();
            return;
        }
        Fail(new HttpProtocolException((long)code, $"The server reset HTTP/2 stream {Id} with {code}.",
            code == Http2ErrorCode.RefusedStream ? new Http2StreamNotProcessedException($"HTTP/2 stream {Id} was refused before it was processed") : null));
    }

    // ---- From the application ----

    public async ValueTask<int> ReadAsync(Memory<byte> destination, CancellationToken cancellationToken)
    {
        if (_messages is not null) throw new InvalidOperationException("this response arrives as whole gRPC messages: read it with ReadMessageAsync");
        if (destination.IsEmpty) return 0;
        if (_current.Length == 0)
        {
            ReceivedData next;
            while (!_received.TryTake(out next))
            {
                if (!await _received.WaitAsync(cancellationToken).ConfigureAwait(false)) return 0;
            }
            _current = next;
        }
        int n = Math.Min(_current.Length, destination.Length);
        _current.Array.AsSpan(_current.Offset, n).CopyTo(destination.Span);
        _current = _current with { Offset = _current.Offset + n, Length = _current.Length - n };
        if (_current.Length == 0)
        {
            ArrayPool<byte>.Shared.Return(_current.Array);
            _current = default;
        }
        Release(n);
        return n;
    }

    /// <summary>
    /// The next whole gRPC message of the response (only when <see cref="ReceivesMessages"/>): its bytes lie at the
    /// start of an array of the call's pool, which the caller now owns and gives back; null once the body has ended.
    /// Throws the stream's failure (a cut-short message, a reset, a cancellation) after the messages that came whole.
    /// </summary>
    public async ValueTask<ReceivedData?> ReadMessageAsync(CancellationToken cancellationToken)
    {
        if (_messages is null) throw new InvalidOperationException("this response arrives as bytes: read it with ReadAsync");
        ReceivedData next;
        while (!_received.TryTake(out next))
        {
            if (!await _received.WaitAsync(cancellationToken).ConfigureAwait(false)) return null;
        }
        _messages.OnMessageTaken();
        return next;
    }

    /// <summary>The application is done with the response body: cancel what is still open and drop unread data.</summary>
    public void OnResponseDisposed()
    {
        if (!IsClosed)
        {
            _connection.ResetStream(this, Http2ErrorCode.Cancel,
                new OperationCanceledException($"HTTP/2 stream {Id} was cancelled: its response was disposed before the exchange ended"));
        }
        _messages?.Close();
        var pool = _messages?.Pool ?? ArrayPool<byte>.Shared;
        if (_current.Array is { } array)
        {
            pool.Return(array);
            _current = default;
        }
        while (_received.TryTake(out var unread)) pool.Return(unread.Array);
    }

    public void MarkRequestEnded()
    {
        _requestEnded = true;
        TryClose();
    }

    // ---- Either side ----

    /// <summary>Ends the stream with <paramref name="failure"/>: pending and future reads and writes throw it.</summary>
    public void Fail(Exception failure)
    {
        if (Interlocked.CompareExchange(ref _failure, failure, null) is not null) return;
        _messages?.Close(); // a message half received goes back to its pool; whole ones stay readable
        _responseReady.TrySetException(failure);
        // Failures come from anywhere (a reset frame, a cancellation, the connection's end): the reader wakes on the pool.
        if (_received.TryComplete(failure)) _received.WakeLater();
        TryClose();
    }

    /// <summary>The exception a write on this stream throws once it cannot send (failed, reset or closed).</summary>
    public Exception CannotSend() => _failure is { } failure
        ? failure is OperationCanceledException ? new OperationCanceledException(failure.Message, failure) : new IOException(failure.Message, failure)
        : new IOException($"HTTP/2 stream {Id} was reset");

    private void Cancel(CancellationToken token)
    {
        if (IsClosed) return;
        _connection.ResetStream(this, Http2ErrorCode.Cancel, new TaskCanceledException($"HTTP/2 stream {Id} was cancelled.", null, token));
    }

    private void TryClose()
    {
        bool done = _failure is not null || (_responseEnded && (_requestEnded || _requestAbandoned));
        if (!done) return;
        // Whatever is left of the request body is not sent: a writer waiting for credit wakes and stops.
        Connection.SendWindows.RemoveStream(Id);
        if (Interlocked.Exchange(ref _closed, 1) != 0) return;
        _cancellation.Unregister(); // not Dispose: this may run inside the cancellation callback itself
        _connection.OnStreamClosed(this);
    }

    private static int ParseStatus(List<KeyValuePair<string, string>> headers)
    {
        foreach (var (name, value) in headers)
        {
            if (name == ":status")
            {
                if (value.Length == 3 && int.TryParse(value, out int status) && status >= 100) return status;
                throw new Http2StreamException(Http2ErrorCode.ProtocolError, $"malformed :status '{value}'");
            }
        }
        throw new Http2StreamException(Http2ErrorCode.ProtocolError, "response headers without :status");
    }
}
