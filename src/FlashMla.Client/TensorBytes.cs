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

    /// <summary>
    /// KV rows already in FlashMLA's FP8-with-scale format (<see cref="DType.Fp8E4M3Scaled"/>), a copy of
    /// <paramref name="rows"/>: <c>[rows.Length / 656, 656]</c> bytes.
    /// </summary>
    public static Tensor Fp8Rows(ReadOnlySpan<byte> rows)
    {
        if (rows.Length == 0 || rows.Length % Fp8RowBytes != 0)
            throw new ArgumentException($"fp8 KV rows are {Fp8RowBytes} bytes each; got {rows.Length} bytes", nameof(rows));
        return Make(DType.Fp8E4M3Scaled, ByteString.CopyFrom(rows), [rows.Length / Fp8RowBytes, Fp8RowBytes]);
    }

    /// <summary>As <see cref="Fp8Rows(ReadOnlySpan{byte})"/>, over bytes the caller will not change until the call has been sent (no copy).</summary>
    public static Tensor Fp8Rows(ReadOnlyMemory<byte> rows)
    {
        if (rows.Length == 0 || rows.Length % Fp8RowBytes != 0)
            throw new ArgumentException($"fp8 KV rows are {Fp8RowBytes} bytes each; got {rows.Length} bytes", nameof(rows));
        return Make(DType.Fp8E4M3Scaled, UnsafeByteOperations.UnsafeWrap(rows), [rows.Length / Fp8RowBytes, Fp8RowBytes]);
    }

    /// <summary>Bytes of one KV row in <see cref="DType.Fp8E4M3Scaled"/>.</summary>
    public const int Fp8RowBytes = 656;

    public static ReadOnlySpan<ushort> AsBf16(Tensor tensor) => MemoryMarshal.Cast<byte, ushort>(tensor.Data.Span);

    public static ReadOnlySpan<float> AsFloat(Tensor tensor) => MemoryMarshal.Cast<byte, float>(tensor.Data.Span);

    private static Tensor Make(DType dtype, ByteString data, long[] shape)
    {
        var tensor = new Tensor { Dtype = dtype, Data = data };
        tensor.Shape.Add(shape);
        return tensor;
    }
}
