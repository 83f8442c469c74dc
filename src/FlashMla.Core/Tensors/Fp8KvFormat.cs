using System.Buffers.Binary;

namespace FlashMla.Core.Tensors;

/// <summary>
/// FlashMLA's "FP8 with scale" KV row, 656 bytes a token: bytes 0..511 the 512 latent ("nope") values as
/// <see cref="E4m3"/>, bytes 512..527 four float32 little-endian scales (scale t covers values 128t .. 128t+127),
/// bytes 528..655 the 64 rope values as bf16, unchanged. A page is 64 such rows (41,984 bytes).
/// <para>
/// Quantization of each 128-value tile: x = float(bf16) (exact), amax = max |x| (NaN if any x is NaN), scale =
/// amax / 448 (fp32 division); a tile whose scale is 0 is stored with scale 0 and every code 0x00; otherwise
/// q = e4m3(x / scale) (fp32 division, then <see cref="E4m3.FromFloat"/>). A NaN scale is stored as 0x7FC00000, the
/// default quiet NaN, which the append kernel writes explicitly (native/include/fp8_kv.cuh; a GPU division would give
/// 0x7FFFFFFF), so both sides write the same bytes. Dequantization: bf16(float(q) * scale), round to nearest even.
/// The CUDA kernels and the native checks' host quantizer (native/check/fp8_host.h) do the same operations in the
/// same order: the bytes match bit for bit.
/// </para>
/// </summary>
public static class Fp8KvFormat
{
    /// <summary>Bytes of one token's row.</summary>
    public const int TokenBytes = NopeBytes + ScalesBytes + RopeBytes;

    /// <summary>Values per scale tile.</summary>
    public const int TileValues = 128;

    /// <summary>Scale tiles per row (512 / 128).</summary>
    public const int Tiles = MlaDims.HeadDimV / TileValues;

    /// <summary>Offset (and length) of the e4m3 codes: one byte per latent value.</summary>
    public const int NopeBytes = MlaDims.HeadDimV;

    /// <summary>Offset of the four float32 scales.</summary>
    public const int ScalesOffset = NopeBytes;

    /// <summary>Bytes of the scales.</summary>
    public const int ScalesBytes = Tiles * sizeof(float);

    /// <summary>Offset of the 64 bf16 rope values.</summary>
    public const int RopeOffset = ScalesOffset + ScalesBytes;

    /// <summary>Rope values per row.</summary>
    public const int RopeValues = MlaDims.HeadDimK - MlaDims.HeadDimV;

    /// <summary>Bytes of the rope values.</summary>
    public const int RopeBytes = RopeValues * sizeof(ushort);

    /// <summary>Bytes of one 64-token page.</summary>
    public const int PageBytes = MlaDims.BlockSize * TokenBytes;

    /// <summary>The bits a NaN scale is stored with: the default quiet NaN, as the kernels write it (mla_params.h).</summary>
    public const uint CanonicalNaNBits = 0x7FC0_0000;

    /// <summary>Quantizes <c>rows.Length / 576</c> bf16 rows into as many 656-byte rows.</summary>
    public static void Quantize(ReadOnlySpan<ushort> rows, Span<byte> stored)
    {
        int count = RowCount(rows.Length, stored.Length);
        for (int r = 0; r < count; r++)
            QuantizeRow(rows.Slice(r * MlaDims.HeadDimK, MlaDims.HeadDimK), stored.Slice(r * TokenBytes, TokenBytes));
    }

    /// <summary>Dequantizes <c>stored.Length / 656</c> rows into as many bf16 rows of 576.</summary>
    public static void Dequantize(ReadOnlySpan<byte> stored, Span<ushort> rows)
    {
        int count = RowCount(rows.Length, stored.Length);
        for (int r = 0; r < count; r++)
            DequantizeRow(stored.Slice(r * TokenBytes, TokenBytes), rows.Slice(r * MlaDims.HeadDimK, MlaDims.HeadDimK));
    }

    /// <summary>
    /// bf16 rows as an fp8 cache holds them: quantized, then dequantized. What a reference attends over to check
    /// a decode over an fp8 cache (allocates: for checks, not for the hot path).
    /// </summary>
    public static ushort[] RoundTrip(ReadOnlySpan<ushort> rows)
    {
        var stored = new byte[rows.Length / MlaDims.HeadDimK * TokenBytes];
        Quantize(rows, stored);
        var back = new ushort[rows.Length];
        Dequantize(stored, back);
        return back;
    }

