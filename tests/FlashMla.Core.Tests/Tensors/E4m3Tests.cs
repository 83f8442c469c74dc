using FlashMla.Core.Tensors;

namespace FlashMla.Core.Tests.Tensors;

/// <summary>The e4m3 codec against the OCP definition, code by code, and the rounding of PTX cvt.rn.satfinite.</summary>
public class E4m3Tests
{
    /// <summary>The OCP e4m3fn value of a code, from its fields, in double (independent of the codec's table).</summary>
    private static double Defined(int code)
    {
        int sign = code >> 7, exponent = (code >> 3) & 0xF, mantissa = code & 7;
        if (exponent == 0xF && mantissa == 7) return double.NaN;
        double magnitude = exponent == 0 ? mantissa / 8.0 * Math.Pow(2, -6) : (1 + mantissa / 8.0) * Math.Pow(2, exponent - 7);
        return sign == 1 ? -magnitude : magnitude;
    }

    [Fact]
    public void All_256_codes_decode_to_the_value_their_fields_define()
    {
        for (int code = 0; code < 256; code++)
        {
            double expected = Defined(code);
            float actual = E4m3.ToFloat((byte)code);
            if (double.IsNaN(expected)) Assert.True(float.IsNaN(actual), $"code 0x{code:X2} must be NaN");
            else
            {
                Assert.Equal(expected, actual);
                Assert.Equal(code >= 0x80, float.IsNegative(actual)); // -0 included
            }
        }
        Assert.Equal(448f, E4m3.ToFloat(0x7E));
        Assert.Equal(-448f, E4m3.ToFloat(0xFE));
        Assert.Equal(1f, E4m3.ToFloat(0x38));
        Assert.Equal(MathF.ScaleB(1, -9), E4m3.ToFloat(0x01)); // smallest subnormal
        Assert.Equal(MathF.ScaleB(1, -6), E4m3.ToFloat(0x08)); // smallest normal
        Assert.True(float.IsNaN(E4m3.ToFloat(0x7F)) && float.IsNaN(E4m3.ToFloat(0xFF)));
    }

    [Fact]
    public void Every_non_NaN_code_survives_a_round_trip_through_float()
    {
        for (int code = 0; code < 256; code++)
        {
            if ((code & 0x7F) == 0x7F) continue;
            Assert.Equal((byte)code, E4m3.FromFloat(E4m3.ToFloat((byte)code)));
        }
    }

    [Fact]
    public void Values_between_two_codes_round_to_the_nearer_and_midpoints_to_the_even_code()
    {
        for (int code = 0; code < 0x7E; code++)
        {
            float low = E4m3.ToFloat((byte)code), high = E4m3.ToFloat((byte)(code + 1));
            float mid = (low + high) / 2; // exact: neighbouring e4m3 values differ in one bit below float's precision
            byte even = (byte)(code % 2 == 0 ? code : code + 1);
            foreach (int sign in new[] { 0, 0x80 })
            {
                float s = sign == 0 ? 1 : -1;
                Assert.Equal((byte)(sign | even), E4m3.FromFloat(s * mid));
                Assert.Equal((byte)(sign | code), E4m3.FromFloat(s * MathF.BitDecrement(mid)));
                Assert.Equal((byte)(sign | (code + 1)), E4m3.FromFloat(s * MathF.BitIncrement(mid)));
            }
        }
    }

    /// <summary>The code nearest to <paramref name="value"/> by search over every finite code, ties to the even code, ±448 past the range.</summary>
    private static byte Nearest(float value)
    {
        if (float.IsNaN(value)) return 0x7F;
        int sign = float.IsNegative(value) ? 0x80 : 0;
        double magnitude = Math.Abs((double)value);
        if (magnitude >= 448) return (byte)(sign | 0x7E);
        int best = 0;
        for (int code = 1; code <= 0x7E; code++)
        {
            double d = Math.Abs(Defined(code) - magnitude), bestD = Math.Abs(Defined(best) - magnitude);
            if (d < bestD || (d == bestD && code % 2 == 0)) best = code;
        }
        return (byte)(sign | best);
    }

