using Google.Protobuf;
using FlashMla.Contracts.V1;
using FlashMla.Contracts.Wire;
using FlashMla.Http2;
using Grpc.Core;

namespace FlashMla.Server.DataPlane;

/// <summary>
/// The response stream of one data-plane call: the response headers once, each message sent from the very
/// buffers its tensors wrap (then released), and the trailers, or a trailers-only response when no message went
/// out. A message cut off midway (deadline, cancellation) ends the stream with RST_STREAM(CANCEL), never with
/// trailers after a partial message.
/// </summary>
internal sealed class DataPlaneResponseWriter(DataPlaneConnection connection, Http2Stream stream, CancellationToken callToken)
    : IServerStreamWriter<Leased<DecodeResponse>>
{
    private readonly SemaphoreSlim _sendLock = new(1, 1);
    private ReadOnlyMemory<byte>[] _pieces = new ReadOnlyMemory<byte>[8];
    private bool _headersSent, _finished, _messageCut;

    public WriteOptions? WriteOptions { get; set; }

    public Task WriteAsync(Leased<DecodeResponse> message) => WriteAsync(message, CancellationToken.None);

    public async Task WriteAsync(Leased<DecodeResponse> message, CancellationToken cancellationToken)
    {
        try
        {
            await WriteAsync(DecodeMarshallers.LayResponse(message.Message), cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            // Only now, with every byte handed to the socket, may the batch's output buffers be reused.
            message.Dispose();
        }
    }

    /// <summary>A response without tensors (AppendKv's), written whole.</summary>
    public Task WriteAsync(IMessage message, CancellationToken cancellationToken) =>
        WriteAsync(TensorMessageWriter.Create(message, 0, null, 0, null), cancellationToken);

    private async Task WriteAsync(TensorMessageWriter wire, CancellationToken cancellationToken)
    {
        try
        {
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, callToken);
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
            wire.Dispose();
        }
    }

    /// <summary>Response headers, if not sent yet (ServerCallContext.WriteResponseHeadersAsync).</summary>
    public async Task SendHeadersAsync()
    {
        await _sendLock.WaitAsync(callToken).ConfigureAwait(false);
        try
        {
            await SendHeadersLockedAsync(callToken).ConfigureAwait(false);
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
                if (stream.IsReset) return false; // no frame may follow a RST_STREAM on this stream (RFC 9113, section 5.1)
                if (_messageCut)
                {
                    // Trailers now would follow a truncated message; a reset tells the client the call broke off.
                    stream.Reset(Http2ErrorCode.Cancel);
                    return false;
                }
                await connection.SendTrailersAsync(stream, status, includeHeaders: !_headersSent).ConfigureAwait(false);
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
        await connection.SendResponseHeadersAsync(stream, cancellationToken).ConfigureAwait(false);
        _headersSent = true;
    }

    private async ValueTask SendMessageLockedAsync(TensorMessageWriter wire, CancellationToken cancellationToken)
    {
        if (_pieces.Length < wire.PieceCount) _pieces = new ReadOnlyMemory<byte>[wire.PieceCount];
        wire.Pieces.CopyTo(_pieces);
        long before = stream.DataBytesSent;
        try
        {
            await connection.WriteDataAsync(stream, _pieces.AsMemory(0, wire.PieceCount), cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            _messageCut |= stream.DataBytesSent > before;
            throw;
        }
        finally
        {
            _pieces.AsSpan().Clear(); // hold no reference to buffers that go back to the pool
        }
    }
}
