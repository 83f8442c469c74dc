using System.Runtime.CompilerServices;

namespace FlashMla.Core.Tensors;

/// <summary>
/// MLA decode in double precision, written for clarity, not speed, the textbook way: all scores of a query row,
/// their max, the weights, the weighted sum of V. No pages, no online softmax, nothing shared with the backends
/// but <see cref="Bf16.ToFloat(ushort)"/>. The one yardstick that the tests, the device tests and the CLI's demo
/// and verify commands hold the backends to.
/// </summary>
public static class MlaReference
{
    /// <summary>
    /// One sequence: <paramref name="q"/> bf16 <c>[s_q, h_q, 576]</c>, <paramref name="kv"/> bf16 <c>[length, 576]</c>
    /// (the whole layer, new rows included); writes <paramref name="output"/> <c>[s_q, h_q, 512]</c> and
    /// <paramref name="lse"/> <c>[h_q, s_q]</c>. Query token i sees positions <c>0 .. length - s_q + i</c>; a row that
    /// sees none gets out 0 and lse -infinity.
    /// </summary>
    public static void Decode(ReadOnlySpan<ushort> q, ReadOnlySpan<ushort> kv, int length, int queryTokens, int heads,
        double scale, Span<double> output, Span<double> lse)
    {
        const int dk = MlaDims.HeadDimK, dv = MlaDims.HeadDimV;
        for (int t = 0; t < queryTokens; t++)
        {
            int visible = Visible(length, queryTokens, t);
            for (int h = 0; h < heads; h++)
            {
                int row = t * heads + h;
                lse[h * queryTokens + t] = AttendRow(q.Slice(row * dk, dk), kv, visible, scale, output.Slice(row * dv, dv));
            }
        }
    }

    /// <summary>Positions query token <paramref name="token"/> of <paramref name="queryTokens"/> sees in a sequence of <paramref name="length"/>.</summary>
    public static int Visible(int length, int queryTokens, int token) => Math.Max(0, length - queryTokens + token + 1);

    /// <summary>
    /// One query row <paramref name="qRow"/> (576 bf16) against the first <paramref name="visible"/> rows of
    /// <paramref name="kv"/>: writes softmax(q K^T * scale) V into <paramref name="outRow"/> (512) and returns the
    /// natural log of the softmax denominator (-infinity, and out 0, when it sees nothing). Rows are independent,
    /// so a caller with many may run them in parallel.
    /// </summary>
    public static double AttendRow(ReadOnlySpan<ushort> qRow, ReadOnlySpan<ushort> kv, int visible, double scale, Span<double> outRow) =>
        Attend(qRow, kv, visible, scale, outRow);

    /// <summary>
    /// The same over KV values given as floats: an FP8 cache's codes times their scales without the format's bf16
    /// rounding (<see cref="Fp8KvFormat.DequantizeRowExact"/>), what a kernel that applies the scales in fp32 around its
    /// products computes.
    /// </summary>
    public static double AttendRow(ReadOnlySpan<ushort> qRow, ReadOnlySpan<float> kv, int visible, double scale, Span<double> outRow) =>
        Attend(qRow, kv, visible, scale, outRow);

    // One body for both element types (the JIT specializes it per type: no boxing, no branch per value).
    private static double Value<T>(T x) where T : unmanaged =>
        typeof(T) == typeof(ushort) ? Bf16.ToFloat(Unsafe.As<T, ushort>(ref x)) : Unsafe.As<T, float>(ref x);

    private static double Attend<T>(ReadOnlySpan<ushort> qRow, ReadOnlySpan<T> kv, int visible, double scale, Span<double> outRow)
        where T : unmanaged
    {
        const int dk = MlaDims.HeadDimK, dv = MlaDims.HeadDimV;
        outRow.Clear();
        if (visible == 0) return double.NegativeInfinity;
        var scores = new double[visible];
        double max = double.NegativeInfinity;
        for (int j = 0; j < visible; j++)
        {
            double dot = 0;
            var kRow = kv.Slice(j * dk, dk);
            for (int c = 0; c < dk; c++) dot += (double)Bf16.ToFloat(qRow[c]) * Value(kRow[c]);
            scores[j] = dot * scale;
            max = Math.Max(max, scores[j]);
        }
        double sum = 0;
        for (int j = 0; j < visible; j++) sum += scores[j] = Math.Exp(scores[j] - max);
        for (int j = 0; j < visible; j++)
        {
            double weight = scores[j] / sum;
            var vRow = kv.Slice(j * dk, dv);
            for (int c = 0; c < dv; c++) outRow[c] += weight * Value(vRow[c]);
        }
        return max + Math.Log(sum);
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
