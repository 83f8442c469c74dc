using System.Runtime.CompilerServices;
using FlashMla.Core.Backends;
using FlashMla.Core.Memory;
using FlashMla.Core.Tensors;

namespace FlashMla.Cuda.DeviceCheck;

/// <summary>
/// Random inputs of decode steps for the device tests and the device benchmark: bf16 rows and queries from a seeded
/// generator, and batches whose tensors are plain arrays or, with <see cref="Pool"/> set, views of page-locked pool
/// arrays (as the server's wire buffers are, so the backend copies them without staging).
/// </summary>
internal sealed class DeviceSteps(Random random)
{
    /// <summary>When set, step tensors are rented from this pool instead of plain arrays.</summary>
    public PinnedTensorPool? Pool { get; set; }

    public ushort[] RandomRows(int rows)
    {
        var data = new ushort[rows * MlaDims.HeadDimK];
        for (int i = 0; i < data.Length; i++) data[i] = Bf16.FromFloat(Gaussian());
        return data;
    }

    public float Gaussian()
    {
        double u = 1.0 - random.NextDouble(), v = random.NextDouble();
        return (float)(Math.Sqrt(-2 * Math.Log(u)) * Math.Cos(2 * Math.PI * v));
    }

    /// <summary>0 .. n-1 in random order.</summary>
    public int[] Shuffled(int n)
    {
        int[] a = Enumerable.Range(0, n).ToArray();
        random.Shuffle(a);
        return a;
    }

    /// <summary>A step with random q and, when <paramref name="newRows"/> is given, those rows appended into <paramref name="newSlots"/>.</summary>
    public DecodeBatch NewBatch(int layer, int sq, int hq, int[] lens, int stride, int[] blockTable, ushort[]? newRows = null, int[]? newSlots = null)
    {
        int rows = lens.Length * sq * hq;
        Memory<ushort> q = Tensor<ushort>(rows * MlaDims.HeadDimK);
        for (int i = 0; i < q.Length; i++) q.Span[i] = Bf16.FromFloat(Gaussian());
        ReadOnlyMemory<ushort> kv = ReadOnlyMemory<ushort>.Empty;
        if (newRows is { Length: > 0 })
        {
            Memory<ushort> copy = Tensor<ushort>(newRows.Length);
            newRows.CopyTo(copy);
            kv = copy;
        }
        return new DecodeBatch
        {
            Layer = layer,
            BatchSize = lens.Length,
            QueryTokens = sq,
            Heads = hq,
            SoftmaxScale = MlaDims.DefaultSoftmaxScale,
            Q = q,
            NewKv = kv,
            NewKvSlots = kv.IsEmpty ? ReadOnlyMemory<int>.Empty : newSlots,
            SeqLens = lens,
            BlockTable = blockTable,
            BlockTableStride = stride,
            Out = Tensor<ushort>(rows * MlaDims.HeadDimV),
            Lse = Tensor<float>(rows),
        };
    }

    /// <summary>
    /// The same step with q in up to three segments of whole sequences (as a merged batch hands it: one per request),
    /// each in a tensor of its own, sharing <paramref name="batch"/>'s outputs.
    /// </summary>
    public DecodeBatch InSegments(DecodeBatch batch)
    {
        int perSeq = batch.QueryElementsPerSequence;
        int b = batch.BatchSize;
        int[] cuts = b >= 3 ? [0, 1, Math.Max(2, b / 2), b] : b == 2 ? [0, 1, 2] : [0, 1];
        var whole = new ushort[batch.Q.Length];
        batch.Q.CopyTo(whole);
        var segments = new List<ReadOnlyMemory<ushort>>();
        for (int k = 0; k + 1 < cuts.Length; k++)
        {
            var segment = Tensor<ushort>((cuts[k + 1] - cuts[k]) * perSeq);
            whole.AsMemory(cuts[k] * perSeq, segment.Length).CopyTo(segment);
            segments.Add(segment);
        }
        return new DecodeBatch
        {
            Layer = batch.Layer, BatchSize = b, QueryTokens = batch.QueryTokens, Heads = batch.Heads, SoftmaxScale = batch.SoftmaxScale,
            Q = new QuerySegments(segments), NewKv = batch.NewKv, NewKvSlots = batch.NewKvSlots, SeqLens = batch.SeqLens,
            BlockTable = batch.BlockTable, BlockTableStride = batch.BlockTableStride, Out = batch.Out, Lse = batch.Lse,
        };
    }

    /// <summary>A tensor of <paramref name="n"/> elements: a plain array, or a view of a pool array when <see cref="Pool"/> is set.</summary>
    public Memory<T> Tensor<T>(int n) where T : unmanaged =>
        Pool is null ? new T[n] : MemoryCast.Cast<byte, T>(Pool.Rent(n * Unsafe.SizeOf<T>()).AsMemory(0, n * Unsafe.SizeOf<T>()));
}
