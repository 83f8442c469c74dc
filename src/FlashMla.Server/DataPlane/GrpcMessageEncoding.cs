using System.Buffers;
using System.Buffers.Binary;
using System.IO.Compression;
using Grpc.Core;

namespace FlashMla.Server.DataPlane;

/// <summary>
/// Message compression of requests as the gRPC spec has it (doc/compression.md): a message whose compressed
/// flag is set is inflated by the request's grpc-encoding, of which identity and gzip are understood.
/// Responses are never compressed (a client's grpc-accept-encoding allows compression, it does not ask for
/// it), so they carry no grpc-encoding: identity.
/// </summary>
internal static class GrpcMessageEncoding
{
    public const string Identity = "identity";
    public const string Gzip = "gzip";

    /// <summary>The grpc-accept-encoding value of every response: what requests may be compressed with.</summary>
    public const string Accepted = Identity + "," + Gzip;

    /// <summary>
    /// Why a message with the compressed flag cannot be read under <paramref name="encoding"/> (the request's
    /// grpc-encoding), or null when it can: INTERNAL without an encoding (or with identity), UNIMPLEMENTED for
    /// an encoding this server lacks, naming the ones it has (the grpc-accept-encoding header says the same).
    /// </summary>
    public static Status? RefusalOfCompressed(string? encoding) => encoding switch
    {
        Gzip => null,
        null or Identity => new Status(StatusCode.Internal,
            $"a request message has the compressed flag but the request's grpc-encoding is {encoding ?? "absent"}"),
        _ => new Status(StatusCode.Unimplemented, $"grpc-encoding '{encoding}' is not supported; this server accepts {Accepted}"),
    };

    /// <summary>RESOURCE_EXHAUSTED for a message that inflates past <paramref name="maxBytes"/> (both ports say it so).</summary>
    public static Status InflatedPastLimit(int maxBytes) => new(StatusCode.ResourceExhausted,
        $"Received message exceeds the maximum configured message size once inflated (more than {maxBytes} bytes)");

    /// <summary>INTERNAL for a message that is not valid gzip (both ports say it so).</summary>
    public static Status Corrupt(InvalidDataException error) => new(StatusCode.Internal, "Failed to decompress the gzip request message: " + error.Message);

    /// <summary>
    /// Inflates a gzip message into an array rented from <paramref name="pool"/>, holding at most
    /// <paramref name="maxBytes"/>: a message that inflates past it (a gzip bomb) is RESOURCE_EXHAUSTED as soon
    /// as the output passes the limit, so memory never exceeds it; a corrupt stream is INTERNAL.
    /// </summary>
    public static (byte[] Array, int Length) Inflate(ReadOnlyMemory<byte> compressed, int maxBytes, ArrayPool<byte> pool)
    {
        // The gzip trailer's ISIZE (the length mod 2^32) sizes the first array; a lie only costs growth or waste up to the limit.
        long hint = compressed.Length >= 18 ? BinaryPrimitives.ReadUInt32LittleEndian(compressed.Span[^4..]) : compressed.Length * 4L;
        long limit = maxBytes + 1L; // reading one byte past the limit proves the message exceeds it
        var array = pool.Rent((int)Math.Clamp(hint + 1, 1, limit));
        int length = 0;
        try
        {
            using var source = new GZipStream(new ReadOnlyMemoryStream(compressed), CompressionMode.Decompress);
            while (true)
            {
                if (length > maxBytes) throw new RpcException(InflatedPastLimit(maxBytes));
                if (length == array.Length)
                {
                    var grown = pool.Rent((int)Math.Min(array.Length * 2L, limit));
                    array.AsSpan(0, length).CopyTo(grown);
                    pool.Return(array);
                    array = grown;
                }
                int n = source.Read(array, length, (int)Math.Min(array.Length - length, limit - length));
                if (n == 0) return (array, length);
                length += n;
            }
        }
        catch (Exception ex)
        {
            pool.Return(array);
            if (ex is InvalidDataException corrupt) throw new RpcException(Corrupt(corrupt));
            throw;
        }
    }

    /// <summary>A read-only stream over memory (the compressed message, left where it was received).</summary>
    private sealed class ReadOnlyMemoryStream(ReadOnlyMemory<byte> memory) : Stream
    {
        private int _position;

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => memory.Length;
        public override long Position { get => _position; set => throw new NotSupportedException(); }

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            int n = Math.Min(buffer.Length, memory.Length - _position);
            memory.Span.Slice(_position, n).CopyTo(buffer);
            _position += n;
            return n;
        }

        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
