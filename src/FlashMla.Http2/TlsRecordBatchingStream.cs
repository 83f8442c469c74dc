using System.Buffers;

namespace FlashMla.Http2;

/// <summary>
/// The stream an SslStream sits on, between it and the socket's NetworkStream. SslStream cuts what it is given into TLS
/// records of 16 KiB and writes each one to its inner stream on its own, and reads its inner stream a record's worth at a
/// time: under it, a megabyte DATA frame costs 64 sends and 64 receives, each a system call and a trip through the
/// loopback or NIC stack, where cleartext costs one of each. This stream gathers the records of one write into sends of up
/// to <see cref="BufferSize"/> (out at <see cref="FlushAsync(CancellationToken)"/>, which the frame writer calls at the
/// end of every write it makes, or when the buffer is full), and answers SslStream's small reads from receives of up to
/// <see cref="BufferSize"/>. What it costs: a memory copy of the ciphertext each way, far cheaper than the system calls.
/// Gathering starts with <see cref="StartBatching"/>, after the handshake: the handshake's messages must leave when
/// written, since SslStream never flushes. Writes SslStream makes on its own after that (a TLS 1.3 key update's answer)
/// leave with the next flush; the reader loop's window updates bring one soon, and neither side waits on such a message.
/// The buffers come from the pool given and go back when the stream is disposed and no read or write is using them.
/// </summary>
internal sealed class TlsRecordBatchingStream : Stream
{
    /// <summary>Largest send, and largest receive, this stream makes: 8 TLS records of 16 KiB.</summary>
    public const int BufferSize = 128 * 1024;

    private readonly Stream _inner;
    private readonly ArrayPool<byte> _buffers;
    private readonly SemaphoreSlim _writeGate = new(1, 1); // SslStream's own writes may come from the read side
    private byte[]? _writeBuffer, _readBuffer;
    private int _written, _readStart, _readEnd;
    private volatile bool _batching, _disposed;
    private int _busy; // reads and writes in progress: the buffers go back to the pool only when none is

    /// <param name="inner">The socket's stream; disposed with this one.</param>
    /// <param name="buffers">Where the two buffers of <see cref="BufferSize"/> come from and go back to.</param>
    public TlsRecordBatchingStream(Stream inner, ArrayPool<byte>? buffers = null)
    {
        _inner = inner;
        _buffers = buffers ?? ArrayPool<byte>.Shared;
    }

