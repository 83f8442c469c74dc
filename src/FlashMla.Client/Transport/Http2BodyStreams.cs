using FlashMla.Http2;
using System.Net;

namespace FlashMla.Client.Transport;

/// <summary>The response body of one stream as <see cref="HttpContent"/>; the trailers land in the response's TrailingHeaders.</summary>
internal sealed class Http2ResponseContent(Http2ClientStream stream) : HttpContent
{
    private readonly Http2ResponseStream _body = new(stream);

    protected override Task<Stream> CreateContentReadStreamAsync() => Task.FromResult<Stream>(_body);

    protected override Task<Stream> CreateContentReadStreamAsync(CancellationToken cancellationToken) => Task.FromResult<Stream>(_body);

    protected override Stream CreateContentReadStream(CancellationToken cancellationToken) => _body;

    protected override Task SerializeToStreamAsync(Stream target, TransportContext? context) => _body.CopyToAsync(target);

    protected override Task SerializeToStreamAsync(Stream target, TransportContext? context, CancellationToken cancellationToken) =>
        _body.CopyToAsync(target, cancellationToken);

    protected override bool TryComputeLength(out long length)
    {
        length = 0;
        return false;
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) _body.Dispose();
        base.Dispose(disposing);
    }
}

/// <summary>Read-only view of a stream's response body; disposing it before the end cancels the stream.</summary>
internal sealed class Http2ResponseStream(Http2ClientStream stream) : Stream
{
    private int _disposed;

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        return stream.ReadAsync(buffer, cancellationToken);
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    /// <summary>Whether the body arrives as whole gRPC messages (the request asked with <see cref="GrpcResponseReceiver.OptionKey"/>).</summary>
    public bool ReceivesMessages => stream.ReceivesMessages;

    /// <summary>The next whole gRPC message, its array the caller's to give back to the call's pool; null at the body's end.</summary>
    public ValueTask<ReceivedData?> ReadMessageAsync(CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        return stream.ReadMessageAsync(cancellationToken);
    }

    public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

    public override void Flush()
    {
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing && Interlocked.Exchange(ref _disposed, 1) == 0) stream.OnResponseDisposed();
        base.Dispose(disposing);
    }
}

/// <summary>
/// Write-only view of a stream's request body, handed to the request content's SerializeToStreamAsync.
/// Each write goes out as DATA frames at once (as large as the server allows), waiting for flow-control
/// credit when the windows are spent; flushing has nothing left to do.
/// </summary>
internal sealed class Http2RequestStream(Http2ClientConnection connection, Http2ClientStream stream) : Stream
{
    public override bool CanRead => false;
    public override bool CanSeek => false;
    public override bool CanWrite => true;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) =>
        connection.SendDataAsync(stream, stream.AsPieces(buffer), cancellationToken);

    /// <summary>Writes <paramref name="pieces"/>, in order, as if one buffer: DATA frames as large as allowed, not a frame per piece.</summary>
    public ValueTask WritePiecesAsync(ReadOnlyMemory<ReadOnlyMemory<byte>> pieces, CancellationToken cancellationToken) =>
        connection.SendDataAsync(stream, pieces, cancellationToken);

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override void Write(byte[] buffer, int offset, int count) => WriteAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

    public override Task FlushAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public override void Flush()
    {
    }

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
}
