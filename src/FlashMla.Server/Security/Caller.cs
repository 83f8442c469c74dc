using FlashMla.Core.Cache;
using Grpc.Core;

namespace FlashMla.Server.Security;

/// <summary>
/// Who made a call: its tenant, and the token it showed (none while authentication is off). Set by the port's
/// authentication before the call's body is read (<see cref="GrpcPortAuthentication"/> on Kestrel's port, the
/// data-plane connection on its own), found by the services in the call's user state, on either port the same way.
/// </summary>
public sealed class Caller(Tenant tenant, Credential? credential)
{
    /// <summary>The key of the caller in a call's user state (on Kestrel's port grpc-dotnet's user state is HttpContext.Items).</summary>
    internal static readonly object Key = new();

    public Tenant Tenant { get; } = tenant;
    public Credential? Credential { get; } = credential;

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

    /// <summary>Refuses (UNAUTHENTICATED) once the caller's token is no longer in the token file.</summary>
    public void EnsureEntitled()
    {
        if (Credential is { Revoked: true }) throw new RpcException(new Status(StatusCode.Unauthenticated, "the call's bearer token has been revoked"));
    }
}

/// <summary>One token of the token file, kept as its SHA-256 hash; revoked when a reload no longer lists it.</summary>
public sealed class Credential
{
    private volatile bool _revoked;

    public Credential(byte[] hash, Tenant tenant)
    {
        Hash = hash;
        Tenant = tenant;
        Caller = new Caller(tenant, this);
    }

    internal byte[] Hash { get; }
    public Tenant Tenant { get; }

    /// <summary>Who shows this token (one object for all its calls).</summary>
    public Caller Caller { get; }
    public bool Revoked => _revoked;
    internal void Revoke() => _revoked = true;
}
