using CsCheck;
using FlashMla.Core.Backends;
using FlashMla.Core.Backends.Cpu;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Tests.Backends.Cpu;

public sealed class CpuBackendKvPoolTests : IDisposable
{
    private const int Dk = MlaDims.HeadDimK;
    private readonly CpuBackend _backend = new(new KvPoolGeometry(NumLayers: 3, NumBlocks: 8));

    public void Dispose() => _backend.Dispose();

    [Fact]
    public void WriteKv_then_ReadKv_returns_each_row_from_its_own_slot_and_layer()
    {
        int totalSlots = (int)_backend.Geometry.TotalSlots;
        Gen.Select(Gen.Int[0, 2], Gen.Int[0, totalSlots - 1].ArrayUnique[1, 40], Gen.Int).Sample((layer, slots, seed) =>
        {
            var rows = DecodeScenario.RandomBf16(new Random(seed), slots.Length * Dk);
            var otherLayer = (layer + 1) % 3;
            var otherBefore = ReadAll(otherLayer);

            _backend.WriteKv(layer, slots, rows);

            // Read back in reverse order: the row follows its slot, not its position in the call.
            var reversed = slots.Reverse().ToArray();
            var readBack = new ushort[rows.Length];
            _backend.ReadKv(layer, reversed, readBack);
            for (int i = 0; i < slots.Length; i++)
                Assert.Equal(rows.AsSpan(i * Dk, Dk).ToArray(), readBack.AsSpan((slots.Length - 1 - i) * Dk, Dk).ToArray());
            Assert.Equal(otherBefore, ReadAll(otherLayer));
        }, iter: 50, threads: 1);
    }

    [Fact]
    public void CopyBlocks_copies_every_layer_and_touches_no_other_block()
    {
        var rng = new Random(2);
        for (int layer = 0; layer < 3; layer++)
            _backend.WriteKv(layer, AllSlots(), DecodeScenario.RandomBf16(rng, (int)_backend.Geometry.TotalSlots * Dk));
        var before = Enumerable.Range(0, 3).Select(ReadAll).ToArray();

        _backend.CopyBlocks([new BlockCopy(Source: 1, Destination: 6), new BlockCopy(Source: 4, Destination: 2)]);

        const int blockElems = MlaDims.BlockSize * Dk;
        for (int layer = 0; layer < 3; layer++)
        {
            var after = ReadAll(layer);
            for (int block = 0; block < _backend.Geometry.NumBlocks; block++)
            {
                int source = block switch { 6 => 1, 2 => 4, _ => block };
                Assert.True(before[layer].AsSpan(source * blockElems, blockElems).SequenceEqual(after.AsSpan(block * blockElems, blockElems)),
                    $"layer {layer} block {block} should hold the old block {source}");
            }
        }
    }

    [Theory]
    [InlineData("layer past the end")]
    [InlineData("negative layer")]
    [InlineData("slot past the pool after good slots")]
    [InlineData("negative slot")]
    [InlineData("rows one element short")]
    [InlineData("rows one row too long")]
    public void WriteKv_and_ReadKv_reject_bad_arguments_and_change_nothing(string defect)
    {
        int layer = 1, past = (int)_backend.Geometry.TotalSlots;
        int[] slots = [0, 5, 300];
        int rowLength = slots.Length * Dk;
        switch (defect)
        {
            case "layer past the end": layer = 3; break;
            case "negative layer": layer = -1; break;
            case "slot past the pool after good slots": slots = [0, 5, past]; break;
            case "negative slot": slots = [-1, 5, 300]; break;
            case "rows one element short": rowLength -= 1; break;
            case "rows one row too long": rowLength += Dk; break;
            default: throw new ArgumentOutOfRangeException(nameof(defect));
        }
        var rows = Enumerable.Repeat((ushort)0x3F80, rowLength).ToArray(); // 1.0
        var before = DecodeScenario.Snapshot(_backend);

        Assert.ThrowsAny<ArgumentException>(() => _backend.WriteKv(layer, slots, rows));
        Assert.Equal(before, DecodeScenario.Snapshot(_backend));

        var destination = Enumerable.Repeat(DecodeScenario.Bf16NaN, rowLength).ToArray();
        Assert.ThrowsAny<ArgumentException>(() => _backend.ReadKv(layer, slots, destination));
        Assert.All(destination, v => Assert.Equal(DecodeScenario.Bf16NaN, v));
    }

