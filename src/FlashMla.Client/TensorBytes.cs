using System.Runtime.InteropServices;
using FlashMla.Contracts.V1;
using Google.Protobuf;

namespace FlashMla.Client;

/// <summary>Wire tensors from spans of bf16 (raw <see cref="ushort"/> bits) or float, and back.</summary>
public static class TensorBytes
{
    /// <summary>A bf16 tensor holding a copy of <paramref name="values"/>.</summary>
    public static Tensor Bf16(ReadOnlySpan<ushort> values, params long[] shape) =>
        Make(DType.Bf16, ByteString.CopyFrom(MemoryMarshal.AsBytes(values)), shape);

    /// <summary>A bf16 tensor over bytes the caller will not change until the call has been sent (no copy).</summary>
    public static Tensor Bf16(ReadOnlyMemory<byte> bytes, params long[] shape) =>
        Make(DType.Bf16, UnsafeByteOperations.UnsafeWrap(bytes), shape);

    public static ReadOnlySpan<ushort> AsBf16(Tensor tensor) => MemoryMarshal.Cast<byte, ushort>(tensor.Data.Span);

    public static ReadOnlySpan<float> AsFloat(Tensor tensor) => MemoryMarshal.Cast<byte, float>(tensor.Data.Span);

    private static Tensor Make(DType dtype, ByteString data, long[] shape)
    {
        var tensor = new Tensor { Dtype = dtype, Data = data };
        tensor.Shape.Add(shape);
        return tensor;
    }
}
