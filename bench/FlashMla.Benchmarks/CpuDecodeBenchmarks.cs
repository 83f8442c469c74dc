using BenchmarkDotNet.Attributes;
using FlashMla.Core.Backends;
using FlashMla.Core.Backends.Cpu;
using FlashMla.Core.Tensors;

namespace FlashMla.Benchmarks;

/// <summary>
/// <see cref="CpuBackend.Decode"/> at the shapes of the GPU targets, scaled down in batch.
/// Every sequence is <see cref="SeqLen"/> long, blocks shuffled across the pool, no append:
/// the call reads <c>b * s_k * 1152</c> bytes of KV (656 with <see cref="Dtype"/> fp8, each page dequantized).
/// </summary>
[MemoryDiagnoser, MinColumn]
public class CpuDecodeBenchmarks
{
    private CpuBackend _backend = null!;
    private DecodeBatch _batch = null!;

    [Params(8, 32)]
    public int Batch { get; set; }

    [Params(1024, 4096)]
    public int SeqLen { get; set; }

    [Params(16, 128)]
    public int Heads { get; set; }

    [Params(1)]
    public int QueryTokens { get; set; }

    [Params(KvDtype.Bf16, KvDtype.Fp8)]
    public KvDtype Dtype { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        var rng = new Random(1);
        int blocksPerSequence = MlaDims.BlocksFor(SeqLen);
        int numBlocks = Batch * blocksPerSequence;
        _backend = new CpuBackend(new KvPoolGeometry(NumLayers: 1, NumBlocks: numBlocks, Dtype));

        // A few thousand distinct bf16 values in [-1, 1), spread over the pool: cheap to fill, still no pattern the math could exploit.
        var palette = new ushort[4099];
        for (int i = 0; i < palette.Length; i++) palette[i] = Bf16.FromFloat((float)(rng.NextDouble() * 2 - 1));
        var slots = new int[MlaDims.BlockSize];
        var rows = new ushort[MlaDims.BlockSize * MlaDims.HeadDimK];
        for (int block = 0; block < numBlocks; block++)
        {
            for (int i = 0; i < slots.Length; i++) slots[i] = block * MlaDims.BlockSize + i;
            for (int i = 0; i < rows.Length; i++) rows[i] = palette[rng.Next(palette.Length)];
            _backend.WriteKv(0, slots, rows);
        }

        var blockOrder = Enumerable.Range(0, numBlocks).ToArray();
        rng.Shuffle(blockOrder);
        int queryRows = Batch * QueryTokens * Heads;
        var q = new ushort[queryRows * MlaDims.HeadDimK];
        for (int i = 0; i < q.Length; i++) q[i] = palette[rng.Next(palette.Length)];

        _batch = new DecodeBatch
        {
            Layer = 0,
            BatchSize = Batch,
            QueryTokens = QueryTokens,
            Heads = Heads,
            SoftmaxScale = MlaDims.DefaultSoftmaxScale,
            Q = q,
            SeqLens = Enumerable.Repeat(SeqLen, Batch).ToArray(),
            BlockTable = blockOrder,
            BlockTableStride = blocksPerSequence,
            Out = new ushort[queryRows * MlaDims.HeadDimV],
            Lse = new float[queryRows],
        };
    }

    [GlobalCleanup]
    public void Cleanup() => _backend.Dispose();

    [Benchmark]
    public void Decode() => _backend.Decode(_batch);
}
