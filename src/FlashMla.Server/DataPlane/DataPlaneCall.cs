using System.Buffers.Binary;
using System.Threading.Channels;
using FlashMla.Contracts.V1;
using FlashMla.Contracts.Wire;
using FlashMla.Core.Memory;
using FlashMla.Http2;
using Google.Protobuf;
using Grpc.Core;

namespace FlashMla.Server.DataPlane;

/// <summary>
/// One HTTP/2 stream of the data-plane listener: one gRPC call to flashmla.v1.Decoder. The connection's reader
/// loop feeds it DATA payloads, which it receives straight into a pooled, page-locked array per gRPC message
/// (the kernel's copy from the socket is the only one); each whole message is parsed in place into a
/// request whose tensors wrap that array. To the Decoder service it is an ordinary request stream and
/// response stream, so <see cref="Services.DecoderService"/> serves both doors with the same code; a
/// response is sent from the very buffers its tensors wrap, then released.
/// <para>
/// Receive flow control: the stream's window is given back as bytes arrive while fewer than
/// <see cref="MaxQueuedMessages"/> whole messages wait for the service; past that, credit is held until the
/// service takes one. So a stream's memory is bounded by its window plus those messages.
/// </para>
/// </summary>
internal sealed class DataPlaneCall : IAsyncStreamReader<Leased<DecodeRequest>>, IServerStreamWriter<Leased<DecodeResponse>>
{
    /// <summary>Whole messages the service has not taken yet before the stream's window stops being given back.</summary>
    public const int MaxQueuedMessages = 2;

    /// <summary>Credit given back in pieces of at least this much (or at a message's end).</summary>
    private const int CreditBatchBytes = 256 * 1024;

    private readonly DataPlaneConnection _connection;
    private readonly int _maxMessageBytes;
    private readonly string? _encoding;
    private readonly Channel<Leased<DecodeRequest>> _requests = Channel.CreateUnbounded<Leased<DecodeRequest>>(
        new UnboundedChannelOptions { SingleReader = true, SingleWriter = false });
    private readonly CancellationTokenSource _cancellation;
    private readonly CancellationTokenSource? _deadline;
    private readonly CancellationToken _token; // kept: stray writers may still ask for it after Close disposed the source
    private readonly SemaphoreSlim _sendLock = new(1, 1);
    private readonly object _gate = new();
    private readonly byte[] _prefix = new byte[TensorMessageWriter.GrpcPrefixSize];
    private readonly List<ReadOnlyMemory<byte>> _frameParts = new(4);
    private int _prefixFilled;
    private byte[]? _body;
    private int _bodyLength, _bodyFilled;
    private bool _bodyCompressed;
    private long _receiveWindow;
    private int _queued, _uncredited, _held;
    private volatile bool _discarding, _inputEnded, _inputEndedByPeer, _reset, _closed;
    private bool _receiving, _headersSent, _finished, _messagePartlySent;
    private Leased<DecodeRequest>? _current;

    public DataPlaneCall(DataPlaneConnection connection, int streamId, string method, TimeSpan? timeout, string? encoding, int maxMessageBytes,
        int receiveWindow, CancellationToken connectionClosing)
    {
        _encoding = encoding;
        _connection = connection;
        StreamId = streamId;
        Method = method;
        _maxMessageBytes = maxMessageBytes;
        _receiveWindow = receiveWindow;
        if (timeout is { } t && t < TimeSpan.FromDays(1))
        {
            // A source of its own, so that its firing (a little early, as timers may) is known to be the deadline.
            Deadline = DateTime.UtcNow + t;
            _deadline = new CancellationTokenSource(t);
            _cancellation = CancellationTokenSource.CreateLinkedTokenSource(connectionClosing, _deadline.Token);
        }
        else
        {
            _cancellation = CancellationTokenSource.CreateLinkedTokenSource(connectionClosing);
        }
        _token = _cancellation.Token;
    }

    public int StreamId { get; }
    public string Method { get; }
    public DateTime Deadline { get; } = DateTime.MaxValue;
    public CancellationToken CancellationToken => _token;

    /// <summary>True once the call's grpc-timeout has run out.</summary>
    public bool DeadlineExpired => _deadline?.IsCancellationRequested == true;

    /// <summary>True once the client sent END_STREAM.</summary>
    public bool InputEndedByPeer => _inputEndedByPeer;

