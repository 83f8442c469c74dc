using System.Buffers.Binary;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Tests.Tensors;

/// <summary>The 656-byte "FP8 with scale" row: layout, the quantization rule tile by tile, and dequantization.</summary>
public class Fp8KvFormatTests
{
    private const int Dk = MlaDims.HeadDimK;

    private static ushort[] RandomRow(Random rng, float magnitude = 1f)
    {
        var row = new ushort[Dk];
        for (int i = 0; i < Dk; i++) row[i] = Bf16.FromFloat((float)(rng.NextDouble() * 2 - 1) * magnitude);
        return row;
    }

    private static byte[] Quantize(ushort[] row)
    {
        var stored = new byte[Fp8KvFormat.TokenBytes];
        Fp8KvFormat.QuantizeRow(row, stored);
        return stored;
    }

    [Fact]
    public void The_row_is_656_bytes_codes_then_four_scales_then_rope_and_a_page_is_41984()
    {
        Assert.Equal(656, Fp8KvFormat.TokenBytes);
        Assert.Equal(512, Fp8KvFormat.ScalesOffset);
        Assert.Equal(528, Fp8KvFormat.RopeOffset);
        Assert.Equal(41_984, Fp8KvFormat.PageBytes);
        Assert.Equal(656, KvDtype.Fp8.BytesPerToken());
        Assert.Equal(1152, KvDtype.Bf16.BytesPerToken());
        Assert.Equal(41_984L, KvDtype.Fp8.PageBytes());
    }

    [Fact]
    public void Each_tile_is_scaled_by_its_own_amax_over_448_and_codes_are_e4m3_of_value_over_scale()
    {
        var rng = new Random(1);
        var row = RandomRow(rng);
        for (int i = 128; i < 256; i++) row[i] = Bf16.FromFloat(Bf16.ToFloat(row[i]) * 1000); // tiles of very different range
        for (int i = 256; i < 384; i++) row[i] = Bf16.FromFloat(Bf16.ToFloat(row[i]) * 1e-3f);
        var stored = Quantize(row);

        for (int t = 0; t < 4; t++)
        {
            float amax = 0;
            for (int i = 128 * t; i < 128 * (t + 1); i++) amax = MathF.Max(amax, MathF.Abs(Bf16.ToFloat(row[i])));
            float scale = amax / 448f;
            Assert.Equal(scale, BinaryPrimitives.ReadSingleLittleEndian(stored.AsSpan(512 + 4 * t)));
            for (int i = 128 * t; i < 128 * (t + 1); i++)
                Assert.Equal(E4m3.FromFloat(Bf16.ToFloat(row[i]) / scale), stored[i]);
        }
        // The largest value of a tile lands on (or, by the division's rounding, saturates to) ±448.
        int argmax = 0;
        for (int i = 0; i < 128; i++) if (MathF.Abs(Bf16.ToFloat(row[i])) > MathF.Abs(Bf16.ToFloat(row[argmax]))) argmax = i;
        Assert.Equal(0x7E, stored[argmax] & 0x7F);
    }

    [Fact]
    public void The_exact_dequantization_is_code_times_scale_unrounded_and_rounds_to_the_formats()
    {
        var rng = new Random(17);
        var row = RandomRow(rng, 3f);
        var stored = Quantize(row);
        var exact = new float[Dk];
        var rounded = new ushort[Dk];
        Fp8KvFormat.DequantizeRowExact(stored, exact);
        Fp8KvFormat.DequantizeRow(stored, rounded);
        int unrounded = 0;
        for (int i = 0; i < Dk; i++)
        {
            float expected = i < MlaDims.HeadDimV ? E4m3.ToFloat(stored[i]) * Fp8KvFormat.Scale(stored, i / Fp8KvFormat.TileValues) : Bf16.ToFloat(row[i]);
            Assert.Equal(expected, exact[i]);
            Assert.Equal(rounded[i], Bf16.FromFloat(exact[i]));  // the format's value is this one rounded to bf16
            if (Bf16.ToFloat(Bf16.FromFloat(exact[i])) != exact[i]) unrounded++;
        }
        Assert.True(unrounded > 100, $"only {unrounded} of 512 values differ from their bf16 rounding: the test says nothing");
        Assert.Throws<ArgumentException>(() => Fp8KvFormat.DequantizeRowExact(stored, new float[Dk - 1]));
    }

