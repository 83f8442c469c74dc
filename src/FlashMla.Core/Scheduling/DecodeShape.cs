using FlashMla.Core.Cache;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Scheduling;

/// <summary>
/// What a decode request asks for apart from its tensors (layer, sequences, s_q, h_q, scale), checked once,
/// at the edge, against the scheduler's limits: the only way to a <see cref="DecodeWork"/>. The host checks the
/// wire tensors against these extents (<see cref="QueryBytes"/>, <see cref="NewKvBytes"/>); the layer against the
/// pools and the sequences against the cache are checked on the scheduler loop, where that state lives. Every
/// refusal is <see cref="CacheError.InvalidArgument"/> with a message for the caller.
/// </summary>
public sealed class DecodeShape
{
    private DecodeShape(int layer, ulong[] sequenceIds, int queryTokens, int heads, float softmaxScale)
    {
        Layer = layer;
        SequenceIds = sequenceIds;
        QueryTokens = queryTokens;
        Heads = heads;
        SoftmaxScale = softmaxScale;
    }

    public int Layer { get; }
    public ulong[] SequenceIds { get; }
    public int BatchSize => SequenceIds.Length;
    public int QueryTokens { get; }
    public int Heads { get; }

    /// <summary>The scale to use: the request's, or <see cref="MlaDims.DefaultSoftmaxScale"/> when it sent 0.</summary>
    public float SoftmaxScale { get; }

    /// <summary>Bytes of q: bf16 <c>[b, s_q, h_q, 576]</c>.</summary>
    public long QueryBytes => (long)BatchSize * QueryTokens * Heads * MlaDims.HeadDimK * sizeof(ushort);

    /// <summary>Bytes of the new rows when the request carries them: bf16 <c>[b, s_q, 576]</c>.</summary>
    public long NewKvBytes => (long)BatchSize * QueryTokens * MlaDims.KvRowBytes;

    /// <summary>
    /// Checks a request's numbers against <paramref name="limits"/> (the scheduler's <see cref="Scheduler.Options"/>,
    /// which include what its backend can run). The wide parameter types take the wire's values as they come.
    /// </summary>
    public static DecodeShape Create(SchedulerOptions limits, ulong layer, IReadOnlyList<ulong> sequenceIds, ulong queryTokens, ulong heads,
        float softmaxScale)
    {
        ArgumentNullException.ThrowIfNull(limits);
        ArgumentNullException.ThrowIfNull(sequenceIds);
        if (sequenceIds.Count == 0) throw CacheException.Invalid("the request names no sequences");
        if (sequenceIds.Count > limits.MaxBatchSequences)
            throw CacheException.Invalid($"the request names {sequenceIds.Count} sequences, more than the limit of {limits.MaxBatchSequences}");
        if (queryTokens < 1 || queryTokens > (ulong)limits.MaxQueryTokens)
            throw CacheException.Invalid($"s_q must be in 1..{limits.MaxQueryTokens}, got {queryTokens}");
        if (heads < 1 || heads > (ulong)limits.MaxHeads)
            throw CacheException.Invalid($"h_q must be in 1..{limits.MaxHeads}, got {heads}");
        if (queryTokens * heads > (ulong)limits.MaxQueryRowsPerSequence)
            throw CacheException.Invalid(
                $"s_q * h_q = {queryTokens * heads} is more than this server's backend takes per sequence ({limits.MaxQueryRowsPerSequence}); send fewer query tokens per request");
        if (layer > int.MaxValue) throw CacheException.Invalid($"layer {layer} is out of range");
        if (!float.IsFinite(softmaxScale) || softmaxScale < 0)
            throw CacheException.Invalid($"softmax_scale must be a finite non-negative number, got {softmaxScale}");
        var ids = new ulong[sequenceIds.Count];
        var seen = new HashSet<ulong>(ids.Length);
        for (int i = 0; i < ids.Length; i++)
        {
            ids[i] = sequenceIds[i];
            if (!seen.Add(ids[i])) throw CacheException.Invalid($"sequence {ids[i]} appears twice in one request");
        }
        float scale = softmaxScale == 0 ? MlaDims.DefaultSoftmaxScale : softmaxScale;
        return new DecodeShape((int)layer, ids, (int)queryTokens, (int)heads, scale);
    }
}
