using Microsoft.AspNetCore.Server.Kestrel.Core;

namespace FlashMla.Server.Hosting;

/// <summary>The listeners (gRPC, metrics, data plane), so that the ports bound (port 0 picks one) can be read after start.</summary>
public sealed class BoundEndpoints
{
    internal ListenOptions? Grpc { get; set; }
    internal ListenOptions? Metrics { get; set; }
    public int GrpcPort => Grpc?.IPEndPoint?.Port ?? 0;
    public int MetricsPort => Metrics?.IPEndPoint?.Port ?? 0;

    /// <summary>The data-plane listener's port once it is bound; 0 when it is off.</summary>
    public int DataPlanePort { get; internal set; }
}
