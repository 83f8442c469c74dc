using System.Buffers;
using System.Buffers.Binary;
using FlashMla.Http2;
using Grpc.Core;

namespace FlashMla.Client.Transport;

/// <summary>
/// What a request asks of its stream's receive path (<see cref="HttpRequestMessage.Options"/>, key
/// <see cref="GrpcResponseReceiver.OptionKey"/>): the response body is a sequence of gRPC messages, each to be
/// received whole into one array of <see cref="Pool"/>.
/// </summary>
internal sealed record GrpcMessageReceiving(ArrayPool<byte> Pool, int MaxMessageBytes);

/// <summary>
/// The response side of one gRPC call on a client stream, in the connection's reader loop: each DATA payload goes
/// straight from the frame reader into the array of the gRPC message it belongs to (one array per message, rented
/// from the call's pool when the message's 5-byte prefix arrives), so a response's bytes are not copied again
/// after they leave the socket (the bulk of a large frame is read by the kernel into that array; the few bytes
/// that came in with a frame's header are copied once from the reader's buffer). Whole messages wait in the
/// stream's queue for the call's one reader, which takes ownership of each array.
/// <para>
/// Receive flow control, as the server's data-plane reader: <see cref="QueuedMessageCredit"/> (credit goes back
/// as bytes arrive while fewer than two whole messages wait; past that it is held until the reader takes one).
/// </para>
/// <para>
/// A prefix that says "compressed" (never asked for) or declares more than the call's limit fails the call with a
/// clear status (INTERNAL, RESOURCE_EXHAUSTED) before any of its body is kept, and the stream is reset so the
/// server stops sending; a body that ends inside a message fails it with INTERNAL.
/// </para>
/// </summary>
internal sealed class GrpcResponseReceiver
{
    public static readonly HttpRequestOptionsKey<GrpcMessageReceiving> OptionKey = new("flashmla.grpc-message-receiving");

    private const int PrefixSize = 5;

    private readonly Http2ClientStream _stream;
    private readonly ReceivedDataQueue _queue;
    private readonly ArrayPool<byte> _pool;
    private readonly int _maxMessageBytes;
    private readonly byte[] _prefix = new byte[PrefixSize];
    private readonly object _gate = new();
    private readonly QueuedMessageCredit _credit;
    private int _prefixFilled;
    private byte[]? _body;
    private int _bodyLength, _bodyFilled;
    private bool _receiving, _closed;
    private volatile bool _discarding;

    public GrpcResponseReceiver(Http2ClientStream stream, ReceivedDataQueue queue, GrpcMessageReceiving settings)
    {
        _stream = stream;
        _credit = new QueuedMessageCredit(stream);
        _queue = queue;
        _pool = settings.Pool;
        _maxMessageBytes = settings.MaxMessageBytes;
    }

    /// <summary>The pool the queued messages' arrays go back to.</summary>
    public ArrayPool<byte> Pool => _pool;

    /// <summary>A message has begun to arrive and is not whole yet.</summary>
    public bool MessageInProgress => _prefixFilled > 0 || _body is not null;

    // ---- The reader loop ----

    /// <summary>Takes the next <paramref name="count"/> bytes of a DATA payload; true when a whole message was queued for a waiting reader.</summary>
    public async ValueTask<bool> ReceiveAsync(Http2FrameReader reader, int count)
    {
        bool wakeOwed = false;
        lock (_gate) _receiving = true;
        try
        {
            while (count > 0)
            {
                if (_discarding)
                {
                    ReturnBody();
                    await reader.SkipAsync(count).ConfigureAwait(false);
                    _stream.Release(count, flush: true);
                    return wakeOwed;
                }
                int n;
                if (_body is null)
                {
                    n = Math.Min(PrefixSize - _prefixFilled, count);
                    await reader.ReadExactlyAsync(_prefix.AsMemory(_prefixFilled, n)).ConfigureAwait(false);
                    _prefixFilled += n;
                    if (_prefixFilled == PrefixSize) StartMessage();
                }
                else
                {
                    n = Math.Min(_bodyLength - _bodyFilled, count);
                    await reader.ReadExactlyAsync(_body.AsMemory(_bodyFilled, n)).ConfigureAwait(false);
                    _bodyFilled += n;
                }
                count -= n;
                bool ended = _body is not null && _bodyFilled == _bodyLength;
                if (ended) wakeOwed |= FinishMessage();
                _credit.Received(n, flush: ended, _discarding);
            }
            return wakeOwed;
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

    /// <summary>The server ended the body (END_STREAM): an error when it ended inside a message.</summary>
    public RpcException? EndOfBody()
    {
        if (_discarding || !MessageInProgress) return null;
        return new RpcException(new Status(StatusCode.Internal, _body is null
            ? $"the response ended inside a gRPC message prefix ({_prefixFilled} of {PrefixSize} bytes)"
            : $"the response ended inside a message ({_bodyFilled} of the {_bodyLength} bytes its prefix declared)"));
    }

    private void StartMessage()
    {
        bool compressed = _prefix[0] != 0;
        uint length = BinaryPrimitives.ReadUInt32BigEndian(_prefix.AsSpan(1));
        _prefixFilled = 0;
        if (compressed)
        {
            Refuse(new Status(StatusCode.Internal, "the server sent a compressed message, which this client did not ask for"));
            return;
        }
        if (length > (uint)_maxMessageBytes)
        {
            Refuse(new Status(StatusCode.ResourceExhausted,
                $"Received message exceeds the maximum configured message size ({length} > {_maxMessageBytes} bytes)."));
            return;
        }
        _body = _pool.Rent(Math.Max((int)length, 1));
        _bodyLength = (int)length;
        _bodyFilled = 0;
    }

    /// <summary>The rest of the body is not wanted: the call fails with <paramref name="status"/> and the server is told to stop.</summary>
    private void Refuse(Status status)
    {
        _discarding = true;
        _stream.FailFromReaderLoop(new RpcException(status));
    }

    private bool FinishMessage()
    {
        var body = _body!;
        _body = null;
        _credit.Queued();
        if (_queue.TryAdd(new ReceivedData(body, 0, _bodyLength), out bool wakeOwed)) return wakeOwed;
        _pool.Return(body); // the stream failed or was disposed meanwhile
        _credit.Queued(-1);
        return false;
    }

    /// <summary>The message being received, if any, goes back to the pool (the reader loop, or Close once it has left).</summary>
    private void ReturnBody()
    {
        var body = Interlocked.Exchange(ref _body, null);
        if (body is not null) _pool.Return(body);
        _prefixFilled = 0;
    }

    // ---- The call's reader ----

    /// <summary>The reader took a whole message: held credit goes back once fewer than the limit wait.</summary>
    public void OnMessageTaken() => _credit.Taken();

    /// <summary>
    /// The call is over or failed: a message half received goes back to the pool (now, or as the reader loop leaves
    /// <see cref="ReceiveAsync"/>), and bytes still arriving are discarded. Any thread.
    /// </summary>
    public void Close()
    {
        lock (_gate)
        {
            _closed = true;
            _discarding = true;
            if (!_receiving) ReturnBody();
        }
    }
}
