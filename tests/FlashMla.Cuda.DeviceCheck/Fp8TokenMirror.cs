using FlashMla.Core.Tensors;

namespace FlashMla.Cuda.DeviceCheck;

/// <summary>
/// A host copy of the fp8 tokens the tests wrote (656 bytes each, as the CPU codec quantizes them), gathered as floats
/// without the format's bf16 rounding (<see cref="Fp8KvFormat.DequantizeRowExact"/>): the second reference an fp8
/// kernel may match (see <see cref="ReferenceScore"/>). A quarter of a float mirror's size.
/// </summary>
internal sealed class Fp8TokenMirror(int layers, int blocks)
{
    private const int TokenBytes = Fp8KvFormat.TokenBytes;
    private readonly byte[][] _tokens = Enumerable.Range(0, layers).Select(_ => new byte[(long)blocks * MlaDims.BlockSize * TokenBytes]).ToArray();

    public void Write(int layer, ReadOnlySpan<int> slots, ReadOnlySpan<ushort> rows)
    {
        for (int n = 0; n < slots.Length; n++)
            Fp8KvFormat.QuantizeRow(rows.Slice(n * MlaDims.HeadDimK, MlaDims.HeadDimK), _tokens[layer].AsSpan(slots[n] * TokenBytes, TokenBytes));
    }

    /// <summary>Sequence <paramref name="sequence"/>'s first <paramref name="length"/> rows as code x scale floats, through its block table.</summary>
    public float[] Sequence(int layer, ReadOnlySpan<int> blockTable, int stride, int sequence, int length)
    {
        var rows = new float[length * MlaDims.HeadDimK];
        for (int t = 0; t < length; t++)
        {
            int slot = blockTable[sequence * stride + t / MlaDims.BlockSize] * MlaDims.BlockSize + t % MlaDims.BlockSize;
            Fp8KvFormat.DequantizeRowExact(_tokens[layer].AsSpan(slot * TokenBytes, TokenBytes), rows.AsSpan(t * MlaDims.HeadDimK, MlaDims.HeadDimK));
        }
        return rows;
    }
}
