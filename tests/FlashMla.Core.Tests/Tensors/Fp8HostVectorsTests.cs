using System.Buffers.Binary;
using System.Security.Cryptography;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Tests.Tensors;

/// <summary>
/// The codec against the native checks' host quantizer (native/check/fp8_host.h), which the GPU's bytes are checked
/// against bit for bit: four rows, quantized and dequantized there by Fp8HostVectors.cpp (beside this file; g++ on the
/// dev VM, 2026-12-03), must give the same stored bytes and the same bf16 here. The rows are built by the same
/// generator on both sides.
/// </summary>
public class Fp8HostVectorsTests
{
    private static readonly ushort[] Ties =
    [
        0x43E0, 0x4188, 0x4198, 0x3F88, 0x3F98, 0x3A80, 0x3AC0, 0x3B20,
        0xC188, 0xBF88, 0xBA80, 0xC3E0, 0x4380, 0x4390, 0x3C00, 0x3B80,
    ];

    private ulong _state;

    private ushort NextBits()
    {
        _state = unchecked(_state * 6364136223846793005ul + 1442695040888963407ul);
        return (ushort)(_state >> 48);
    }

    private ushort[] Row(int which)
    {
        var row = new ushort[MlaDims.HeadDimK];
        switch (which)
        {
            case 0 or 1: // raw random bit patterns: NaN, infinities, subnormals and huge values among them
                _state = (ulong)which + 1;
                for (int i = 0; i < row.Length; i++) row[i] = NextBits();
                break;
            case 2: // hostile tiles: +0/-0; the largest bf16 among huge values; subnormals; ties at scale exactly 1
                _state = 3;
                for (int i = 0; i < 128; i++) row[i] = (i & 1) != 0 ? (ushort)0x8000 : (ushort)0;
                for (int i = 128; i < 256; i++) row[i] = (ushort)((NextBits() & 0x80FF) | 0x7E00);
                row[200] = 0x7F7F;
                for (int i = 256; i < 384; i++) row[i] = (ushort)((i & 0x7F) | ((i & 1) << 15));
                for (int i = 384; i < 512; i++) row[i] = Ties[i & 15];
                for (int i = 512; i < row.Length; i++) row[i] = NextBits();
                break;
            default: // moderate values, +inf in tile 0 and -inf in tile 1
                _state = 4;
                for (int i = 0; i < row.Length; i++) row[i] = (ushort)(NextBits() & 0xBFFF);
                row[10] = 0x7F80;
                row[140] = 0xFF80;
                break;
        }
        return row;
    }

    [Theory]
    [InlineData(0, "faca719c3c6bafc5c8dbf2cebecce3419f699ab8d30b551e9a7be627c18c2b71", 0x79c36db7u, 0x7a892492u, 0x7ae49249u, 0x7fc00000u)]
    [InlineData(1, "22e84a73c0dbb6ea518b799b27ac674ec283f1892ec2f67e4af39d2893f7a425", 0x7a8edb6eu, 0x7b100000u, 0x7a612492u, 0x7fc00000u)]
    [InlineData(2, "dc3ed4ca5dc0ad6746beffc4c673409f80016248988fd12f568daa74f7c6c573", 0x00000000u, 0x7b11b6dbu, 0x00004892u, 0x3f800000u)]
    [InlineData(3, "b3bba38a4725f461bb2c322a2046ba431ab95447b5cbe391d6a28ccb683457fa", 0x7f800000u, 0x7f800000u, 0x3ab5b6dbu, 0x3b86db6eu)]
    public void Quantized_rows_are_the_host_quantizers_bytes(int which, string storedSha256, uint scale0, uint scale1, uint scale2, uint scale3)
    {
        var stored = new byte[Fp8KvFormat.TokenBytes];
        Fp8KvFormat.QuantizeRow(Row(which), stored);

        uint[] scales = [.. Enumerable.Range(0, 4).Select(t => BinaryPrimitives.ReadUInt32LittleEndian(stored.AsSpan(512 + 4 * t)))];
        Assert.Equal([scale0, scale1, scale2, scale3], scales);
        Assert.Equal(storedSha256, Convert.ToHexStringLower(SHA256.HashData(stored)));
    }

    [Fact]
    public void Ties_at_scale_one_round_to_the_even_code_as_the_host_quantizer_does()
    {
        var stored = new byte[Fp8KvFormat.TokenBytes];
        Fp8KvFormat.QuantizeRow(Row(2), stored);
        // 448, 17 -> 16, 19 -> 20, 1.0625 -> 1, 1.1875 -> 1.25, 2^-10 -> 0, 1.5 * 2^-10 -> 2^-9, 1.25 * 2^-9 -> 2^-9,
        // -17 -> -16, -1.0625 -> -1, -2^-10 -> -0, -448, 256, 288, 2^-7, 2^-8.
        Assert.Equal(Convert.FromHexString("7e585a383a000101d8b880fe78790402"), stored.AsSpan(384, 16).ToArray());
    }

    [Theory]
    [InlineData(0, "4f2bbd3b5de86bbc4431dc909bfb94d03e928112a8e88ed68b81287111b9ca1c")]
    [InlineData(1, "01d1ede299c0bde3d86a07884c0eeb977eabcb9b45370970fbc76aac12a661dc")]
    [InlineData(2, "d6054a821995b196a1f51136081804ed90aa8932b975c9ce6cf4ed2afc8d46d0")]
    [InlineData(3, "e44ab1ff775923fcec6cefa7ab4fdbb7389510f99cd0f80339015e86a0a02f09")]
    public void Dequantized_rows_are_the_host_codecs_bf16_including_NaN_tiles(int which, string backSha256)
    {
        var stored = new byte[Fp8KvFormat.TokenBytes];
        Fp8KvFormat.QuantizeRow(Row(which), stored);
        var back = new ushort[MlaDims.HeadDimK];
        Fp8KvFormat.DequantizeRow(stored, back);

        var bytes = new byte[back.Length * sizeof(ushort)];
        for (int i = 0; i < back.Length; i++) BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(2 * i), back[i]);
        Assert.Equal(backSha256, Convert.ToHexStringLower(SHA256.HashData(bytes)));
    }

    [Fact]
    public void Both_NaN_codes_dequantize_to_the_positive_quiet_NaN_as_the_host_codec_has_them()
    {
        // fp8_host.h's e4m3_value gives NAN (0x7FC00000) for 0x7F and 0xFF alike; a stored row from elsewhere may hold either.
        var stored = new byte[Fp8KvFormat.TokenBytes];
        stored[0] = 0x7F;
        stored[1] = 0xFF;
        stored[2] = 0x38; // 1.0
        BinaryPrimitives.WriteSingleLittleEndian(stored.AsSpan(Fp8KvFormat.ScalesOffset), 2f);
        var back = new ushort[MlaDims.HeadDimK];
        Fp8KvFormat.DequantizeRow(stored, back);
        Assert.Equal(0x7FC0_0000u, BitConverter.SingleToUInt32Bits(E4m3.ToFloat(0xFF)));
        Assert.Equal([(ushort)0x7FC0, (ushort)0x7FC0, Bf16.FromFloat(2f)], back[..3]);
    }
}
