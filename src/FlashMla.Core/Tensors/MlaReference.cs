namespace FlashMla.Core.Tensors;

/// <summary>
/// MLA decode for one sequence in double precision, written for clarity, not speed: the yardstick that
/// the CLI's demo and verify commands and the tests hold the backends to.
/// </summary>
public static class MlaReference
{
    /// <summary>
    /// <paramref name="q"/> bf16 <c>[s_q, h_q, 576]</c>, <paramref name="kv"/> bf16 <c>[length, 576]</c> (the whole
    /// layer, new rows included); writes <paramref name="output"/> <c>[s_q, h_q, 512]</c> and
    /// <paramref name="lse"/> <c>[h_q, s_q]</c>. Query token i sees positions <c>0 .. length - s_q + i</c>.
    /// </summary>
    public static void Decode(ReadOnlySpan<ushort> q, ReadOnlySpan<ushort> kv, int length, int queryTokens, int heads,
        double scale, Span<double> output, Span<double> lse)
    {
        const int dk = MlaDims.HeadDimK, dv = MlaDims.HeadDimV;
        var scores = new double[Math.Max(length, 1)];
        for (int t = 0; t < queryTokens; t++)
        {
            int visible = Math.Max(0, length - queryTokens + t + 1);
            for (int h = 0; h < heads; h++)
            {
                var qRow = q.Slice((t * heads + h) * dk, dk);
                var outRow = output.Slice((t * heads + h) * dv, dv);
                outRow.Clear();
                if (visible == 0)
                {
                    lse[h * queryTokens + t] = double.NegativeInfinity;
                    continue;
                }
                double max = double.NegativeInfinity;
                for (int j = 0; j < visible; j++)
                {
                    double dot = 0;
                    var kRow = kv.Slice(j * dk, dk);
                    for (int c = 0; c < dk; c++) dot += (double)Bf16.ToFloat(qRow[c]) * Bf16.ToFloat(kRow[c]);
                    scores[j] = dot * scale;
                    max = Math.Max(max, scores[j]);
                }
                double sum = 0;
                for (int j = 0; j < visible; j++) sum += scores[j] = Math.Exp(scores[j] - max);
                for (int j = 0; j < visible; j++)
                {
                    double w = scores[j] / sum;
                    var vRow = kv.Slice(j * dk, dv);
                    for (int c = 0; c < dv; c++) outRow[c] += w * Bf16.ToFloat(vRow[c]);
                }
                lse[h * queryTokens + t] = max + Math.Log(sum);
            }
        }
    }

    /// <summary><c>||a - b|| / ||b||</c> over finite values; NaN in <paramref name="actual"/> gives NaN.</summary>
    public static double RelativeError(ReadOnlySpan<double> actual, ReadOnlySpan<double> expected)
    {
        double num = 0, den = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            double d = actual[i] - expected[i];
            num += d * d;
            den += expected[i] * expected[i];
        }
        return den == 0 ? Math.Sqrt(num) : Math.Sqrt(num / den);
    }
}
