using System.Globalization;
using System.Text;
using FlashMla.Contracts.V1;
using FlashMla.Core.Cache;

namespace FlashMla.Server.Services;

/// <summary>
/// The wire form of a tensor, checked at the edge: its dtype, its shape against the one the call expects, and its
/// byte count against its shape (overflow-checked: a shape whose element count does not fit in 64 bits is
/// refused, never wrapped). Views the bytes without copying them.
/// </summary>
public static class TensorCodec
{
    /// <summary>
    /// The tensor's bytes, after checking its dtype, its shape (a -1 in <paramref name="shape"/> matches any
    /// positive extent) and its byte count. Every refusal is <see cref="CacheError.InvalidArgument"/>.
    /// </summary>
    public static ReadOnlyMemory<byte> Expect(Tensor? tensor, string name, DType dtype, params ReadOnlySpan<long> shape)
    {
        if (tensor is null) throw CacheException.Invalid($"{name} is missing");
        if (tensor.Dtype != dtype) throw CacheException.Invalid($"{name} must be {dtype}, got {tensor.Dtype}");
        if (tensor.Shape.Count != shape.Length)
            throw CacheException.Invalid($"{name} must have shape {Describe(shape)}, got {Describe(tensor.Shape)}");
        long elements = 1;
        for (int i = 0; i < shape.Length; i++)
        {
            long extent = tensor.Shape[i];
            if (extent <= 0 || (shape[i] >= 0 && extent != shape[i]))
                throw CacheException.Invalid($"{name} must have shape {Describe(shape)}, got {Describe(tensor.Shape)}");
            if (elements > long.MaxValue / extent)
                throw CacheException.Invalid($"{name} of shape {Describe(tensor.Shape)} has more elements than 64 bits count");
            elements *= extent;
        }
        int size = SizeOf(dtype);
        if (elements > long.MaxValue / size)
            throw CacheException.Invalid($"{name} of shape {Describe(tensor.Shape)} has more bytes than 64 bits count");
        long bytes = elements * size;
        if (tensor.Data.Length != bytes)
            throw CacheException.Invalid($"{name} of shape {Describe(tensor.Shape)} needs {bytes} bytes of data, got {tensor.Data.Length}");
        return tensor.Data.Memory;
    }

    public static int SizeOf(DType dtype) => dtype switch
    {
        DType.Bf16 => 2,
        DType.Fp32 => 4,
        DType.Fp8E4M3Scaled => 1, // rows of 656 bytes: the shape says [n, 656]
        _ => throw CacheException.Invalid($"dtype {dtype} is not supported"),
    };

    private static string Describe(ReadOnlySpan<long> shape)
    {
        var text = new StringBuilder("[");
        for (int i = 0; i < shape.Length; i++)
        {
            if (i > 0) text.Append(", ");
            text.Append(shape[i] < 0 ? "n" : shape[i].ToString(CultureInfo.InvariantCulture));
        }
        return text.Append(']').ToString();
    }

    private static string Describe(IList<long> shape)
    {
        Span<long> copy = shape.Count <= 16 ? stackalloc long[shape.Count] : new long[shape.Count];
        for (int i = 0; i < copy.Length; i++) copy[i] = shape[i];
        return Describe(copy);
    }
}