    /// <summary>From now on writes gather until a flush (call it once the handshake is done).</summary>
    public void StartBatching()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        _writeBuffer ??= _buffers.Rent(BufferSize);
        _batching = true;
    }

    /// <summary>Bytes written and not yet sent.</summary>
    public int Pending => Volatile.Read(ref _written);

    public override bool CanRead => true;
    public override bool CanWrite => true;
    public override bool CanSeek => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();

    public override async ValueTask<int> ReadAsync(Memory<byte> destination, CancellationToken cancellationToken = default)
    {
        Enter();
        try
        {
            if (destination.IsEmpty) return 0;
            if (_readStart == _readEnd)
            {
                // A read as large as the buffer gains nothing from it: straight into the caller's memory.
                if (destination.Length >= BufferSize) return await _inner.ReadAsync(destination, cancellationToken).ConfigureAwait(false);
                _readBuffer ??= _buffers.Rent(BufferSize);
                _readStart = 0;
                _readEnd = await _inner.ReadAsync(_readBuffer.AsMemory(0, BufferSize), cancellationToken).ConfigureAwait(false);
                if (_readEnd == 0) return 0;
            }
            return TakeRead(destination.Span);
        }
        finally
        {
            Leave();
        }
    }

    public override int Read(Span<byte> destination)
    {
        Enter();
        try
        {
            if (destination.IsEmpty) return 0;
            if (_readStart == _readEnd)
            {
                if (destination.Length >= BufferSize) return _inner.Read(destination);
                _readBuffer ??= _buffers.Rent(BufferSize);
                _readStart = 0;
                _readEnd = _inner.Read(_readBuffer.AsSpan(0, BufferSize));
                if (_readEnd == 0) return 0;
            }
            return TakeRead(destination);
        }
        finally
        {
            Leave();
        }
    }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    private int TakeRead(Span<byte> destination)
    {
        int n = Math.Min(destination.Length, _readEnd - _readStart);
        _readBuffer.AsSpan(_readStart, n).CopyTo(destination);
        _readStart += n;
        return n;
    }

    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> source, CancellationToken cancellationToken = default)
    {
        Enter();
        await _writeGate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (!_batching)
            {
                await _inner.WriteAsync(source, cancellationToken).ConfigureAwait(false);
                return;
            }
            if (_written + source.Length > BufferSize) await SendWrittenAsync(cancellationToken).ConfigureAwait(false);
            if (source.Length >= BufferSize)
            {
                await _inner.WriteAsync(source, cancellationToken).ConfigureAwait(false);
                return;
            }
            source.Span.CopyTo(_writeBuffer.AsSpan(_written));
            Volatile.Write(ref _written, _written + source.Length);
        }
        finally
        {
            _writeGate.Release();
            Leave();
        }
    }

    public override void Write(ReadOnlySpan<byte> source)
    {
        Enter();
        _writeGate.Wait();
        try
        {
            // Synchronous writes are not on any hot path: what is gathered goes first, then these bytes, unbuffered.
            if (_written > 0)
            {
                _inner.Write(_writeBuffer.AsSpan(0, _written));
                Volatile.Write(ref _written, 0);
            }
            _inner.Write(source);
        }
        finally
        {
            _writeGate.Release();
            Leave();
        }
    }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    /// <summary>Sends what was gathered, in one write to the socket.</summary>
    public override async Task FlushAsync(CancellationToken cancellationToken)
    {
        if (Volatile.Read(ref _written) == 0) return; // nothing gathered: no lock, no call (the common case between frames)
        Enter();
        await _writeGate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            await SendWrittenAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _writeGate.Release();
            Leave();
        }
    }

    public override void Flush()
    {
        if (Volatile.Read(ref _written) == 0) return;
        Enter();
        _writeGate.Wait();
        try
        {
            if (_written > 0) _inner.Write(_writeBuffer.AsSpan(0, _written));
            Volatile.Write(ref _written, 0);
        }
        finally
        {
            _writeGate.Release();
            Leave();
        }
    }

    /// <summary>The gathered bytes to the socket; the caller holds the write gate.</summary>
    private async ValueTask SendWrittenAsync(CancellationToken cancellationToken)
    {
        if (_written == 0) return;
        int n = _written;
        Volatile.Write(ref _written, 0); // gone even if the send fails: a failed socket takes no more writes anyway
        await _inner.WriteAsync(_writeBuffer.AsMemory(0, n), cancellationToken).ConfigureAwait(false);
    }

    private void Enter()
    {
        Interlocked.Increment(ref _busy);
        if (_disposed)
        {
            Leave();
            throw new ObjectDisposedException(nameof(TlsRecordBatchingStream));
        }
    }

    private void Leave()
    {
        if (Interlocked.Decrement(ref _busy) == 0 && _disposed) ReturnBuffers();
    }

    private void ReturnBuffers()
    {
        if (Interlocked.Exchange(ref _writeBuffer, null) is { } write) _buffers.Return(write);
        if (Interlocked.Exchange(ref _readBuffer, null) is { } read) _buffers.Return(read);
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing && !_disposed)
        {
            _disposed = true;
            _inner.Dispose(); // the socket's stream: a read or write still running ends now
            if (Volatile.Read(ref _busy) == 0) ReturnBuffers(); // else the last one out returns them
        }
        base.Dispose(disposing);
    }
}
