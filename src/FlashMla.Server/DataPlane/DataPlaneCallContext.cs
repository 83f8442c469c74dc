using Grpc.Core;

namespace FlashMla.Server.DataPlane;

/// <summary>
/// What a gRPC service sees of a data-plane call: its method, peer, deadline and cancellation, which this
/// context owns (the grpc-timeout timer, linked to the connection's closing). Request metadata is not carried
/// (the Decoder service reads none); response headers are the fixed gRPC ones.
/// </summary>
internal sealed class DataPlaneCallContext : ServerCallContext, IDisposable
{
    private readonly string _method, _host, _peer;
    private readonly CancellationTokenSource _cancellation;
    private readonly CancellationTokenSource? _deadline;
    private readonly DateTime _deadlineAt = DateTime.MaxValue;
    private readonly CancellationToken _token; // kept: stray readers may still ask for it after Dispose
    private readonly Metadata _requestHeaders = [];
    private readonly Metadata _responseTrailers = [];

    public DataPlaneCallContext(GrpcRequestHead head, string peer, CancellationToken connectionClosing)
    {
        (_method, _host, _peer) = (head.Path, head.Authority, peer);
        if (head.Timeout is { } timeout && timeout < TimeSpan.FromDays(1))
        {
            // A source of its own, so that its firing (a little early, as timers may) is known to be the deadline.
            _deadlineAt = DateTime.UtcNow + timeout;
            _deadline = new CancellationTokenSource(timeout);
            _cancellation = CancellationTokenSource.CreateLinkedTokenSource(connectionClosing, _deadline.Token);
        }
        else
        {
            _cancellation = CancellationTokenSource.CreateLinkedTokenSource(connectionClosing);
        }
        _token = _cancellation.Token;
    }

    /// <summary>True once the grpc-timeout ran out (or its time passed).</summary>
    public bool DeadlinePassed => _deadline?.IsCancellationRequested == true || (_deadlineAt != DateTime.MaxValue && DateTime.UtcNow >= _deadlineAt);

    /// <summary>Where <see cref="WriteResponseHeadersAsyncCore"/> goes.</summary>
    public DataPlaneResponseWriter? Responses { get; set; }

    /// <summary>The stream was reset or the connection is going: the call stops. Any thread.</summary>
    public void Cancel()
    {
        try
        {
            _cancellation.Cancel();
        }
        catch (ObjectDisposedException)
        {
        }
    }

    public void Dispose()
    {
        _cancellation.Dispose();
        _deadline?.Dispose();
    }

    protected override string MethodCore => _method;
    protected override string HostCore => _host;
    protected override string PeerCore => _peer;
    protected override DateTime DeadlineCore => _deadlineAt;
    protected override Metadata RequestHeadersCore => _requestHeaders;
    protected override CancellationToken CancellationTokenCore => _token;
    protected override Metadata ResponseTrailersCore => _responseTrailers;
    protected override Status StatusCore { get; set; }
    protected override WriteOptions? WriteOptionsCore { get => Responses?.WriteOptions; set => Responses!.WriteOptions = value; }
    protected override AuthContext AuthContextCore { get; } = new(null, []);

    protected override Task WriteResponseHeadersAsyncCore(Metadata responseHeaders) => Responses!.SendHeadersAsync();

    protected override ContextPropagationToken CreatePropagationTokenCore(ContextPropagationOptions? options) =>
        throw new NotSupportedException("the data-plane listener does not propagate calls");
}
