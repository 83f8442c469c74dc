using FlashMla.Core.Tensors;

namespace FlashMla.Cli;

/// <summary>
/// The outputs a decode request should have, computed here by the double-precision reference
/// (<see cref="MlaReference"/>): the one place the CLI calls it, so that demo and verify hold the server to the
/// same yardstick and a new reference is wired in once.
/// </summary>
internal static class ReferenceOutputs
{
    /// <summary>What <see cref="Decode"/> compares against, in words for the commands' output.</summary>
    public const string Description = "the double-precision MLA reference (MlaReference) computed here";

    /// <summary>
    /// <paramref name="kv"/>[i]: sequence i's whole layer, bf16 <c>[length_i, 576]</c>, the request's new rows included;
    /// <paramref name="q"/> bf16 <c>[b, s_q, h_q, 576]</c>. Returns out <c>[b, s_q, h_q, 512]</c> and lse <c>[b, h_q, s_q]</c>,
    /// in the layout of a decode response. Heads are independent, so each (sequence, head) is one work item.
    /// </summary>
    public static (double[] Out, double[] Lse) Decode(IReadOnlyList<ushort[]> kv, ushort[] q, int queryTokens, int heads)
    {
        const int dk = MlaDims.HeadDimK, dv = MlaDims.HeadDimV;
        int b = kv.Count;
        if (q.Length != (long)b * queryTokens * heads * dk)
            throw new ArgumentException($"q has {q.Length} elements; expected b {b} x s_q {queryTokens} x h_q {heads} x {dk}", nameof(q));
        var output = new double[(long)b * queryTokens * heads * dv];
        var lse = new double[(long)b * heads * queryTokens];
        Parallel.For(0, b * heads, item =>
        {
            int i = item / heads, h = item % heads;
            var qHead = new ushort[queryTokens * dk];
            for (int t = 0; t < queryTokens; t++)
                q.AsSpan(((i * queryTokens + t) * heads + h) * dk, dk).CopyTo(qHead.AsSpan(t * dk, dk));
            var outHead = new double[queryTokens * dv];
            var lseHead = new double[queryTokens];
            MlaReference.Decode(qHead, kv[i], kv[i].Length / dk, queryTokens, 1, MlaDims.DefaultSoftmaxScale, outHead, lseHead);
            for (int t = 0; t < queryTokens; t++)
            {
                outHead.AsSpan(t * dv, dv).CopyTo(output.AsSpan(((i * queryTokens + t) * heads + h) * dv, dv));
                lse[(i * heads + h) * queryTokens + t] = lseHead[t];
            }
        });
        return (output, lse);
    }
}
