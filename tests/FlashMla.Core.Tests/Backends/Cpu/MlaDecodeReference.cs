using FlashMla.Core.Tensors;

namespace FlashMla.Core.Tests.Backends.Cpu;

/// <summary>
/// MLA decode in float64, the textbook way: all scores of a row, their max, the weights, the
/// weighted sum of V. No pages, no online softmax, nothing shared with the backend but
/// <see cref="Bf16.ToFloat(ushort)"/>.
/// </summary>
internal static class MlaDecodeReference
{
    /// <param name="kv">Per sequence, its <c>[length, 576]</c> bf16 rows in position order.</param>
    /// <param name="q">bf16 <c>[b, s_q, h_q, 576]</c>.</param>
    /// <returns><c>out [b, s_q, h_q, 512]</c> and <c>lse [b, h_q, s_q]</c>; rows that see nothing are 0 and -inf.</returns>
    public static (double[] Out, double[] Lse) Decode(ushort[][] kv, ushort[] q, int queryTokens, int heads, float scale)
    {
        const int dk = MlaDims.HeadDimK, dv = MlaDims.HeadDimV;
        int batch = kv.Length;
        var output = new double[batch * queryTokens * heads * dv];
        var lse = new double[batch * heads * queryTokens];
        var qRow = new double[dk];

        for (int s = 0; s < batch; s++)
        {
            int length = kv[s].Length / dk;
            var k = new double[kv[s].Length];
            for (int i = 0; i < k.Length; i++) k[i] = Bf16.ToFloat(kv[s][i]);
            var scores = new double[length];

            for (int t = 0; t < queryTokens; t++)
            for (int h = 0; h < heads; h++)
            {
                int row = (s * queryTokens + t) * heads + h;
                int lseIndex = (s * heads + h) * queryTokens + t;
                int visible = length - queryTokens + t + 1;
                if (visible <= 0)
                {
                    lse[lseIndex] = double.NegativeInfinity;
                    continue;
                }

                for (int c = 0; c < dk; c++) qRow[c] = Bf16.ToFloat(q[row * dk + c]);
                double max = double.NegativeInfinity;
                for (int j = 0; j < visible; j++)
                {
                    double dot = 0;
                    for (int c = 0; c < dk; c++) dot += qRow[c] * k[j * dk + c];
                    scores[j] = dot * scale;
                    max = Math.Max(max, scores[j]);
                }

                double sum = 0;
                for (int j = 0; j < visible; j++) sum += Math.Exp(scores[j] - max);
                for (int j = 0; j < visible; j++)
                {
                    double weight = Math.Exp(scores[j] - max) / sum;
                    for (int c = 0; c < dv; c++) output[row * dv + c] += weight * k[j * dk + c];
                }
                lse[lseIndex] = max + Math.Log(sum);
            }
        }
        return (output, lse);
    }
}
