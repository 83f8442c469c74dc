using FlashMla.Core.Backends;
using FlashMla.Core.Tensors;
using FlashMla.Core.Backends.Cpu;

namespace FlashMla.Core.Tests.Backends.Cpu;

/// <summary>
/// A random decode batch laid out in a backend's pool the hostile way: blocks shuffled across
/// the pool, unused block-table entries -1, every row past a sequence's length NaN, outputs
/// poisoned with NaN. Keeps its own copy of the KV so the reference never reads the backend.
/// </summary>
internal sealed class DecodeScenario
{
    public const ushort Bf16NaN = 0x7FC0;

    private DecodeScenario(DecodeBatch batch, ushort[][] kv)
    {
        Batch = batch;
        Kv = kv;
    }

    public DecodeBatch Batch { get; }

    /// <summary>Per sequence, its rows in position order after the step's append, as the pool holds them (an fp8 pool's dequantized).</summary>
    public ushort[][] Kv { get; }

    public ushort[] Out => ((ReadOnlyMemory<ushort>)Batch.Out).ToArray();

    public float[] Lse => Batch.Lse.ToArray();

    /// <param name="appendNewKv">When set, the step's last s_q rows of each sequence travel in
    /// <see cref="DecodeBatch.NewKv"/> and are NaN in the pool before the call.</param>
    public static DecodeScenario Create(CpuBackend backend, int seed, int layer, int[] lengths, int queryTokens, int heads,
        float scale, bool appendNewKv = false)
    {
        const int dk = MlaDims.HeadDimK;
        var rng = new Random(seed);
        int numBlocks = backend.Geometry.NumBlocks;
        PoisonLayer(backend, layer);

        var blockOrder = Enumerable.Range(0, numBlocks).ToArray();
        rng.Shuffle(blockOrder);
        int stride = Math.Max(1, lengths.Max(MlaDims.BlocksFor)) + rng.Next(3);
        var table = Enumerable.Repeat(-1, lengths.Length * stride).ToArray();
        int nextBlock = 0;

        var kv = new ushort[lengths.Length][];
        var newKv = appendNewKv ? new ushort[lengths.Length * queryTokens * dk] : [];
        var newSlots = appendNewKv ? new int[lengths.Length * queryTokens] : [];
        for (int s = 0; s < lengths.Length; s++)
        {
            int length = lengths[s];
            if (appendNewKv && length < queryTokens) throw new ArgumentException("an append needs length >= s_q");
            for (int b = 0; b < MlaDims.BlocksFor(length); b++) table[s * stride + b] = blockOrder[nextBlock++];

            kv[s] = RandomBf16(rng, length * dk);
            int cached = appendNewKv ? length - queryTokens : length;
            var slots = new int[length];
            for (int p = 0; p < length; p++) slots[p] = table[s * stride + p / MlaDims.BlockSize] * MlaDims.BlockSize + p % MlaDims.BlockSize;
            backend.WriteKv(layer, slots.AsSpan(0, cached), kv[s].AsSpan(0, cached * dk));
            if (appendNewKv)
            {
                slots.AsSpan(cached).CopyTo(newSlots.AsSpan(s * queryTokens));
                kv[s].AsSpan(cached * dk).CopyTo(newKv.AsSpan(s * queryTokens * dk));
            }
            if (backend.Geometry.Dtype == KvDtype.Fp8) kv[s] = Fp8KvFormat.RoundTrip(kv[s]); // what the reference attends over
        }

        int rows = lengths.Length * queryTokens * heads;
        var batch = new DecodeBatch
        {
            Layer = layer,
            BatchSize = lengths.Length,
            QueryTokens = queryTokens,
            Heads = heads,
            SoftmaxScale = scale,
            Q = RandomBf16(rng, rows * dk),
            NewKv = newKv,
            NewKvSlots = newSlots,
            SeqLens = lengths.ToArray(),
            BlockTable = table,
            BlockTableStride = stride,
            Out = Enumerable.Repeat(Bf16NaN, rows * MlaDims.HeadDimV).ToArray(),
            Lse = Enumerable.Repeat(float.NaN, rows).ToArray(),
        };
        return new DecodeScenario(batch, kv);
    }