    /// <summary>True once the stream was reset, by the client or by this side: no frame may follow on it (RFC 9113, section 5.1).</summary>
    public bool IsReset => _reset;

    // ---- Receiving: the connection's reader loop, one frame at a time ----

    /// <summary>Counts a DATA frame against the stream's receive window; false when the client overran it.</summary>
    public bool TryTakeReceiveWindow(int length)
    {
        lock (_gate)
        {
            _receiveWindow -= length;
            return _receiveWindow >= 0;
        }
    }

    /// <summary>Takes the next <paramref name="count"/> bytes of a DATA payload from <paramref name="reader"/>.</summary>
    public async ValueTask ReceiveAsync(Http2FrameReader reader, int count)
    {
        lock (_gate) _receiving = true;
        try
        {
            while (count > 0)
            {
                if (_discarding || _inputEnded || _closed)
                {
                    ReturnBody();
                    await reader.SkipAsync(count).ConfigureAwait(false);
                    Credit(count, messageEnded: false);
                    return;
                }
                int n;
                if (_body is null)
                {
                    n = Math.Min(_prefix.Length - _prefixFilled, count);
                    await reader.ReadExactlyAsync(_prefix.AsMemory(_prefixFilled, n)).ConfigureAwait(false);
                    _prefixFilled += n;
                    if (_prefixFilled == _prefix.Length) StartMessage();
                }
                else
                {
                    n = Math.Min(_bodyLength - _bodyFilled, count);
                    await reader.ReadExactlyAsync(_body.AsMemory(_bodyFilled, n)).ConfigureAwait(false);
                    _bodyFilled += n;
                }
                count -= n;
                bool ended = _body is not null && _bodyFilled == _bodyLength;
                if (ended) FinishMessage();
                Credit(n, ended);
            }
        }
        finally
        {
            lock (_gate)
            {
                _receiving = false;
                if (_closed) ReturnBody();
            }
        }
    }

    /// <summary>Padding and pad-length bytes of a DATA frame: window to give back, nothing to read.</summary>
    public void CreditOverhead(int bytes)
    {
        if (bytes > 0) Credit(bytes, messageEnded: true);
    }

    /// <summary>The client sent END_STREAM: no more requests.</summary>
    public void EndInputByPeer()
    {
        _inputEndedByPeer = true;
        if (_inputEnded) return;
        if (!_discarding && (_prefixFilled > 0 || _body is not null))
        {
            FailInput(new RpcException(new Status(StatusCode.Internal, "the request stream ended inside a message")));
            return;
        }
        _inputEnded = true;
        _requests.Writer.TryComplete();
    }

    /// <summary>
    /// The request stream cannot go on (a bad message, shutdown): the service's next read, after the requests
    /// already received, throws <paramref name="error"/>; bytes still arriving are discarded. Any thread.
    /// </summary>
    public void FailInput(RpcException error)
    {
        _discarding = true;
        _inputEnded = true;
        _requests.Writer.TryComplete(error);
    }

    /// <summary>The client reset the stream: nothing more is sent on it, and the call stops. Any thread.</summary>
    public void OnResetByPeer()
    {
        MarkReset();
        Cancel();
    }

    /// <summary>
    /// This side resets the stream with <paramref name="code"/> (once): no WINDOW_UPDATE or trailers follow. Any thread;
    /// under the lock that <see cref="Credit"/> holds, so no WINDOW_UPDATE can slip in behind the RST_STREAM.
    /// </summary>
    public void Reset(Http2ErrorCode code)
    {
        lock (_gate)
        {
            if (_reset) return;
            _reset = true;
            _connection.QueueRstStream(StreamId, code);
        }
    }

    private void MarkReset()
    {
        lock (_gate) _reset = true;
    }

    /// <summary>The connection is going or the stream broke: the call stops. Any thread.</summary>
    public void Cancel()
    {
        try
        {
            _cancellation.Cancel();
        }
        catch (ObjectDisposedException)
        {
        }
        FailInput(new RpcException(new Status(StatusCode.Cancelled, "the call was cancelled")));
    }

