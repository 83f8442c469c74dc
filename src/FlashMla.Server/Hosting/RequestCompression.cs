using System.IO.Compression;
using FlashMla.Server.DataPlane;
using Grpc.AspNetCore.Server;
using Grpc.Core;
using Grpc.Net.Compression;

namespace FlashMla.Server.Hosting;

/// <summary>
/// Message compression on the gRPC port, as on the data-plane port (<see cref="GrpcMessageEncoding"/>): requests
/// identity or gzip, inflated no further than MaxMessageBytes; every response advertises grpc-accept-encoding;
/// responses are never compressed (no ResponseCompressionAlgorithm).
/// </summary>
internal static class RequestCompression
{
    public static void Configure(GrpcServiceOptions grpc, int maxMessageBytes) =>
        grpc.CompressionProviders = [new BoundedGzipCompressionProvider(maxMessageBytes)];

    /// <summary>grpc-dotnet names the accepted encodings only when it refuses one; the spec wants them in every response.</summary>
    public static void AdvertiseAcceptedEncodings(IApplicationBuilder app) => app.Use((context, next) =>
    {
        if (context.Request.ContentType?.StartsWith("application/grpc", StringComparison.Ordinal) == true)
            context.Response.Headers["grpc-accept-encoding"] = GrpcMessageEncoding.Accepted;
        return next(context);
    });
}

/// <summary>
/// gzip with the inflated size bounded by MaxMessageBytes. grpc-dotnet checks a message's size before inflating
/// it and inflates into a growing buffer without bound, so a small gzip bomb could take any amount of memory;
/// this provider's stream fails with RESOURCE_EXHAUSTED once the output passes the limit.
/// </summary>
internal sealed class BoundedGzipCompressionProvider(int maxBytes) : ICompressionProvider
{
    public string EncodingName => "gzip";

    public Stream CreateCompressionStream(Stream stream, CompressionLevel? compressionLevel) =>
        new GZipStream(stream, compressionLevel ?? CompressionLevel.Fastest, leaveOpen: true);

    public Stream CreateDecompressionStream(Stream stream) =>
        new BoundedReadStream(new GZipStream(stream, CompressionMode.Decompress), maxBytes);

    /// <summary>Reads through to an inner stream and throws RESOURCE_EXHAUSTED once more than <c>maxBytes</c> came out of it.</summary>
    private sealed class BoundedReadStream(Stream inner, int maxBytes) : Stream
    {
        private long _read;

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => _read; set => throw new NotSupportedException(); }

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            try
            {
                return Count(inner.Read(buffer));
            }
            catch (InvalidDataException ex)
            {
                throw new RpcException(GrpcMessageEncoding.Corrupt(ex)); // grpc-dotnet would call it UNKNOWN
            }
        }

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) =>
            ValueTask.FromResult(Read(buffer.Span)); // inflating memory already received: nothing to wait for

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        private int Count(int n)
        {
            _read += n;
            if (_read > maxBytes) throw new RpcException(GrpcMessageEncoding.InflatedPastLimit(maxBytes));
            return n;
        }

        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        protected override void Dispose(bool disposing)
        {
            if (disposing) inner.Dispose();
            base.Dispose(disposing);
        }
    }
}
