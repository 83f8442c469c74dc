namespace FlashMla.Core.Cache;

/// <summary>A tenant's limits; null: none beyond the server's own (<see cref="CacheLimits"/>, free blocks).</summary>
public sealed record TenantQuota(int? MaxBlocks = null, int? MaxSequences = null, int? MaxRequestsInFlight = null)
{
    public static TenantQuota Unlimited { get; } = new();
}

/// <summary>Which of a tenant's quotas refused a request (a metric label).</summary>
public enum TenantQuotaKind
{
    Blocks,
    Sequences,
    RequestsInFlight,
}

/// <summary>
/// Who owns sequences: every sequence belongs to the tenant that created it (a fork to its parent's), and a request
/// of another tenant that names it is answered as if it did not exist. Identity is the object: the server keeps one
/// per tenant name for its whole life (a reload of the token file changes <see cref="Quota"/> and
/// <see cref="IsAdmin"/>, never the object), so sequences keep their owner across reloads. The usage counters are
/// kept by the one cache the tenant's sequences live in and written on its scheduler loop only; other threads read
/// them (metrics, stats). <see cref="RequestsInFlight"/> is kept by the request edge, on any thread.
/// </summary>
public sealed class Tenant(string name, TenantQuota? quota = null, bool isAdmin = false)
{
    /// <summary>The tenant of every call while authentication is off (and its metric label).</summary>
    public const string AnonymousName = "anonymous";

    private volatile TenantQuota _quota = quota ?? TenantQuota.Unlimited;
    private volatile bool _isAdmin = isAdmin;
    private int _requestsInFlight;
    private long _quotaRefusalsBlocks, _quotaRefusalsSequences, _quotaRefusalsRequests;

    public string Name { get; } = name;

    public TenantQuota Quota
    {
        get => _quota;
        set => _quota = value ?? throw new ArgumentNullException(nameof(value));
    }

    /// <summary>An admin tenant's GetStats shows the whole cache's counts, every other tenant's its own.</summary>
    public bool IsAdmin
    {
        get => _isAdmin;
        set => _isAdmin = value;
    }

    /// <summary>KV blocks this tenant holds (each once, however many of its sequences share it).</summary>
    public int BlocksHeld { get; internal set; }

    /// <summary>Live sequences this tenant owns.</summary>
    public int Sequences { get; internal set; }

    public long DecodeRequests { get; internal set; }

    /// <summary>Backend decode calls that carried at least one of this tenant's requests.</summary>
    public long DecodeBatches { get; internal set; }

    /// <summary>The batch number of the last batch counted in <see cref="DecodeBatches"/> (so a batch counts once).</summary>
    internal long LastBatchCounted { get; set; } = -1;

    public long ReclaimedSequences { get; internal set; }

    /// <summary>This tenant's requests refused for want of blocks: the cache's free list or its own quota.</summary>
    public long RejectedNoSpace { get; internal set; }

    public int RequestsInFlight => Volatile.Read(ref _requestsInFlight);

    public long QuotaRefusals(TenantQuotaKind kind) => kind switch
    {
        TenantQuotaKind.Blocks => Interlocked.Read(ref _quotaRefusalsBlocks),
        TenantQuotaKind.Sequences => Interlocked.Read(ref _quotaRefusalsSequences),
        _ => Interlocked.Read(ref _quotaRefusalsRequests),
    };

    /// <summary>
    /// Counts one more request in flight, or refuses it (RESOURCE_EXHAUSTED, nothing counted) at the quota. Pair
    /// every success with <see cref="ExitRequest"/>.
    /// </summary>
    public void EnterRequest()
    {
        int limit = _quota.MaxRequestsInFlight ?? int.MaxValue;
        if (Interlocked.Increment(ref _requestsInFlight) <= limit) return;
        Interlocked.Decrement(ref _requestsInFlight);
        throw RefuseQuota(TenantQuotaKind.RequestsInFlight, $"tenant '{Name}' already has its maximum of {limit} requests in flight");
    }

    public void ExitRequest() => Interlocked.Decrement(ref _requestsInFlight);

    /// <summary>Counts a refusal by one of the quotas and returns the error that says so (RESOURCE_EXHAUSTED).</summary>
    internal CacheException RefuseQuota(TenantQuotaKind kind, string message)
    {
        switch (kind)
        {
            case TenantQuotaKind.Blocks: Interlocked.Increment(ref _quotaRefusalsBlocks); break;
            case TenantQuotaKind.Sequences: Interlocked.Increment(ref _quotaRefusalsSequences); break;
            default: Interlocked.Increment(ref _quotaRefusalsRequests); break;
        }
        return new CacheException(CacheError.ResourceExhausted, message);
    }

    public override string ToString() => Name;
}
