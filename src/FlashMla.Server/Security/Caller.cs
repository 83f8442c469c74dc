using FlashMla.Core.Cache;
using Grpc.Core;

namespace FlashMla.Server.Security;

/// <summary>
/// Who made a call: its tenant, and what showed it: a bearer token, a client certificate's name, or both (none while
/// authentication is off). Set by the port's authentication before the call's body is read
/// (<see cref="GrpcPortAuthentication"/> on Kestrel's port, the data-plane connection on its own), found by the
/// services in the call's user state, on either port the same way.
/// </summary>
public sealed class Caller(Tenant tenant, Credential? credential, Credential? certificate = null)
{
    /// <summary>The key of the caller in a call's user state (on Kestrel's port grpc-dotnet's user state is HttpContext.Items).</summary>
    internal static readonly object Key = new();

    public Tenant Tenant { get; } = tenant;

    /// <summary>The bearer token the call showed (null: none, or authentication off).</summary>
    public Credential? Credential { get; } = credential;

    /// <summary>The client certificate's name that named the tenant (null: none, or Tls:ClientCertificateTenant off).</summary>
    public Credential? Certificate { get; } = certificate;

    /// <summary>
    /// The caller of <paramref name="context"/>, still entitled: UNAUTHENTICATED when the call carries none (fail
    /// closed: a call that reached a service without passing authentication is refused) or its token has been revoked
    /// since (a reload of the token file ends a long stream's next request too).
    /// </summary>
    public static Caller Of(ServerCallContext context)
    {
        if (!context.UserState.TryGetValue(Key, out var value) || value is not Caller caller)
            throw new RpcException(new Status(StatusCode.Unauthenticated, "the call was not authenticated"));
        caller.EnsureEntitled();
        return caller;
    }

    /// <summary>Refuses (UNAUTHENTICATED) once the caller's token or certificate name is no longer in the token file (or names another tenant).</summary>
    public void EnsureEntitled()
    {
        if (Credential is { Revoked: true }) throw new RpcException(new Status(StatusCode.Unauthenticated, "the call's bearer token has been revoked"));
        if (Certificate is { Revoked: true })
            throw new RpcException(new Status(StatusCode.Unauthenticated, "the client certificate's name no longer names this tenant in the token file"));
    }
}

/// <summary>
/// One token of the token file, kept as its SHA-256 hash, or one certificate name of it (<see cref="CertificateName"/>);
/// revoked when a reload no longer lists it for the same tenant.
/// </summary>
public sealed class Credential
{
    private volatile bool _revoked;

    public Credential(byte[] hash, Tenant tenant, string? certificateName = null)
    {
        Hash = hash;
        Tenant = tenant;
        CertificateName = certificateName;
        Caller = certificateName is null ? new Caller(tenant, this) : new Caller(tenant, null, this);
    }

    internal byte[] Hash { get; }
    public Tenant Tenant { get; }

    /// <summary>The client certificate name this credential is; null for a bearer token.</summary>
    public string? CertificateName { get; }

    /// <summary>Who shows this token, or this certificate without a token (one object for all its calls).</summary>
    public Caller Caller { get; }
    public bool Revoked => _revoked;
    internal void Revoke() => _revoked = true;
}
