using FlashMla.Core.Backends;
using FlashMla.Core.Backends.Cpu;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Tests.Backends.Cpu;

/// <summary>The CPU backend over fp8 pools: writes quantize with the codec, reads give the stored or the dequantized rows, decode attends over the dequantized cache.</summary>
public sealed class CpuBackendFp8Tests : IDisposable
{
    private const int Dk = MlaDims.HeadDimK;
    private readonly CpuBackend _backend = new(new KvPoolGeometry(NumLayers: 2, NumBlocks: 96, KvDtype.Fp8));

    public void Dispose() => _backend.Dispose();

    private int[] RandomSlots(Random rng, int count)
    {
        var all = Enumerable.Range(0, (int)_backend.Geometry.TotalSlots).ToArray();
        rng.Shuffle(all);
        return all[..count];
    }

    [Fact]
    public void WriteKv_stores_each_bf16_row_as_the_codec_quantizes_it()
    {
        var rng = new Random(1);
        var slots = RandomSlots(rng, 70);
        var rows = DecodeScenario.RandomBf16(rng, slots.Length * Dk);
        _backend.WriteKv(1, slots, rows);

        var stored = new byte[slots.Length * Fp8KvFormat.TokenBytes];
        _backend.ReadStoredKv(1, slots, stored);
        var expected = new byte[stored.Length];
        Fp8KvFormat.Quantize(rows, expected);
        Assert.Equal(expected, stored);

        var dequantized = new ushort[rows.Length];
        _backend.ReadKv(1, slots, dequantized);
        Assert.Equal(Fp8KvFormat.RoundTrip(rows), dequantized);
    }

    [Fact]
    public void WriteStoredKv_copies_rows_as_they_are_into_their_slots_and_layer()
    {
        var rng = new Random(2);
        var slots = RandomSlots(rng, 10);
        var stored = new byte[slots.Length * Fp8KvFormat.TokenBytes];
        rng.NextBytes(stored); // any bytes: a stored write does not interpret them
        var otherLayerBefore = new byte[stored.Length];
        _backend.ReadStoredKv(0, slots, otherLayerBefore);

        _backend.WriteStoredKv(1, slots, stored);

        var back = new byte[stored.Length];
        _backend.ReadStoredKv(1, slots.Reverse().ToArray(), back);
        for (int i = 0; i < slots.Length; i++)
            Assert.Equal(stored.AsSpan(i * 656, 656).ToArray(), back.AsSpan((slots.Length - 1 - i) * 656, 656).ToArray());
        var otherLayer = new byte[stored.Length];
        _backend.ReadStoredKv(0, slots, otherLayer);
        Assert.Equal(otherLayerBefore, otherLayer);
    }

    [Fact]
    public void Stored_rows_must_be_656_bytes_each()
    {
        Assert.Throws<ArgumentException>(() => _backend.WriteStoredKv(0, [0, 1], new byte[2 * 656 - 1]));
        Assert.Throws<ArgumentException>(() => _backend.WriteStoredKv(0, [0], new byte[1152]));
        Assert.Throws<ArgumentException>(() => _backend.ReadStoredKv(0, [0], new byte[655]));
        Assert.Throws<ArgumentOutOfRangeException>(() => _backend.WriteStoredKv(0, [(int)_backend.Geometry.TotalSlots], new byte[656]));
    }

    [Fact]
    public void CopyBlocks_copies_whole_fp8_pages_of_every_layer()
    {
        var rng = new Random(3);
        int slots = (int)_backend.Geometry.TotalSlots;
        var all = Enumerable.Range(0, slots).ToArray();
        var before = new byte[2][];
        for (int layer = 0; layer < 2; layer++)
        {
            before[layer] = new byte[slots * 656];
            rng.NextBytes(before[layer]);
            _backend.WriteStoredKv(layer, all, before[layer]);
        }

        _backend.CopyBlocks([new BlockCopy(Source: 5, Destination: 90), new BlockCopy(Source: 0, Destination: 7)]);

        for (int layer = 0; layer < 2; layer++)
        {
            var after = new byte[slots * 656];
            _backend.ReadStoredKv(layer, all, after);
            for (int block = 0; block < _backend.Geometry.NumBlocks; block++)
            {
                int source = block switch { 90 => 5, 7 => 0, _ => block };
                Assert.True(before[layer].AsSpan(source * 41_984, 41_984).SequenceEqual(after.AsSpan(block * 41_984, 41_984)),
                    $"layer {layer} block {block} should hold the old block {source}");
            }
        }
    }

    [Theory]
    [InlineData(1, 1)] [InlineData(1, 4)]
    [InlineData(16, 1)] [InlineData(16, 3)]
    [InlineData(64, 2)]
    [InlineData(128, 1)] [InlineData(128, 2)]
    public void Decode_over_fp8_pages_matches_the_double_reference_on_the_dequantized_cache(int heads, int queryTokens)
    {
        // Shuffled blocks, NaN past every length (poisoned rows quantize to NaN codes and NaN scales), outputs poisoned.
        int[] lengths = [1, 63, 64, 65, 300];
        var scenario = DecodeScenario.Create(_backend, seed: heads + queryTokens, layer: 1, lengths, queryTokens, heads, scale: 0.3f);
        _backend.Decode(scenario.Batch);
        scenario.AssertMatchesReference();
    }

    [Theory]
    [InlineData(1, 16)]
    [InlineData(4, 8)]
    public void Decode_quantizes_the_new_rows_before_attending_over_them(int queryTokens, int heads)
    {
        var scenario = DecodeScenario.Create(_backend, seed: 9, layer: 0, [4, 64, 65, 129], queryTokens, heads, scale: 0.3f, appendNewKv: true);
        _backend.Decode(scenario.Batch);
        scenario.AssertMatchesReference();

        var stored = new byte[scenario.Batch.NewKvSlots.Length * Fp8KvFormat.TokenBytes];
        _backend.ReadStoredKv(0, scenario.Batch.NewKvSlots.Span, stored);
        var expected = new byte[stored.Length];
        Fp8KvFormat.Quantize(scenario.Batch.NewKv.Span, expected);
        Assert.Equal(expected, stored);
    }

    [Fact]
    public void Fp8_pools_hold_656_bytes_a_token_so_the_same_memory_holds_1_756_times_the_tokens()
    {
        var fp8 = new KvPoolGeometry(4, 1000, KvDtype.Fp8);
        var bf16 = new KvPoolGeometry(4, 1000);
        Assert.Equal(656, fp8.BytesPerToken);
        Assert.Equal(1000L * 41_984, fp8.LayerBytes);
        Assert.Equal(1000L * 73_728, bf16.LayerBytes);
        Assert.Equal(1152.0 / 656, (double)bf16.LayerBytes / fp8.LayerBytes, 12);
    }
}
