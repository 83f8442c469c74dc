namespace FlashMla.Client.Transport;

/// <summary>
/// Puts <c>authorization: Bearer &lt;token&gt;</c> on every request that passes (<see cref="FlashMlaClientOptions.BearerToken"/>).
/// Under every HTTP/2 path of the client at once: Grpc.Net.Client's channels over either handler, and the direct decode
/// calls, which send their own requests through the same handler. A header rather than gRPC call credentials, which
/// Grpc.Net.Client sends over TLS only.
/// </summary>
internal sealed class BearerTokenHandler : DelegatingHandler
{
    private readonly string _value;

    public BearerTokenHandler(string token, HttpMessageHandler inner) : base(inner)
    {
        if (string.IsNullOrWhiteSpace(token) || token.Any(c => c is <= ' ' or > '~'))
            throw new ArgumentException("a bearer token is printable ASCII without spaces", nameof(token));
        _value = "Bearer " + token;
    }

    protected override Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        request.Headers.Remove("authorization");
        request.Headers.TryAddWithoutValidation("authorization", _value);
        return base.SendAsync(request, cancellationToken);
    }
}