    [Fact]
    public void The_reference_over_float_values_is_the_reference_over_bf16_when_the_values_are_bf16()
    {
        var rng = new Random(5);
        const int visible = 70;
        var kv16 = new ushort[visible * Dk];
        for (int i = 0; i < kv16.Length; i++) kv16[i] = Bf16.FromFloat((float)(rng.NextDouble() * 2 - 1));
        var kv32 = kv16.Select(Bf16.ToFloat).ToArray();
        var q = RandomRow(rng);
        var out16 = new double[MlaDims.HeadDimV];
        var out32 = new double[MlaDims.HeadDimV];
        double lse16 = MlaReference.AttendRow(q, kv16, visible, 0.07, out16);
        double lse32 = MlaReference.AttendRow(q, kv32, visible, 0.07, out32);
        Assert.Equal(lse16, lse32);
        Assert.Equal(out16, out32);
        Assert.Equal(double.NegativeInfinity, MlaReference.AttendRow(q, kv32, 0, 0.07, out32));
        Assert.All(out32, v => Assert.Equal(0.0, v));
    }

    [Fact]
    public void Rope_values_are_copied_unchanged_bit_for_bit()
    {
        var row = RandomRow(new Random(2));
        row[512] = 0x7FC1; // a NaN with a payload
        row[575] = 0x8000; // -0
        var stored = Quantize(row);
        for (int c = 0; c < 64; c++)
            Assert.Equal(row[512 + c], BinaryPrimitives.ReadUInt16LittleEndian(stored.AsSpan(528 + 2 * c)));
        var back = new ushort[Dk];
        Fp8KvFormat.DequantizeRow(stored, back);
        Assert.Equal(row.AsSpan(512).ToArray(), back.AsSpan(512).ToArray());
    }

