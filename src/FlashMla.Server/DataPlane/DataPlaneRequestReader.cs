using System.Buffers;
using System.Buffers.Binary;
using System.Threading.Channels;
using FlashMla.Contracts.V1;
using FlashMla.Contracts.Wire;
using FlashMla.Core.Memory;
using FlashMla.Http2;
using FlashMla.Server.Services;
using Google.Protobuf;
using Grpc.Core;

namespace FlashMla.Server.DataPlane;

/// <summary>
/// The request stream of one data-plane call. The connection's reader loop feeds it DATA payloads, which it
/// receives straight into a pooled, page-locked array per gRPC message (the kernel's copy from the socket is the
/// only one); the service reads whole messages, each parsed in place into a request whose tensors wrap that array.
/// <para>
/// Receive flow control: <see cref="QueuedMessageCredit"/> (the stream's window is given back as bytes arrive
/// while fewer than two whole messages wait for the service; past that, credit is held until the service takes
/// one), so a stream's memory is bounded by its window plus those messages.
/// </para>
/// <para>
/// Memory: a message's whole declared length is reserved when its prefix arrives (one array, so it is parsed in place),
/// from the pool's view within the server's budget of bytes held (<see cref="PinnedTensorPool.WithinBudget"/>). A
/// length the budget cannot hold ends the call with RESOURCE_EXHAUSTED before its bytes are received, so declared
/// lengths a client never sends cannot reserve more than the budget.
/// </para>
/// </summary>
internal sealed class DataPlaneRequestReader : IAsyncStreamReader<Leased<DecodeRequest>>
{
    /// <summary>Credit given back in pieces of at least this much (or at a message's end).</summary>
    public const int CreditBatchBytes = 256 * 1024;

    /// <summary>A whole message as received: its bytes lie at the start of a pooled array; its last byte came at <c>ReceivedAt</c>.</summary>
    private readonly record struct Received(byte[] Array, int Length, bool Compressed, long ReceivedAt);

    private readonly Http2Stream _stream;
    private readonly ArrayPool<byte> _pool;
    private readonly int _maxMessageBytes;
    private readonly string? _encoding;
    private readonly CancellationToken _callToken;
    private readonly Channel<Received> _messages = Channel.CreateUnbounded<Received>(new UnboundedChannelOptions { SingleReader = true });
    private readonly object _gate = new();
    private readonly QueuedMessageCredit _credit;
    private readonly byte[] _prefix = new byte[TensorMessageWriter.GrpcPrefixSize];
    private int _prefixFilled;
    private byte[]? _body;
    private int _bodyLength, _bodyFilled;
    private bool _bodyCompressed;
    private bool _receiving;
    private volatile bool _discarding, _ended, _closed;
    private Leased<DecodeRequest>? _current;

    /// <param name="stream">Where credit goes back.</param>
    /// <param name="pool">The page-locked pool messages are received into: its view within the budget of bytes held,
    /// whose Rent throws <see cref="TensorBudgetExceededException"/> past it.</param>
    /// <param name="encoding">The request's grpc-encoding, which compressed messages are inflated by.</param>
    /// <param name="callToken">The call's cancellation (deadline, reset, connection closing).</param>
    public DataPlaneRequestReader(Http2Stream stream, ArrayPool<byte> pool, int maxMessageBytes, string? encoding, CancellationToken callToken)
    {
        _stream = stream;
        _credit = new QueuedMessageCredit(stream);
        _pool = pool;
        _maxMessageBytes = maxMessageBytes;
        _encoding = encoding;
        _callToken = callToken;
    }

    /// <summary>A message has begun to arrive and is not whole yet (the connection's minimum data rate watches it).</summary>
    public bool MessageInProgress => _prefixFilled > 0 || _body is not null;

    // ---- The reader loop: one DATA payload at a time ----

