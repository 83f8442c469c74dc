using FlashMla.Contracts.V1;
using FlashMla.Core.Cache;

namespace FlashMla.Server.Services;

/// <summary>Checks a wire tensor against the shape a call expects and views its bytes without copying.</summary>
public static class TensorCodec
{
    /// <summary>
    /// The tensor's bytes, after checking its dtype, its shape (a -1 in <paramref name="shape"/> matches any
    /// positive extent) and its byte count.
    /// </summary>
    public static ReadOnlyMemory<byte> Expect(Tensor? tensor, string name, DType dtype, params long[] shape)
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
            elements *= extent;
        }
        long bytes = elements * SizeOf(dtype);
        if (tensor.Data.Length != bytes)
            throw CacheException.Invalid($"{name} of shape {Describe(tensor.Shape)} needs {bytes} bytes of data, got {tensor.Data.Length}");
        return tensor.Data.Memory;
    }

    public static int SizeOf(DType dtype) => dtype switch
    {
        DType.Bf16 => 2,
        DType.Fp32 => 4,
        _ => throw CacheException.Invalid($"dtype {dtype} is not supported"),
    };

    private static string Describe(IEnumerable<long> shape) => "[" + string.Join(", ", shape.Select(d => d < 0 ? "n" : d.ToString())) + "]";
}
