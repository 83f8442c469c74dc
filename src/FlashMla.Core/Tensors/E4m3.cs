using System.Runtime.CompilerServices;

namespace FlashMla.Core.Tensors;

/// <summary>
/// OCP float8 e4m3 ("e4m3fn") as its raw byte: sign, 4 exponent bits (bias 7), 3 mantissa bits; no infinities,
/// 0x7F and 0xFF are NaN, 448 the largest finite value, 2^-9 the smallest subnormal. <see cref="FromFloat"/> is the
/// conversion PTX <c>cvt.rn.satfinite.e4m3x2.f32</c> does, so the CPU and the GPU quantize to identical bytes.
/// </summary>
public static class E4m3
{
    /// <summary>The largest finite value.</summary>
    public const float MaxFinite = 448f;

    /// <summary>The code of +448 (the sign bit makes it -448).</summary>
    public const byte MaxFiniteCode = 0x7E;

    /// <summary>The NaN code the conversion produces.</summary>
    public const byte NaNCode = 0x7F;

    private const float SmallestNormal = 1f / 64; // 2^-6

    private static readonly float[] Decoded = BuildTable();

    /// <summary>The value of a code, exactly (every e4m3 value is a float32); both NaN codes give the default quiet NaN, 0x7FC00000.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToFloat(byte code) => Decoded[code];

    /// <summary>
    /// Round to nearest even; finite values beyond ±448 and ±infinity saturate to ±448; NaN gives 0x7F; the sign
    /// is kept for zeros and for values that round to zero.
    /// </summary>
    public static byte FromFloat(float value)
    {
        uint bits = BitConverter.SingleToUInt32Bits(value);
        byte sign = (byte)((bits >> 24) & 0x80);
        float magnitude = BitConverter.UInt32BitsToSingle(bits & 0x7FFF_FFFF);
        if (float.IsNaN(magnitude)) return NaNCode;
        if (magnitude >= MaxFinite) return (byte)(sign | MaxFiniteCode);
        if (magnitude < SmallestNormal)
        {
            // Subnormal range: steps of 2^-9; a * 2^9 is exact, so one rounding. 8 steps is 0x08, the smallest normal.
            return (byte)(sign | (int)MathF.Round(magnitude * 512f, MidpointRounding.ToEven));
        }
        int exponent = (int)((bits >> 23) & 0xFF) - 127; // -6 .. 8 here
        float step = BitConverter.Int32BitsToSingle((127 + 3 - exponent) << 23); // 2^(3 - exponent): mantissa in [8, 16)
        int steps = (int)MathF.Round(magnitude * step, MidpointRounding.ToEven); // 8 .. 16; 16 carries into the exponent
        return (byte)(sign | (((exponent + 7) << 3) + steps - 8));
    }

    private static float[] BuildTable()
    {
        var table = new float[256];
        for (int code = 0; code < 256; code++)
        {
            int exponent = (code >> 3) & 0xF, mantissa = code & 7;
            if (exponent == 0xF && mantissa == 7)
            {
                // Positive whatever the sign bit, as the native checks' host codec has it, so that a NaN tile
                // dequantizes to the same bf16 bits (0x7FC0) on both; float.NaN is 0xFFC00000 on .NET.
                table[code] = BitConverter.UInt32BitsToSingle(0x7FC0_0000);
                continue;
            }
            float magnitude = exponent == 0 ? mantissa * (1f / 512) : (8 + mantissa) * MathF.ScaleB(1f, exponent - 10);
            table[code] = (code & 0x80) != 0 ? -magnitude : magnitude;
        }
        return table;
    }
}
