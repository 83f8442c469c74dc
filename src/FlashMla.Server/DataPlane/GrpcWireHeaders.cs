using System.Globalization;
using System.Text;
using FlashMla.Http2;
using Grpc.Core;

namespace FlashMla.Server.DataPlane;

/// <summary>What the data plane reads from a request's header block.</summary>
internal readonly record struct GrpcRequestHead(string Path, string Authority, TimeSpan? Timeout, string? Encoding, string? Authorization = null);

/// <summary>
/// gRPC over HTTP/2 as the data-plane listener speaks it (the gRPC "PROTOCOL-HTTP2" document): reading a
/// request's headers, and encoding response headers and trailers with HPACK's static table and literals only,
/// so the peer's decoder table never changes and no state is kept per connection.
/// </summary>
internal static class GrpcWireHeaders
{
    private const int StatusOk = 8;          // static table: ":status: 200"
    private const int ContentTypeName = 31;  // static table: "content-type"

    /// <summary>
    /// Checks a request's decoded header fields. Returns the call's path and deadline, or throws
    /// <see cref="RpcException"/> with the status a gRPC server answers such a request with.
    /// </summary>
    public static GrpcRequestHead ReadRequest(List<KeyValuePair<string, string>> fields)
    {
        string? method = null, path = null, authority = null, contentType = null, timeout = null, encoding = null, authorization = null;
        foreach (var (name, value) in fields)
        {
            switch (name)
            {
                case ":method": method = value; break;
                case ":path": path = value; break;
                case ":authority": authority = value; break;
                case "content-type": contentType = value; break;
                case "grpc-timeout": timeout = value; break;
                case "grpc-encoding": encoding = value; break;
                case "authorization": authorization = value; break;
            }
        }
        if (method != "POST") throw new RpcException(new Status(StatusCode.Internal, $"gRPC calls are POST requests, this one is {method ?? "without a method"}"));
        if (path is null) throw new RpcException(new Status(StatusCode.Internal, "the request has no :path"));
        if (contentType is null || !(contentType == "application/grpc" || contentType.StartsWith("application/grpc+", StringComparison.Ordinal)
                || contentType.StartsWith("application/grpc;", StringComparison.Ordinal)))
            throw new NotGrpcException(new Status(StatusCode.Internal, $"content-type '{contentType}' is not application/grpc"));
        return new GrpcRequestHead(path, authority ?? "", timeout is null ? null : ParseTimeout(timeout), encoding, authorization);
    }

    /// <summary>The :path of a request's fields, or "" (for counting a request refused before it was read).</summary>
    public static string PathOf(List<KeyValuePair<string, string>> fields)
    {
        foreach (var (name, value) in fields)
            if (name == ":path") return value;
        return "";
    }

    /// <summary>A grpc-timeout value: at most 8 digits and a unit (H, M, S, m, u, n).</summary>
    public static TimeSpan ParseTimeout(string value)
    {
        if (value.Length is < 2 or > 9 || !long.TryParse(value.AsSpan(0, value.Length - 1), NumberStyles.None, CultureInfo.InvariantCulture, out long amount))
            throw new RpcException(new Status(StatusCode.Internal, $"grpc-timeout '{value}' is malformed"));
        double ticks = value[^1] switch
        {
            'H' => amount * (double)TimeSpan.TicksPerHour,
            'M' => amount * (double)TimeSpan.TicksPerMinute,
            'S' => amount * (double)TimeSpan.TicksPerSecond,
            'm' => amount * (double)TimeSpan.TicksPerMillisecond,
            'u' => amount * (double)TimeSpan.TicksPerMicrosecond,
            'n' => amount / 100.0,
            _ => throw new RpcException(new Status(StatusCode.Internal, $"grpc-timeout '{value}' has an unknown unit")),
        };
        return TimeSpan.FromTicks((long)Math.Min(ticks, TimeSpan.MaxValue.Ticks));
    }

    /// <summary>The block that opens every response: ":status 200", the gRPC content type and the encodings requests may use.</summary>
    public static byte[] ResponseHeadersBlock()
    {
        var block = new byte[MaxHeaderBlockBytes];
        return block[..WriteResponseHeaders(block)];
    }

    private static int WriteResponseHeaders(Span<byte> destination, int httpStatus = 200)
    {
        int pos = httpStatus == 200
            ? Encode(HpackEncoder.TryEncodeIndexed(StatusOk, destination, out int n), n)
            : Encode(HpackEncoder.TryEncodeLiteral(StatusOk, httpStatus.ToString(CultureInfo.InvariantCulture), destination, out n), n); // ":status" by name
        pos += Encode(HpackEncoder.TryEncodeLiteral(ContentTypeName, "application/grpc", destination[pos..], out n), n);
        pos += Encode(HpackEncoder.TryEncodeLiteral("grpc-accept-encoding", GrpcMessageEncoding.Accepted, destination[pos..], out n), n);
        return pos;
    }

    /// <summary>
    /// grpc-status and, when there is one, grpc-message (percent-encoded, at most 1 KiB of it); after the response
    /// headers when <paramref name="includeHeaders"/> (a trailers-only response, whose :status is <paramref name="httpStatus"/>).
    /// </summary>
    public static int WriteTrailers(Span<byte> destination, StatusCode code, string? message, bool includeHeaders, int httpStatus = 200)
    {
        int pos = includeHeaders ? WriteResponseHeaders(destination, httpStatus) : 0;
        pos += Encode(HpackEncoder.TryEncodeLiteral("grpc-status", ((int)code).ToString(CultureInfo.InvariantCulture), destination[pos..], out int n), n);
        if (!string.IsNullOrEmpty(message))
            pos += Encode(HpackEncoder.TryEncodeLiteral("grpc-message", PercentEncode(message, 1024), destination[pos..], out n), n);
        return pos;
    }

    /// <summary>Room that <see cref="WriteResponseHeaders"/> and <see cref="WriteTrailers"/> together never exceed.</summary>
    public const int MaxHeaderBlockBytes = 4 * 1024;

    /// <summary>
    /// The gRPC spec's percent-encoding of grpc-message: UTF-8, bytes outside printable ASCII and '%' as %XX;
    /// cut at <paramref name="maxBytes"/> encoded bytes.
    /// </summary>
    public static string PercentEncode(string message, int maxBytes)
    {
        var builder = new StringBuilder(Math.Min(message.Length, maxBytes));
        foreach (byte b in Encoding.UTF8.GetBytes(message))
        {
            if (builder.Length + 3 > maxBytes) break;
            if (b is >= 0x20 and <= 0x7E and not (byte)'%') builder.Append((char)b);
            else builder.Append('%').Append(b.ToString("X2", CultureInfo.InvariantCulture));
        }
        return builder.ToString();
    }

    private static int Encode(bool fitted, int written) =>
        fitted ? written : throw new InvalidOperationException("header block larger than its buffer");
}

/// <summary>
/// A request that is not gRPC (its content-type): answered with HTTP 415 and grpc-status INTERNAL, as the gRPC spec
/// asks (PROTOCOL-HTTP2) and Kestrel's port does, so that a plain HTTP client does not take a 200 for success.
/// </summary>
internal sealed class NotGrpcException(Status status) : RpcException(status)
{
    public const int HttpStatus = 415;
}
