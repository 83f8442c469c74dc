namespace FlashMla.Core.Cache;

/// <summary>Limits the cache enforces on requests (validated once at start-up by the host's options).</summary>
public sealed record CacheLimits(int MaxSequenceLength, int MaxSequences)
{
    public static CacheLimits Default { get; } = new(MaxSequenceLength: 131_072, MaxSequences: 65_536);
}