    private void StartMessage()
    {
        byte compressed = _prefix[0];
        uint length = BinaryPrimitives.ReadUInt32BigEndian(_prefix.AsSpan(1));
        _prefixFilled = 0;
        if (compressed != 0 && GrpcMessageEncoding.RefusalOfCompressed(_encoding) is { } refusal)
        {
            FailInput(new RpcException(refusal));
            return;
        }
        if (length > (uint)_maxMessageBytes)
        {
            FailInput(new RpcException(new Status(StatusCode.ResourceExhausted,
                $"Received message exceeds the maximum configured message size ({length} > {_maxMessageBytes} bytes)")));
            return;
        }
        _bodyLength = (int)length;
        _bodyFilled = 0;
        _bodyCompressed = compressed != 0;
        _body = TensorBufferPool.Bytes.Rent(Math.Max(_bodyLength, 1));
    }

    private void FinishMessage()
    {
        var body = _body!;
        int length = _bodyLength;
        _body = null;
        DecodeRequest request;
        try
        {
            if (_bodyCompressed)
            {
                // Rare (tensors hardly compress): inflated here, into a pooled array of its own, bounded by the limit.
                var compressed = body;
                (body, length) = (null!, 0);
                try
                {
                    (body, length) = GrpcMessageEncoding.Inflate(compressed.AsMemory(0, _bodyLength), _maxMessageBytes, TensorBufferPool.Bytes);
                }
                finally
                {
                    TensorBufferPool.Bytes.Return(compressed);
                }
            }
            request = DecodeMarshallers.ParseRequestInPlace(body.AsMemory(0, length));
        }
        catch (InvalidProtocolBufferException ex)
        {
            TensorBufferPool.Bytes.Return(body);
            FailInput(new RpcException(new Status(StatusCode.Internal, "Failed to deserialize request message: " + ex.Message)));
            return;
        }
        catch (RpcException ex)
        {
            FailInput(ex);
            return;
        }
        lock (_gate) _queued++;
        var leased = new Leased<DecodeRequest>(request, new PooledArray(TensorBufferPool.Bytes, body));
        if (!_requests.Writer.TryWrite(leased))
        {
            leased.Dispose();
            lock (_gate) _queued--;
        }
    }

    /// <summary>The message being received, if any, goes back to the pool (the reader loop, or Close once it has left).</summary>
    private void ReturnBody()
    {
        var body = Interlocked.Exchange(ref _body, null);
        if (body is not null) TensorBufferPool.Bytes.Return(body);
        _prefixFilled = 0;
    }

    /// <summary>Gives consumed bytes back to the client as stream window, unless enough messages wait already.</summary>
    private void Credit(int bytes, bool messageEnded)
    {
        lock (_gate)
        {
            if (_queued >= MaxQueuedMessages && !_discarding)
            {
                _held += bytes;
                return;
            }
            _uncredited += bytes;
            if (_uncredited >= CreditBatchBytes || messageEnded || _discarding)
            {
                int send = _uncredited;
                _uncredited = 0;
                _receiveWindow += send;
                // Under the lock: StopCredit, and the RST_STREAM after it, cannot come between the check and the frame.
                if (!_inputEndedByPeer && !_reset) _connection.QueueStreamWindowUpdate(StreamId, send);
            }
        }
    }

    private void OnMessageTaken()
    {
        lock (_gate)
        {
            _queued--;
            if (_queued < MaxQueuedMessages && _held > 0)
            {
                int release = _held + _uncredited;
                _held = _uncredited = 0;
                _receiveWindow += release;
                if (!_inputEndedByPeer && !_reset) _connection.QueueStreamWindowUpdate(StreamId, release);
            }
        }
    }

    // ---- IAsyncStreamReader: the service reads requests ----

    public Leased<DecodeRequest> Current => _current ?? throw new InvalidOperationException("no current request");