    [Fact]
    public void Every_bf16_value_converts_to_the_nearest_code_found_by_search()
    {
        for (int bits = 0; bits < 65536; bits++)
        {
            float value = Bf16.ToFloat((ushort)bits);
            Assert.True(Nearest(value) == E4m3.FromFloat(value), $"bf16 0x{bits:X4} ({value}): search 0x{Nearest(value):X2}, codec 0x{E4m3.FromFloat(value):X2}");
        }
    }

    [Fact]
    public void Random_float32_values_convert_to_the_nearest_code_found_by_search()
    {
        var rng = new Random(17);
        for (int i = 0; i < 100_000; i++)
        {
            float value = (float)((rng.NextDouble() * 2 - 1) * Math.Pow(2, rng.Next(-12, 10)));
            Assert.True(Nearest(value) == E4m3.FromFloat(value), $"{value:R}: search 0x{Nearest(value):X2}, codec 0x{E4m3.FromFloat(value):X2}");
        }
    }

    [Theory]
    [InlineData(448f, 0x7E)]
    [InlineData(448.0001f, 0x7E)]
    [InlineData(464f, 0x7E)] // the midpoint to 480 (not a code: 480 is NaN's place)
    [InlineData(479.9f, 0x7E)]
    [InlineData(1e30f, 0x7E)]
    [InlineData(float.PositiveInfinity, 0x7E)]
    [InlineData(-448.5f, 0xFE)]
    [InlineData(-3e38f, 0xFE)]
    [InlineData(float.NegativeInfinity, 0xFE)]
    public void Values_beyond_the_largest_finite_saturate_to_it(float value, int code) =>
        Assert.Equal((byte)code, E4m3.FromFloat(value));

    [Fact]
    public void NaN_of_either_sign_converts_to_0x7F()
    {
        Assert.Equal(0x7F, E4m3.FromFloat(float.NaN));
        Assert.Equal(0x7F, E4m3.FromFloat(-float.NaN));
        Assert.Equal(0x7F, E4m3.FromFloat(BitConverter.UInt32BitsToSingle(0x7F80_0001))); // a signalling NaN
    }

    [Fact]
    public void Zeros_and_values_that_round_to_zero_keep_their_sign()
    {
        float halfSmallest = MathF.ScaleB(1, -10); // the midpoint between 0 and 2^-9: ties to 0, the even code
        Assert.Equal(0x00, E4m3.FromFloat(0f));
        Assert.Equal(0x80, E4m3.FromFloat(-0f));
        Assert.Equal(0x00, E4m3.FromFloat(halfSmallest));
        Assert.Equal(0x80, E4m3.FromFloat(-halfSmallest));
        Assert.Equal(0x01, E4m3.FromFloat(MathF.BitIncrement(halfSmallest)));
        Assert.Equal(0x00, E4m3.FromFloat(float.Epsilon)); // a float32 subnormal
        Assert.Equal(0x80, E4m3.FromFloat(-float.Epsilon));
    }

    [Fact]
    public void Subnormal_codes_are_steps_of_two_to_the_minus_nine()
    {
        for (int m = 0; m <= 8; m++) // 8 steps is 0x08, the smallest normal
            Assert.Equal((byte)m, E4m3.FromFloat(m * MathF.ScaleB(1, -9)));
        Assert.Equal(0x02, E4m3.FromFloat(2.5f * MathF.ScaleB(1, -9))); // ties go to the even step
        Assert.Equal(0x04, E4m3.FromFloat(3.5f * MathF.ScaleB(1, -9)));
        Assert.Equal(0x08, E4m3.FromFloat(7.5f * MathF.ScaleB(1, -9))); // rounds up into the normal range
    }
}
