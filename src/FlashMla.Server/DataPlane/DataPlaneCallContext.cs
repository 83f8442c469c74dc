using Grpc.Core;

namespace FlashMla.Server.DataPlane;

/// <summary>
/// What a gRPC service sees of a data-plane call: its method, peer, deadline and cancellation. Request
/// metadata is not carried (the Decoder service reads none); response headers are the fixed gRPC ones.
/// </summary>
internal sealed class DataPlaneCallContext(DataPlaneCall call, string peer, string host) : ServerCallContext
{
    private readonly Metadata _requestHeaders = [];
    private readonly Metadata _responseTrailers = [];

    protected override string MethodCore => call.Method;
    protected override string HostCore => host;
    protected override string PeerCore => peer;
    protected override DateTime DeadlineCore => call.Deadline;
    protected override Metadata RequestHeadersCore => _requestHeaders;
    protected override CancellationToken CancellationTokenCore => call.CancellationToken;
    protected override Metadata ResponseTrailersCore => _responseTrailers;
    protected override Status StatusCore { get; set; }
    protected override WriteOptions? WriteOptionsCore { get => call.WriteOptions; set => call.WriteOptions = value; }
    protected override AuthContext AuthContextCore { get; } = new(null, []);

    protected override Task WriteResponseHeadersAsyncCore(Metadata responseHeaders) => call.SendHeadersAsync();

    protected override ContextPropagationToken CreatePropagationTokenCore(ContextPropagationOptions? options) =>
        throw new NotSupportedException("the data-plane listener does not propagate calls");
}
