using FlashMla.Core.Tensors;

namespace FlashMla.Cuda.DeviceCheck;

/// <summary>
/// MLA decode in float64 from a host copy of the pools: the reference the CUDA backend is checked against.
/// Row (b, i, h) sees cache positions 0 .. L_b - s_q + i; one that sees none gets out 0 and lse -inf.
/// </summary>
internal static class ReferenceDecode
{
    public static void Run(
        KvMirror mirror, int layer, int batch, int queryTokens, int heads, float scale,
        ushort[] q, int[] seqLens, int[] blockTable, int stride, double[] outRef, double[] lseRef)
    {
        Parallel.For(0, batch * queryTokens * heads, row =>
        {
            int b = row / (queryTokens * heads);
            int i = row / heads % queryTokens;
            int h = row % heads;
            int visible = seqLens[b] - queryTokens + i + 1;
            var o = new double[MlaDims.HeadDimV];
            var qd = new double[MlaDims.HeadDimK];
            for (int c = 0; c < MlaDims.HeadDimK; c++) qd[c] = Bf16.ToFloat(q[row * MlaDims.HeadDimK + c]);
            int lseIndex = (b * heads + h) * queryTokens + i;
            if (visible <= 0)
            {
                Array.Clear(outRef, row * MlaDims.HeadDimV, MlaDims.HeadDimV);
                lseRef[lseIndex] = double.NegativeInfinity;
                return;
            }
            var scores = new double[visible];
            double max = double.NegativeInfinity;
            for (int t = 0; t < visible; t++)
            {
                ReadOnlySpan<ushort> k = mirror.Row(layer, blockTable[b * stride + t / MlaDims.BlockSize] * MlaDims.BlockSize + t % MlaDims.BlockSize);
                double dot = 0;
                for (int c = 0; c < MlaDims.HeadDimK; c++) dot += qd[c] * Bf16.ToFloat(k[c]);
                scores[t] = dot * scale;
                max = Math.Max(max, scores[t]);
            }
            double sum = 0;
            for (int t = 0; t < visible; t++)
            {
                double p = Math.Exp(scores[t] - max);
                sum += p;
                ReadOnlySpan<ushort> v = mirror.Row(layer, blockTable[b * stride + t / MlaDims.BlockSize] * MlaDims.BlockSize + t % MlaDims.BlockSize);
                for (int c = 0; c < MlaDims.HeadDimV; c++) o[c] += p * Bf16.ToFloat(v[c]);
            }
            for (int c = 0; c < MlaDims.HeadDimV; c++) outRef[row * MlaDims.HeadDimV + c] = o[c] / sum;
            lseRef[lseIndex] = max + Math.Log(sum);
        });
    }
}

/// <summary>A host copy of every pool row the checks wrote, to compute references and compare read-backs.</summary>
internal sealed class KvMirror(int layers, int blocks)
{
    private readonly ushort[][] _rows = Enumerable.Range(0, layers).Select(_ => new ushort[(long)blocks * MlaDims.BlockSize * MlaDims.HeadDimK]).ToArray();
    private readonly bool[][] _written = Enumerable.Range(0, layers).Select(_ => new bool[blocks * MlaDims.BlockSize]).ToArray();

    public int Layers => layers;
    public int Blocks => blocks;

    public ReadOnlySpan<ushort> Row(int layer, int slot) => _rows[layer].AsSpan(slot * MlaDims.HeadDimK, MlaDims.HeadDimK);

    public bool Written(int layer, int slot) => _written[layer][slot];

    public void Write(int layer, ReadOnlySpan<int> slots, ReadOnlySpan<ushort> rows)
    {
        for (int n = 0; n < slots.Length; n++)
        {
            rows.Slice(n * MlaDims.HeadDimK, MlaDims.HeadDimK).CopyTo(_rows[layer].AsSpan(slots[n] * MlaDims.HeadDimK));
            _written[layer][slots[n]] = true;
        }
    }

    /// <summary>Sequential copy-on-write semantics: each copy sees the ones before it.</summary>
    public void CopyBlock(int source, int destination)
    {
        int rowsPerBlock = MlaDims.BlockSize * MlaDims.HeadDimK;
        for (int l = 0; l < layers; l++)
        {
            Array.Copy(_rows[l], (long)source * rowsPerBlock, _rows[l], (long)destination * rowsPerBlock, rowsPerBlock);
            Array.Copy(_written[l], source * MlaDims.BlockSize, _written[l], destination * MlaDims.BlockSize, MlaDims.BlockSize);
        }
    }
}
