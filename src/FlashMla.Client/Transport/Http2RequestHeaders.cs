using FlashMla.Http2;
using System.Buffers;
using System.Net.Http.Headers;

namespace FlashMla.Client.Transport;

/// <summary>Turns a request's method, URI and headers into one HPACK header block (in a pooled array).</summary>
internal static class Http2RequestHeaders
{
    /// <summary>The header block of <paramref name="request"/>; return the array to <see cref="ArrayPool{T}.Shared"/>.</summary>
    public static byte[] Encode(HttpRequestMessage request, out int length)
    {
        int size = 1024;
        while (true)
        {
            var buffer = ArrayPool<byte>.Shared.Rent(size);
            if (TryEncode(request, buffer, out length)) return buffer;
            ArrayPool<byte>.Shared.Return(buffer);
            size *= 4;
        }
    }

    private static bool TryEncode(HttpRequestMessage request, Span<byte> destination, out int length)
    {
        var uri = request.RequestUri ?? throw new InvalidOperationException("the request has no URI");
        int pos = 0;
        length = 0;
        bool ok = request.Method == HttpMethod.Post ? Indexed(HpackStaticTable.MethodPost, destination, ref pos)
            : request.Method == HttpMethod.Get ? Indexed(HpackStaticTable.MethodGet, destination, ref pos)
            : Literal(HpackStaticTable.MethodGet, request.Method.Method, destination, ref pos);
        ok = ok && Indexed(uri.Scheme == Uri.UriSchemeHttps ? HpackStaticTable.SchemeHttps : HpackStaticTable.SchemeHttp, destination, ref pos)
            && Literal(HpackStaticTable.Path, uri.PathAndQuery, destination, ref pos)
            && Literal(HpackStaticTable.Authority, request.Headers.Host ?? uri.Authority, destination, ref pos)
            && Fields(request.Headers.NonValidated, destination, ref pos)
            && (request.Content is null || Fields(request.Content.Headers.NonValidated, destination, ref pos));
        length = pos;
        return ok;
    }

    private static bool Fields(HttpHeadersNonValidated headers, Span<byte> destination, ref int pos)
    {
        foreach (var (name, values) in headers)
        {
            if (IsConnectionSpecific(name)) continue;
            foreach (string value in values)
            {
                // HTTP/2 allows only "te: trailers" (RFC 9113, section 8.2.2); gRPC sends exactly that.
                if (name.Equals("te", StringComparison.OrdinalIgnoreCase) && !value.Equals("trailers", StringComparison.OrdinalIgnoreCase)) continue;
                if (!HpackEncoder.TryEncodeLiteral(name, value, destination[pos..], out int n)) return false;
                pos += n;
            }
        }
        return true;
    }

    private static bool IsConnectionSpecific(string name) =>
        name.Equals("host", StringComparison.OrdinalIgnoreCase) || name.Equals("connection", StringComparison.OrdinalIgnoreCase)
        || name.Equals("keep-alive", StringComparison.OrdinalIgnoreCase) || name.Equals("proxy-connection", StringComparison.OrdinalIgnoreCase)
        || name.Equals("transfer-encoding", StringComparison.OrdinalIgnoreCase) || name.Equals("upgrade", StringComparison.OrdinalIgnoreCase);

    private static bool Indexed(int index, Span<byte> destination, ref int pos)
    {
        if (!HpackEncoder.TryEncodeIndexed(index, destination[pos..], out int n)) return false;
        pos += n;
        return true;
    }

    private static bool Literal(int nameIndex, string value, Span<byte> destination, ref int pos)
    {
        if (!HpackEncoder.TryEncodeLiteral(nameIndex, value, destination[pos..], out int n)) return false;
        pos += n;
        return true;
    }
}
