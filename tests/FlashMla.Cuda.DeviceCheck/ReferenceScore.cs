using FlashMla.Core.Backends;
using FlashMla.Core.Tensors;

namespace FlashMla.Cuda.DeviceCheck;

/// <summary>
/// A finished batch's out and lse against <see cref="MlaReference"/> over the mirror: out's relative error under
/// 1e-2, lse within 1e-3 absolute, no NaN, and -infinity exactly where a row sees nothing.
/// </summary>
internal readonly record struct ReferenceScore(double OutRelativeError, double LseError, int NaN, int BadLse)
{
    public bool Passes => NaN == 0 && OutRelativeError < 1e-2 && LseError < 1e-3 && BadLse == 0;

    public override string ToString() => $"rel {OutRelativeError:E2}, lse err {LseError:E1}, NaN {NaN}, bad lse {BadLse}";

    /// <summary>Against the reference over the bf16 rows of <paramref name="mirror"/>.</summary>
    public static ReferenceScore Of(KvMirror mirror, DecodeBatch batch) => Score(batch, (s, table, lens) =>
    {
        ushort[] kv = mirror.Sequence(batch.Layer, table, batch.BlockTableStride, s, lens[s]);
        return (q, visible, outRow) => MlaReference.AttendRow(q, kv, visible, batch.SoftmaxScale, outRow);
    });

    /// <summary>Against the reference over the fp8 tokens of <paramref name="tokens"/> as unrounded code x scale values.</summary>
    public static ReferenceScore Of(Fp8TokenMirror tokens, DecodeBatch batch) => Score(batch, (s, table, lens) =>
    {
        float[] kv = tokens.Sequence(batch.Layer, table, batch.BlockTableStride, s, lens[s]);
        return (q, visible, outRow) => MlaReference.AttendRow(q, kv, visible, batch.SoftmaxScale, outRow);
    });

    /// <summary>One query row's reference: out into <paramref name="outRow"/>, lse returned.</summary>
    private delegate double RowReference(ReadOnlySpan<ushort> q, int visible, Span<double> outRow);

    private static ReferenceScore Score(DecodeBatch batch, Func<int, int[], int[], RowReference> sequenceReference)
    {
        int b = batch.BatchSize, sq = batch.QueryTokens, hq = batch.Heads, rows = sq * hq;
        var q = new ushort[batch.Q.Length];
        batch.Q.CopyTo(q);
        int[] lens = batch.SeqLens.ToArray(), table = batch.BlockTable.ToArray();
        var outRef = new double[batch.Out.Length];
        var lseRef = new double[batch.Lse.Length];
        var reference = new RowReference[b];
        Parallel.For(0, b, s => reference[s] = sequenceReference(s, table, lens));
        // Rows in parallel (a 32k-token sequence at h_q 128 is many seconds on one core).
        Parallel.For(0, b * rows, row =>
        {
            int s = row / rows, t = row % rows / hq, h = row % hq;
            lseRef[(s * hq + h) * sq + t] = reference[s](q.AsSpan(row * MlaDims.HeadDimK, MlaDims.HeadDimK),
                MlaReference.Visible(lens[s], sq, t), outRef.AsSpan(row * MlaDims.HeadDimV, MlaDims.HeadDimV));
        });

        ReadOnlySpan<ushort> got = batch.Out.Span;
        double diff2 = 0, ref2 = 0;
        int nan = 0;
        for (int i = 0; i < got.Length; i++)
        {
            double g = Bf16.ToFloat(got[i]);
            if (double.IsNaN(g)) { nan++; continue; }
            diff2 += (g - outRef[i]) * (g - outRef[i]);
            ref2 += outRef[i] * outRef[i];
        }
        double lseErr = 0;
        int lseBad = 0;
        ReadOnlySpan<float> lse = batch.Lse.Span;
        for (int i = 0; i < lse.Length; i++)
        {
            if (double.IsNegativeInfinity(lseRef[i])) { if (!float.IsNegativeInfinity(lse[i])) lseBad++; continue; }
            if (!float.IsFinite(lse[i])) { lseBad++; continue; }
            lseErr = Math.Max(lseErr, Math.Abs(lse[i] - lseRef[i]));
        }
        return new ReferenceScore(Math.Sqrt(diff2 / Math.Max(ref2, 1e-300)), lseErr, nan, lseBad);
    }
}