    /// <summary>One row: 576 bf16 values in, 656 bytes out.</summary>
    public static void QuantizeRow(ReadOnlySpan<ushort> row, Span<byte> stored)
    {
        CheckRow(row.Length, stored.Length);
        for (int t = 0; t < Tiles; t++)
        {
            float scale = QuantizeTile(row.Slice(t * TileValues, TileValues), stored.Slice(t * TileValues, TileValues));
            uint scaleBits = float.IsNaN(scale) ? CanonicalNaNBits : BitConverter.SingleToUInt32Bits(scale);
            BinaryPrimitives.WriteUInt32LittleEndian(stored.Slice(ScalesOffset + t * sizeof(float)), scaleBits);
        }
        for (int c = 0; c < RopeValues; c++)
            BinaryPrimitives.WriteUInt16LittleEndian(stored.Slice(RopeOffset + c * sizeof(ushort)), row[MlaDims.HeadDimV + c]);
    }

    /// <summary>One row: 656 bytes in, 576 bf16 values out.</summary>
    public static void DequantizeRow(ReadOnlySpan<byte> stored, Span<ushort> row)
    {
        CheckRow(row.Length, stored.Length);
        for (int t = 0; t < Tiles; t++)
        {
            float scale = Scale(stored, t);
            for (int i = t * TileValues; i < (t + 1) * TileValues; i++)
                row[i] = Bf16.FromFloat(E4m3.ToFloat(stored[i]) * scale);
        }
        for (int c = 0; c < RopeValues; c++)
            row[MlaDims.HeadDimV + c] = BinaryPrimitives.ReadUInt16LittleEndian(stored.Slice(RopeOffset + c * sizeof(ushort)));
    }

    /// <summary>
    /// One row to floats without the format's bf16 rounding: code times scale (in fp32), the rope as it is. Not the
    /// format's dequantization (<see cref="DequantizeRow"/> is): the checks' second reference, for kernels that apply
    /// the scales in fp32 around their products.
    /// </summary>
    public static void DequantizeRowExact(ReadOnlySpan<byte> stored, Span<float> row)
    {
        CheckRow(row.Length, stored.Length);
        for (int t = 0; t < Tiles; t++)
        {
            float scale = Scale(stored, t);
            for (int i = t * TileValues; i < (t + 1) * TileValues; i++) row[i] = E4m3.ToFloat(stored[i]) * scale;
        }
        for (int c = 0; c < RopeValues; c++)
            row[MlaDims.HeadDimV + c] = Bf16.ToFloat(BinaryPrimitives.ReadUInt16LittleEndian(stored.Slice(RopeOffset + c * sizeof(ushort))));
    }

    /// <summary>Scale <paramref name="tile"/> (0..3) of a stored row.</summary>
    public static float Scale(ReadOnlySpan<byte> stored, int tile) =>
        BinaryPrimitives.ReadSingleLittleEndian(stored.Slice(ScalesOffset + tile * sizeof(float)));

    /// <summary>
    /// One tile: 128 bf16 values in, 128 e4m3 codes out; returns the tile's scale (0 for an all-zero tile, NaN
    /// when a value is NaN).
    /// </summary>
    public static float QuantizeTile(ReadOnlySpan<ushort> values, Span<byte> codes)
    {
        if (values.Length != TileValues || codes.Length < TileValues)
            throw new ArgumentException($"a tile is {TileValues} values and {TileValues} codes");
        float amax = 0f;
        bool nan = false;
        foreach (ushort v in values)
        {
            float magnitude = MathF.Abs(Bf16.ToFloat(v));
            if (float.IsNaN(magnitude)) nan = true;
            else if (magnitude > amax) amax = magnitude;
        }
        float scale = nan ? float.NaN : amax / E4m3.MaxFinite;
        if (scale == 0f)
        {
            codes[..TileValues].Clear();
            return 0f;
        }
        for (int i = 0; i < TileValues; i++) codes[i] = E4m3.FromFloat(Bf16.ToFloat(values[i]) / scale);
        return scale;
    }

    private static int RowCount(int values, int bytes)
    {
        if (values % MlaDims.HeadDimK != 0 || bytes % TokenBytes != 0 || values / MlaDims.HeadDimK != bytes / TokenBytes)
            throw new ArgumentException(
                $"{values} bf16 values and {bytes} stored bytes are not the same whole number of rows ({MlaDims.HeadDimK} values, {TokenBytes} bytes each)");
        return values / MlaDims.HeadDimK;
    }

    private static void CheckRow(int values, int bytes)
    {
        if (values != MlaDims.HeadDimK || bytes != TokenBytes)
            throw new ArgumentException($"a row is {MlaDims.HeadDimK} bf16 values and {TokenBytes} stored bytes, got {values} and {bytes}");
    }
}
