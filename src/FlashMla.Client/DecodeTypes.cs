using FlashMla.Contracts.V1;

namespace FlashMla.Client;

/// <summary>
/// One decode step of a batch: <see cref="Q"/> bf16 <c>[b, s_q, h_q, 576]</c>, <see cref="NewKv"/> bf16
/// <c>[b, s_q, 576]</c> or empty (attend over the cache as it is), scale 0 for 1/sqrt(576).
/// </summary>
public sealed record DecodeInput(int Layer, IReadOnlyList<ulong> SequenceIds, int QueryTokens, int Heads,
    ReadOnlyMemory<ushort> Q, ReadOnlyMemory<ushort> NewKv = default, float SoftmaxScale = 0)
{
    internal DecodeRequest ToRequest(ulong requestId)
    {
        long b = SequenceIds.Count;
        var request = new DecodeRequest
        {
            RequestId = requestId,
            Layer = (uint)Layer,
            SQ = (uint)QueryTokens,
            HQ = (uint)Heads,
            SoftmaxScale = SoftmaxScale,
            Q = TensorBytes.Bf16(Q.Span, b, QueryTokens, Heads, 576),
        };
        request.SequenceIds.Add(SequenceIds);
        if (!NewKv.IsEmpty) request.Kv = TensorBytes.Bf16(NewKv.Span, b, QueryTokens, 576);
        return request;
    }
}

/// <summary>The outputs of one step, viewed in the response's own buffers (no copy).</summary>
public sealed class DecodeOutput(DecodeResponse response)
{
    /// <summary>bf16 <c>[b, s_q, h_q, 512]</c>.</summary>
    public ReadOnlySpan<ushort> Out => TensorBytes.AsBf16(response.Out);

    /// <summary>fp32 <c>[b, h_q, s_q]</c>.</summary>
    public ReadOnlySpan<float> Lse => TensorBytes.AsFloat(response.Lse);

    /// <summary>Payload bytes of the response (out + lse).</summary>
    public long PayloadBytes => response.Out.Data.Length + response.Lse.Data.Length;

    public Contracts.V1.DecodeTimings Timings => response.Timings;
    public ulong RequestId => response.RequestId;
}
