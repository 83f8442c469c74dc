using FlashMla.Contracts.V1;
using FlashMla.Server.DataPlane;
using FlashMla.Server.Hosting;
using FlashMla.Server.Services;
using Grpc.Core;
using Grpc.Health.V1;

namespace FlashMla.Server.Security;

/// <summary>
/// Authentication of Kestrel's gRPC port, as middleware before any gRPC handler: a call without a valid bearer token
/// (or, with Tls:ClientCertificateTenant on, a client certificate that names a tenant; TenantDirectory.Authenticate)
/// is answered UNAUTHENTICATED (trailers-only) before its request body is read, so it never reaches a parser. Health
/// checks stay open (probes carry no token); the metrics port is left alone (it serves /metrics and /healthz over
/// HTTP/1.1, where no gRPC call can be made). The caller goes into the call's items, where the services find it
/// (<see cref="Caller.Of"/>).
/// </summary>
internal sealed class GrpcPortAuthentication(RequestDelegate next, TenantDirectory tenants, BoundEndpoints endpoints, RequestFailures failures)
{
    private const string HealthPrefix = "/grpc.health.v1.Health/";

    /// <summary>The methods served, the only values of the failure counter's method label (any other path is "other").</summary>
    private static readonly HashSet<string> KnownMethods =
    [
        .. new[] { KvCache.Descriptor, Decoder.Descriptor, Health.Descriptor, Grpc.Reflection.V1Alpha.ServerReflection.Descriptor,
            Grpc.Reflection.V1.ServerReflection.Descriptor }
            .SelectMany(service => service.Methods.Select(method => "/" + service.FullName + "/" + method.Name)),
    ];

    /// <summary>The failure counter's method label of a request path: the path of a served method, else "other".</summary>
    public static string MethodLabel(string? path) => path is not null && KnownMethods.Contains(path) ? path : "other";

    public Task InvokeAsync(HttpContext context)
    {
        if (context.Connection.LocalPort != endpoints.GrpcPort || context.Request.Path.StartsWithSegments(HealthPrefix.TrimEnd('/')))
            return next(context);
        Caller caller;
        try
        {
            // The client certificate Kestrel verified in the handshake (mTLS): the same object for every call of its connection.
            caller = tenants.Authenticate(context.Request.Headers.Authorization.ToString() is { Length: > 0 } value ? value : null,
                tenants.CertificateNames.Of(context.Connection.ClientCertificate));
        }
        catch (RpcException refusal)
        {
            failures.Record(MethodLabel(context.Request.Path.Value), refusal);
            return RefuseAsync(context, refusal.Status);
        }
        context.Items[Caller.Key] = caller;
        return next(context);
    }

    /// <summary>A trailers-only gRPC response: HTTP 200 with grpc-status in the headers and no body (every refusal
    /// middleware of the gRPC port answers through it).</summary>
    internal static Task RefuseAsync(HttpContext context, Status status)
    {
        var response = context.Response;
        response.StatusCode = StatusCodes.Status200OK;
        response.ContentType = "application/grpc";
        response.Headers["grpc-status"] = ((int)status.StatusCode).ToString(System.Globalization.CultureInfo.InvariantCulture);
        response.Headers["grpc-message"] = GrpcWireHeaders.PercentEncode(status.Detail, 1024);
        return Task.CompletedTask;
    }
}