    /// <summary>The float64 reference (<see cref="MlaReference"/>) over this scenario's own copy of the KV, sequence by sequence.</summary>
    public (double[] Out, double[] Lse) Reference()
    {
        int sQ = Batch.QueryTokens, hQ = Batch.Heads, rows = sQ * hQ;
        var q = new ushort[Batch.Q.Length];
        Batch.Q.CopyTo(q);
        var output = new double[Batch.Out.Length];
        var lse = new double[Batch.Lse.Length];
        for (int s = 0; s < Kv.Length; s++)
            MlaReference.Decode(q.AsSpan(s * rows * MlaDims.HeadDimK, rows * MlaDims.HeadDimK), Kv[s], Kv[s].Length / MlaDims.HeadDimK, sQ, hQ,
                Batch.SoftmaxScale, output.AsSpan(s * rows * MlaDims.HeadDimV, rows * MlaDims.HeadDimV), lse.AsSpan(s * rows, rows));
        return (output, lse);
    }

    /// <summary>Asserts the backend's outputs against the float64 reference: every row written, bf16-level error.</summary>
    public void AssertMatchesReference()
    {
        var (refOut, refLse) = Reference();
        var output = Out;
        var lse = Lse;
        const int dv = MlaDims.HeadDimV;

        double errSq = 0, refSq = 0;
        for (int row = 0; row < output.Length / dv; row++)
        {
            double rowErrSq = 0, rowRefSq = 0;
            for (int c = 0; c < dv; c++)
            {
                float got = Bf16.ToFloat(output[row * dv + c]);
                Assert.False(float.IsNaN(got), $"out row {row} column {c} was not written (or read past a sequence's end)");
                double diff = got - refOut[row * dv + c];
                rowErrSq += diff * diff;
                rowRefSq += refOut[row * dv + c] * refOut[row * dv + c];
            }
            if (rowRefSq == 0) Assert.Equal(0, rowErrSq); // a row that sees nothing is exactly 0
            else Assert.True(Math.Sqrt(rowErrSq / rowRefSq) < 2e-2, $"out row {row}: relative error {Math.Sqrt(rowErrSq / rowRefSq):E2}");
            errSq += rowErrSq;
            refSq += rowRefSq;
        }
        if (refSq > 0) Assert.True(Math.Sqrt(errSq / refSq) < 1e-2, $"out: relative error {Math.Sqrt(errSq / refSq):E2}");

        for (int i = 0; i < lse.Length; i++)
        {
            if (double.IsNegativeInfinity(refLse[i])) Assert.Equal(float.NegativeInfinity, lse[i]);
            else Assert.True(Math.Abs(lse[i] - refLse[i]) <= 1e-3 * Math.Max(1, Math.Abs(refLse[i])),
                $"lse {i}: got {lse[i]}, expected {refLse[i]}");
        }
    }

    /// <summary>Fills every row of one layer with NaN, so a read of any row the batch does not own fails.</summary>
    public static void PoisonLayer(CpuBackend backend, int layer)
    {
        int slots = (int)backend.Geometry.TotalSlots;
        backend.WriteKv(layer, Enumerable.Range(0, slots).ToArray(), Enumerable.Repeat(Bf16NaN, slots * MlaDims.HeadDimK).ToArray());
    }

    /// <summary>Every row of every layer, for before-and-after comparisons.</summary>
    public static ushort[] Snapshot(CpuBackend backend)
    {
        int slots = (int)backend.Geometry.TotalSlots;
        var all = Enumerable.Range(0, slots).ToArray();
        var rows = new ushort[backend.Geometry.NumLayers * slots * MlaDims.HeadDimK];
        for (int layer = 0; layer < backend.Geometry.NumLayers; layer++)
            backend.ReadKv(layer, all, rows.AsSpan(layer * slots * MlaDims.HeadDimK, slots * MlaDims.HeadDimK));
        return rows;
    }

    public static ushort[] RandomBf16(Random rng, int count)
    {
        var values = new ushort[count];
        for (int i = 0; i < count; i++) values[i] = Bf16.FromFloat((float)(rng.NextDouble() * 2 - 1));
        return values;
    }
}