    [Theory]
    [InlineData(8, 0)]
    [InlineData(0, -1)]
    [InlineData(-1, 3)]
    public void CopyBlocks_rejects_a_block_outside_the_pool_and_copies_nothing(int source, int destination)
    {
        _backend.WriteKv(0, AllSlots(), DecodeScenario.RandomBf16(new Random(4), (int)_backend.Geometry.TotalSlots * Dk));
        var before = DecodeScenario.Snapshot(_backend);

        // The first copy is valid: it must not happen either.
        Assert.Throws<ArgumentOutOfRangeException>(() =>
            _backend.CopyBlocks([new BlockCopy(1, 2), new BlockCopy(source, destination)]));

        Assert.Equal(before, DecodeScenario.Snapshot(_backend));
    }

    [Theory]
    [InlineData(0, 16)]
    [InlineData(2, 0)]
    [InlineData(-1, 16)]
    [InlineData(1, int.MaxValue / MlaDims.BlockSize + 1)]
    public void Constructor_rejects_an_empty_or_unaddressable_geometry(int layers, int blocks)
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new CpuBackend(new KvPoolGeometry(layers, blocks)));
        Assert.Contains("CpuBackend", e.Message);
    }

    [Fact]
    public void Constructor_rejects_pools_larger_than_the_machine_with_the_size_in_the_message()
    {
        // 10,000 layers of 30M blocks: about 20 PiB.
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new CpuBackend(new KvPoolGeometry(10_000, 30_000_000)));
        Assert.Contains("GiB of host memory", e.Message);
    }

    [Fact]
    public void Constructor_rejects_zero_threads()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new CpuBackend(new KvPoolGeometry(1, 1), maxThreads: 0));
    }

    [Fact]
    public void Backend_describes_itself_and_its_new_pools_read_as_zero()
    {
        using var backend = new CpuBackend(new KvPoolGeometry(2, 4), maxThreads: 3);
        Assert.Equal("cpu", backend.Name);
        Assert.StartsWith("CPU: 3 threads, ", backend.DeviceDescription);
        Assert.Equal(new KvPoolGeometry(2, 4), backend.Geometry);
        Assert.Equal(3, backend.MaxThreads);
        Assert.All(DecodeScenario.Snapshot(backend), v => Assert.Equal((ushort)0, v));
    }

    [Fact]
    public void Every_method_throws_ObjectDisposedException_after_Dispose()
    {
        var backend = new CpuBackend(new KvPoolGeometry(1, 2));
        backend.Dispose();
        backend.Dispose(); // twice is harmless
        var row = new ushort[Dk];
        Assert.Throws<ObjectDisposedException>(() => backend.WriteKv(0, [0], row));
        Assert.Throws<ObjectDisposedException>(() => backend.ReadKv(0, [0], row));
        Assert.Throws<ObjectDisposedException>(() => backend.CopyBlocks([new BlockCopy(0, 1)]));
        var batch = new DecodeBatch
        {
            Layer = 0, BatchSize = 1, QueryTokens = 1, Heads = 1, SoftmaxScale = 1f,
            Q = new ushort[Dk], SeqLens = new[] { 1 }, BlockTable = new[] { 0 }, BlockTableStride = 1,
            Out = new ushort[MlaDims.HeadDimV], Lse = new float[1],
        };
        Assert.Throws<ObjectDisposedException>(() => backend.Decode(batch));
    }

    private int[] AllSlots() => Enumerable.Range(0, (int)_backend.Geometry.TotalSlots).ToArray();

    private ushort[] ReadAll(int layer)
    {
        var rows = new ushort[(int)_backend.Geometry.TotalSlots * Dk];
        _backend.ReadKv(layer, AllSlots(), rows);
        return rows;
    }
}