    [Fact]
    public void An_all_zero_tile_is_stored_with_scale_zero_and_every_code_0x00()
    {
        var row = RandomRow(new Random(3));
        for (int i = 128; i < 256; i++) row[i] = i % 2 == 0 ? (ushort)0x0000 : (ushort)0x8000; // +0 and -0
        var stored = Quantize(row);
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32LittleEndian(stored.AsSpan(512 + 4)));
        Assert.All(stored.AsSpan(128, 128).ToArray(), code => Assert.Equal(0, code));
        var back = new ushort[Dk];
        Fp8KvFormat.DequantizeRow(stored, back);
        Assert.All(back.AsSpan(128, 128).ToArray(), v => Assert.Equal(0, v));
    }

    [Fact]
    public void A_tile_of_subnormal_values_gets_a_subnormal_scale_not_a_flushed_one()
    {
        var row = new ushort[Dk];
        row[5] = 0x0001; // the smallest bf16 subnormal, 2^-133: amax / 448 is an fp32 subnormal, kept (no flush to zero)
        row[6] = 0x8001;
        var stored = Quantize(row);
        float scale = Fp8KvFormat.Scale(stored, 0);
        Assert.Equal(MathF.ScaleB(1, -133) / 448f, scale);
        Assert.True(float.IsSubnormal(scale));
        Assert.Equal(0x7E, stored[5]);
        Assert.Equal(0xFE, stored[6]);
        Assert.Equal(0, stored[7]);
        var back = new ushort[Dk];
        Fp8KvFormat.DequantizeRow(stored, back);
        Assert.Equal((ushort)0x0001, back[5]);
    }

    [Fact]
    public void A_NaN_makes_its_tile_scale_the_canonical_NaN_and_every_code_of_that_tile_NaN()
    {
        var row = RandomRow(new Random(4));
        row[300] = 0xFFC0; // -NaN, in tile 2
        var stored = Quantize(row);
        Assert.Equal(Fp8KvFormat.CanonicalNaNBits, BinaryPrimitives.ReadUInt32LittleEndian(stored.AsSpan(512 + 8)));
        Assert.All(stored.AsSpan(256, 128).ToArray(), code => Assert.Equal(E4m3.NaNCode, code));
        for (int t = 0; t < 4; t++)
            if (t != 2) Assert.True(float.IsFinite(Fp8KvFormat.Scale(stored, t)) && Fp8KvFormat.Scale(stored, t) > 0);
        var back = new ushort[Dk];
        Fp8KvFormat.DequantizeRow(stored, back);
        Assert.All(back.AsSpan(256, 128).ToArray(), v => Assert.True(float.IsNaN(Bf16.ToFloat(v))));
        Assert.All(back.AsSpan(0, 256).ToArray(), v => Assert.False(float.IsNaN(Bf16.ToFloat(v))));
    }

    [Fact]
    public void Dequantization_is_bf16_of_code_times_scale_rounded_to_nearest_even()
    {
        var stored = Quantize(RandomRow(new Random(5), 3f));
        var back = new ushort[Dk];
        Fp8KvFormat.DequantizeRow(stored, back);
        for (int i = 0; i < 512; i++)
        {
            double exact = (double)E4m3.ToFloat(stored[i]) * Fp8KvFormat.Scale(stored, i / 128); // exact in double: 4 x 24 bits
            float product = (float)exact; // the fp32 multiply, correctly rounded
            Assert.Equal(Bf16.FromFloat(product), back[i]);
        }
    }

    [Fact]
    public void Dequantized_values_are_within_e4m3_precision_of_the_originals()
    {
        var rng = new Random(6);
        for (int trial = 0; trial < 50; trial++)
        {
            var row = RandomRow(rng, (float)Math.Pow(10, rng.Next(-6, 6)));
            var stored = Quantize(row);
            var back = new ushort[Dk];
            Fp8KvFormat.DequantizeRow(stored, back);
            for (int i = 0; i < 512; i++)
            {
                float x = Bf16.ToFloat(row[i]), y = Bf16.ToFloat(back[i]), scale = Fp8KvFormat.Scale(stored, i / 128);
                // Half an e4m3 step (1/16 relative), one bf16 rounding (1/256), or half the smallest subnormal step.
                double bound = Math.Abs(x) * (1 / 16.0 + 1 / 256.0) + scale * Math.Pow(2, -10) * 1.01;
                Assert.True(Math.Abs(x - y) <= bound, $"trial {trial} value {i}: {x} came back as {y}");
            }
        }
    }

    [Fact]
    public void Rows_convert_in_bulk_as_they_do_one_by_one_and_mismatched_lengths_are_refused()
    {
        var rng = new Random(7);
        var rows = new ushort[3 * Dk];
        for (int r = 0; r < 3; r++) RandomRow(rng).CopyTo(rows, r * Dk);
        var stored = new byte[3 * 656];
        Fp8KvFormat.Quantize(rows, stored);
        for (int r = 0; r < 3; r++) Assert.Equal(Quantize(rows.AsSpan(r * Dk, Dk).ToArray()), stored.AsSpan(r * 656, 656).ToArray());
        var back = new ushort[3 * Dk];
        Fp8KvFormat.Dequantize(stored, back);
        Assert.Equal(DecodeScenarioRows(stored), back);
        Assert.Equal(back, Fp8KvFormat.RoundTrip(rows));

        Assert.Throws<ArgumentException>(() => Fp8KvFormat.Quantize(rows, new byte[2 * 656]));
        Assert.Throws<ArgumentException>(() => Fp8KvFormat.Dequantize(new byte[655], new ushort[Dk]));
        Assert.Throws<ArgumentException>(() => Fp8KvFormat.QuantizeRow(new ushort[575], new byte[656]));
    }

    [Theory]
    [InlineData("bf16", KvDtype.Bf16)]
    [InlineData("fp8", KvDtype.Fp8)]
    [InlineData(" FP8 ", KvDtype.Fp8)]
    public void KvDtype_parses_its_option_spellings(string text, KvDtype expected)
    {
        Assert.True(KvDtypes.TryParse(text, out var dtype));
        Assert.Equal(expected, dtype);
        Assert.Equal(text.Trim().ToLowerInvariant(), dtype.OptionName());
    }

    [Theory]
    [InlineData("fp16")]
    [InlineData("e4m3")]
    [InlineData("")]
    [InlineData(null)]
    public void KvDtype_refuses_other_spellings(string? text) => Assert.False(KvDtypes.TryParse(text, out _));

    private static ushort[] DecodeScenarioRows(byte[] stored)
    {
        var rows = new ushort[stored.Length / 656 * Dk];
        for (int r = 0; r < stored.Length / 656; r++) Fp8KvFormat.DequantizeRow(stored.AsSpan(r * 656, 656), rows.AsSpan(r * Dk, Dk));
        return rows;
    }
}
