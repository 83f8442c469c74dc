using System.Buffers;
using System.Runtime.CompilerServices;

namespace FlashMla.Http2;

/// <summary>
/// Reads frames off one connection's transport (the socket's NetworkStream, or an SslStream over it) for its
/// reader loop: headers and small payloads through a pooled buffer, large payloads (DATA) read straight into the
/// caller's memory, so a megabyte frame is copied once, by the kernel (under TLS: decrypted by SslStream, then
/// copied once into the caller's memory). Not thread-safe: one reader loop owns it.
/// </summary>
internal sealed class Http2FrameReader : IDisposable
{
    /// <summary>The receive buffer's size.</summary>
    public const int BufferSize = 64 * 1024;

    private readonly Stream _transport;
    private readonly ArrayPool<byte> _buffers;
    private byte[] _buffer;
    private int _start, _end;

    /// <param name="buffers">Where the receive buffer comes from and goes back to (the shared pool by default).</param>
    public Http2FrameReader(Stream transport, ArrayPool<byte>? buffers = null)
    {
        _transport = transport;
        _buffers = buffers ?? ArrayPool<byte>.Shared;
        _buffer = _buffers.Rent(BufferSize);
    }

    /// <summary>The next frame's header, or null when the peer closed the connection between frames.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<Http2FrameHeader?> ReadHeaderAsync()
    {
        while (_end - _start < Http2FrameHeader.Size)
        {
            if (!await FillAsync().ConfigureAwait(false))
            {
                if (_end == _start) return null;
                throw new IOException("the peer closed the connection in the middle of a frame header");
            }
        }
        var header = Http2FrameHeader.Read(_buffer.AsSpan(_start, Http2FrameHeader.Size));
        _start += Http2FrameHeader.Size;
        return header;
    }

    /// <summary>Fills <paramref name="destination"/> with the next bytes of the current payload.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    public async ValueTask ReadExactlyAsync(Memory<byte> destination)
    {
        int buffered = Math.Min(_end - _start, destination.Length);
        _buffer.AsSpan(_start, buffered).CopyTo(destination.Span);
        _start += buffered;
        destination = destination[buffered..];
        while (!destination.IsEmpty)
        {
            if (destination.Length >= BufferSize / 2)
            {
                // Large remainder: straight from the transport into the destination, no intermediate copy of ours.
                int n = await _transport.ReadAsync(destination).ConfigureAwait(false);
                if (n == 0) throw new IOException("the peer closed the connection in the middle of a frame");
                destination = destination[n..];
            }
            else
            {
                if (!await FillAsync().ConfigureAwait(false)) throw new IOException("the peer closed the connection in the middle of a frame");
                int n = Math.Min(_end - _start, destination.Length);
                _buffer.AsSpan(_start, n).CopyTo(destination.Span);
                _start += n;
                destination = destination[n..];
            }
        }
    }

    /// <summary>Discards the next <paramref name="count"/> payload bytes (padding, frames of unknown type).</summary>
    public async ValueTask SkipAsync(int count)
    {
        while (count > 0)
        {
            if (_end == _start && !await FillAsync().ConfigureAwait(false))
                throw new IOException("the peer closed the connection in the middle of a frame");
            int n = Math.Min(_end - _start, count);
            _start += n;
            count -= n;
        }
    }

    private async ValueTask<bool> FillAsync()
    {
        if (_start == _end)
        {
            _start = _end = 0;
        }
        else if (_start > 0)
        {
            Buffer.BlockCopy(_buffer, _start, _buffer, 0, _end - _start);
            _end -= _start;
            _start = 0;
        }
        int n = await _transport.ReadAsync(_buffer.AsMemory(_end)).ConfigureAwait(false);
        _end += n;
        return n > 0;
    }

    public void Dispose()
    {
        var buffer = Interlocked.Exchange(ref _buffer, []);
        if (buffer.Length > 0) _buffers.Return(buffer);
    }
}