    /// <summary>Takes the next <paramref name="count"/> bytes of a DATA payload from <paramref name="reader"/>.</summary>
    public async ValueTask ReceiveAsync(Http2FrameReader reader, int count)
    {
        lock (_gate) _receiving = true;
        try
        {
            while (count > 0)
            {
                if (_discarding || _ended || _closed)
                {
                    ReturnBody();
                    await reader.SkipAsync(count).ConfigureAwait(false);
                    _credit.Received(count, flush: _discarding, _discarding);
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
                _credit.Received(n, flush: ended || _discarding, _discarding);
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

    /// <summary>The client sent END_STREAM: no more requests.</summary>
    public void EndInput()
    {
        if (_ended) return;
        if (!_discarding && (_prefixFilled > 0 || _body is not null))
        {
            Fail(new RpcException(new Status(StatusCode.Internal, "the request stream ended inside a message")));
            return;
        }
        _ended = true;
        _messages.Writer.TryComplete();
    }

    /// <summary>
    /// The request stream cannot go on (a bad message, shutdown, cancellation): the service's next read, after the
    /// requests already received, throws <paramref name="error"/>; bytes still arriving are discarded. Any thread.
    /// </summary>
    public void Fail(RpcException error)
    {
        _discarding = true;
        _ended = true;
        _messages.Writer.TryComplete(error);
    }

    private void StartMessage()
    {
        bool compressed = _prefix[0] != 0;
        uint length = BinaryPrimitives.ReadUInt32BigEndian(_prefix.AsSpan(1));
        _prefixFilled = 0;
        if (compressed && GrpcMessageEncoding.RefusalOfCompressed(_encoding) is { } refusal)
        {
            Fail(new RpcException(refusal));
            return;
        }
        if (length > (uint)_maxMessageBytes)
        {
            Fail(new RpcException(new Status(StatusCode.ResourceExhausted,
                $"Received message exceeds the maximum configured message size ({length} > {_maxMessageBytes} bytes)")));
            return;
        }
        byte[] body;
        try
        {
            body = _pool.Rent(Math.Max((int)length, 1));
        }
        catch (TensorBudgetExceededException ex)
        {
            Fail(new RpcException(StatusMapping.ToStatus(ex)));
            return;
        }
        _bodyLength = (int)length;
        _bodyFilled = 0;
        _bodyCompressed = compressed;
        _body = body;
    }

    private void FinishMessage()
    {
        var message = new Received(_body!, _bodyLength, _bodyCompressed, System.Diagnostics.Stopwatch.GetTimestamp());
        _body = null;
        _credit.Queued();
        if (!_messages.Writer.TryWrite(message))
        {
            _pool.Return(message.Array);
            _credit.Queued(-1);
        }
    }

    /// <summary>The message being received, if any, goes back to the pool (the reader loop, or Close once it has left).</summary>
    private void ReturnBody()
    {
        var body = Interlocked.Exchange(ref _body, null);
        if (body is not null) _pool.Return(body);
        _prefixFilled = 0;
    }

    // ---- The service reads requests ----

    public Leased<DecodeRequest> Current => _current ?? throw new InvalidOperationException("no current request");

    public async Task<bool> MoveNext(CancellationToken cancellationToken)
    {
        var next = await ReadAsync(DecodeMarshallers.ParseRequestInPlace, cancellationToken).ConfigureAwait(false);
        if (next is null) return false;
        _current = next;
        return true;
    }

    /// <summary>
    /// The next whole message, parsed in place in its array by <paramref name="parseInPlace"/> (the call's message
    /// type: a decode request, or an AppendKv chunk); null at the end of the stream. The lease returns the array.
    /// </summary>
    public async Task<Leased<T>?> ReadAsync<T>(Func<ReadOnlyMemory<byte>, T> parseInPlace, CancellationToken cancellationToken) where T : class
    {
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _callToken);
        try
        {
            if (!await _messages.Reader.WaitToReadAsync(linked.Token).ConfigureAwait(false)) return null;
        }
        catch (OperationCanceledException) when (_callToken.IsCancellationRequested)
        {
            throw new RpcException(new Status(StatusCode.Cancelled, "the call was cancelled"));
        }
        if (!_messages.Reader.TryRead(out var message)) return null;
        _credit.Taken();
        return Parse(message, parseInPlace);
    }

    /// <summary>A message parsed in place in its array (inflated first into one of its own, if compressed); the lease returns the array.</summary>
    private Leased<T> Parse<T>(Received message, Func<ReadOnlyMemory<byte>, T> parseInPlace) where T : class
    {
        var (array, length) = (message.Array, message.Length);
        try
        {
            if (message.Compressed)
            {
                // Rare (tensors hardly compress): inflated on the service's side, not the reader loop's, bounded by the limit.
                var inflated = GrpcMessageEncoding.Inflate(array.AsMemory(0, length), _maxMessageBytes, _pool);
                _pool.Return(array);
                (array, length) = inflated;
            }
            return new Leased<T>(parseInPlace(array.AsMemory(0, length)), new PooledArray(_pool, array))
                { ReceivedAt = message.ReceivedAt };
        }
        catch (TensorBudgetExceededException ex)
        {
            _pool.Return(array); // the inflated form did not fit the budget
            throw new RpcException(StatusMapping.ToStatus(ex));
        }
        catch
        {
            // The parser's InvalidProtocolBufferException goes on as it is: the dispatcher records and answers it.
            _pool.Return(array);
            throw;
        }
    }

    /// <summary>
    /// The call is over: requests received but never taken, and a message half received, go back to the pool.
    /// Any thread; the reader loop may still be inside <see cref="ReceiveAsync"/>, in which case it gives the half
    /// message back as it leaves.
    /// </summary>
    public void Close()
    {
        _closed = true;
        _messages.Writer.TryComplete();
        while (_messages.Reader.TryRead(out var message)) _pool.Return(message.Array);
        lock (_gate)
        {
            if (!_receiving) ReturnBody();
        }
    }
}