    public async Task<bool> MoveNext(CancellationToken cancellationToken)
    {
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _token);
        try
        {
            if (!await _requests.Reader.WaitToReadAsync(linked.Token).ConfigureAwait(false)) return false;
        }
        catch (OperationCanceledException) when (_token.IsCancellationRequested)
        {
            throw new RpcException(new Status(StatusCode.Cancelled, "the call was cancelled"));
        }
        if (!_requests.Reader.TryRead(out var request)) return false;
        OnMessageTaken();
        _current = request;
        return true;
    }

    // ---- IServerStreamWriter: the service writes responses ----

    public WriteOptions? WriteOptions { get; set; }

    public Task WriteAsync(Leased<DecodeResponse> message) => WriteAsync(message, CancellationToken.None);

    public async Task WriteAsync(Leased<DecodeResponse> message, CancellationToken cancellationToken)
    {
        TensorMessageWriter? wire = null;
        try
        {
            if (_closed) throw new InvalidOperationException("the call is over");
            wire = DecodeMarshallers.LayResponse(message.Message);
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _token);
            await _sendLock.WaitAsync(linked.Token).ConfigureAwait(false);
            try
            {
                if (_finished) throw new InvalidOperationException("the response is already complete");
                await SendHeadersLockedAsync(linked.Token).ConfigureAwait(false);
                await SendMessageLockedAsync(wire, linked.Token).ConfigureAwait(false);
            }
            finally
            {
                _sendLock.Release();
            }
        }
        finally
        {
            // Only now, with every byte handed to the socket, may the batch's output buffers be reused.
            wire?.Dispose();
            message.Dispose();
        }
    }

    /// <summary>Response headers, if not sent yet (ServerCallContext.WriteResponseHeadersAsync).</summary>
    public async Task SendHeadersAsync()
    {
        await _sendLock.WaitAsync(_token).ConfigureAwait(false);
        try
        {
            await SendHeadersLockedAsync(_token).ConfigureAwait(false);
        }
        finally
        {
            _sendLock.Release();
        }
    }

    /// <summary>
    /// Ends the response with <paramref name="status"/>: trailers (or, before any message, trailers-only).
    /// Returns false when the stream or connection is already gone.
    /// </summary>
    public async Task<bool> FinishAsync(Status status)
    {
        try
        {
            await _sendLock.WaitAsync(CancellationToken.None).ConfigureAwait(false);
            try
            {
                if (_finished) return false;
                _finished = true;
                if (_reset) return false; // no frame may follow a RST_STREAM on this stream (RFC 9113, section 5.1)
                if (_messagePartlySent)
                {
                    // Trailers now would follow a truncated message; a reset tells the client the call broke off.
                    Reset(Http2ErrorCode.Cancel);
                    return false;
                }
                await _connection.SendTrailersAsync(StreamId, status, includeHeaders: !_headersSent).ConfigureAwait(false);
                return true;
            }
            finally
            {
                _sendLock.Release();
            }
        }
        catch (IOException)
        {
            return false;
        }
    }

    private async ValueTask SendHeadersLockedAsync(CancellationToken cancellationToken)
    {
        if (_headersSent) return;
        await _connection.SendResponseHeadersAsync(StreamId, cancellationToken).ConfigureAwait(false);
        _headersSent = true;
    }

    private async ValueTask SendMessageLockedAsync(TensorMessageWriter wire, CancellationToken cancellationToken)
    {
        int piece = 0, offset = 0;
        long remaining = wire.Length;
        while (remaining > 0)
        {
            int frame = await _connection.TakeSendCreditAsync(StreamId, (int)Math.Min(remaining, _connection.PeerMaxFrameSize), cancellationToken)
                .ConfigureAwait(false);
            _frameParts.Clear();
            for (int left = frame; left > 0;)
            {
                var current = wire.Pieces[piece];
                int n = Math.Min(left, current.Length - offset);
                _frameParts.Add(current.Slice(offset, n));
                left -= n;
                offset += n;
                if (offset == current.Length)
                {
                    piece++;
                    offset = 0;
                }
            }
            bool sent = false;
            try
            {
                await _connection.SendDataAsync(StreamId, _frameParts, cancellationToken).ConfigureAwait(false);
                sent = true;
                _messagePartlySent = true;
            }
            finally
            {
                // Cancelled before the frame went out: its credit is the connection's again, or it would leak away.
                if (!sent) _connection.ReturnSendCredit(StreamId, frame);
            }
            remaining -= frame;
        }
        _messagePartlySent = false;
    }

    /// <summary>
    /// The call is over (trailers sent, stream forgotten by the connection): requests received but never taken,
    /// and a message half received, go back to the pool. Any thread; the reader loop may still be inside
    /// <see cref="ReceiveAsync"/>, in which case it gives the half message back as it leaves.
    /// </summary>
    public void Close()
    {
        _closed = true;
        _requests.Writer.TryComplete();
        while (_requests.Reader.TryRead(out var request)) request.Dispose();
        lock (_gate)
        {
            if (!_receiving) ReturnBody();
        }
        _cancellation.Dispose();
        _deadline?.Dispose();
    }
}
