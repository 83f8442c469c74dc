using FlashMla.Server.DataPlane;
using FlashMla.Server.Security;
using FlashMla.Server.Services;
using Grpc.Core;
using Microsoft.AspNetCore.Server.Kestrel.Core;

namespace FlashMla.Server.Hosting;

/// <summary>
/// One limit on a request's header list (its metadata), the same on both ports and refused in the same words: a call
/// over <see cref="MaxListBytes"/> gets RESOURCE_EXHAUSTED on its own stream, and its connection and the other calls on
/// it go on. HTTP/2 servers (Kestrel among them) treat a header list over their limit as a connection error, and gRPC
/// C-core (Python grpcio) sends past a peer's advertised limit: one oversized call would end every call of the channel.
/// So both ports decode blocks up to <see cref="MaxBlockBytes"/> (keeping HPACK in step), both advertise that as
/// SETTINGS_MAX_HEADER_LIST_SIZE (Kestrel sends its limit; the data plane the same number), and both refuse above
/// the list limit on the call's stream.
/// </summary>
internal static class RequestHeaderLimit
{
    /// <summary>Largest header list a call may carry: names and values plus 32 bytes a field (RFC 9113, section 6.5.2).</summary>
    public const int MaxListBytes = 64 * 1024;

    /// <summary>Largest header block decoded so that a call over <see cref="MaxListBytes"/> costs its stream alone; past it, the connection.</summary>
    public const int MaxBlockBytes = 1 << 20;

    /// <summary>The RFC's overhead per field.</summary>
    public const int FieldOverhead = 32;

    public static Status Refusal(long listBytes) => new(StatusCode.ResourceExhausted,
        $"the request's header list is {listBytes} bytes (names and values plus {FieldOverhead} a field), above the limit of " +
        $"{MaxListBytes} bytes of metadata a call");

    /// <summary>
    /// Kestrel's limits raised to the block limit, so that its HPACK decoder and header checks let an oversized call
    /// through to <see cref="UseOnGrpcPort"/> instead of ending the connection. Kestrel advertises
    /// MaxRequestHeadersTotalSize as SETTINGS_MAX_HEADER_LIST_SIZE.
    /// </summary>
    public static void Configure(KestrelServerLimits limits)
    {
        limits.MaxRequestHeadersTotalSize = MaxBlockBytes;
        limits.MaxRequestHeaderCount = MaxBlockBytes / FieldOverhead;
        limits.Http2.MaxRequestHeaderFieldSize = MaxBlockBytes;
    }

    /// <summary>Refuses, on Kestrel's gRPC port, a call whose header list is over <see cref="MaxListBytes"/>: trailers-only RESOURCE_EXHAUSTED.</summary>
    public static void UseOnGrpcPort(IApplicationBuilder app, BoundEndpoints endpoints, RequestFailures failures) => app.Use((context, next) =>
    {
        long size = ListBytes(context.Request);
        if (size <= MaxListBytes) return next(context);
        var status = Refusal(size);
        if (context.Connection.LocalPort != endpoints.GrpcPort)
        {
            context.Response.StatusCode = StatusCodes.Status431RequestHeaderFieldsTooLarge; // the metrics port: plain HTTP
            return Task.CompletedTask;
        }
        failures.Record(GrpcPortAuthentication.MethodLabel(context.Request.Path.Value), new RpcException(status));
        return GrpcPortAuthentication.RefuseAsync(context, status);
    });

    /// <summary>The header list as the client sent it: the pseudo-headers Kestrel keeps apart, then every field.</summary>
    private static long ListBytes(HttpRequest request)
    {
        // :authority arrives as Host, among the fields.
        long size = 3 * FieldOverhead + ":method".Length + request.Method.Length + ":path".Length + (request.Path.Value?.Length ?? 0)
                    + (request.QueryString.Value?.Length ?? 0);
        size += ":scheme".Length + request.Scheme.Length;
        foreach (var (name, values) in request.Headers)
            foreach (string? value in values)
                size += FieldOverhead + name.Length + (value?.Length ?? 0);
        return size;
    }
}
