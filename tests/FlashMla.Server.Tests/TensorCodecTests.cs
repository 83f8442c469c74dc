using FlashMla.Contracts.V1;
using FlashMla.Core.Cache;
using FlashMla.Server.Services;
using Google.Protobuf;

namespace FlashMla.Server.Tests;

/// <summary>The edge's check of a wire tensor: dtype, shape, and bytes against the shape without wrapping around.</summary>
public class TensorCodecTests
{
    private static Tensor Bf16(int bytes, params long[] shape)
    {
        var tensor = new Tensor { Dtype = DType.Bf16, Data = ByteString.CopyFrom(new byte[bytes]) };
        tensor.Shape.Add(shape);
        return tensor;
    }

    private static string Refusal(Tensor tensor, params long[] expected)
    {
        var error = Assert.Throws<CacheException>(() => TensorCodec.Expect(tensor, "kv", DType.Bf16, expected));
        Assert.Equal(CacheError.InvalidArgument, error.Error);
        return error.Message;
    }

    [Fact]
    public void A_tensor_of_the_expected_shape_and_size_is_viewed_in_place()
    {
        var tensor = Bf16(3 * 576 * 2, 3, 576);
        var bytes = TensorCodec.Expect(tensor, "kv", DType.Bf16, -1, 576);
        Assert.Equal(3 * 576 * 2, bytes.Length);
        Assert.True(tensor.Data.Memory.Span == bytes.Span); // the same memory, not a copy
    }

    [Fact]
    public void A_shape_whose_element_count_overflows_64_bits_is_invalid_argument_not_a_wrapped_size()
    {
        // 2^55 x 576 elements wraps a signed 64-bit product; 2^62 x 576 wraps it to a small number.
        Assert.Contains("more elements than 64 bits count", Refusal(Bf16(1152, 1L << 55, 576), -1, 576));
        Assert.Contains("more elements than 64 bits count", Refusal(Bf16(1152, 1L << 62, 1L << 62), -1, -1));
        // Elements fit, bytes do not (x2 for bf16).
        Assert.Contains("more bytes than 64 bits count", Refusal(Bf16(2, 1L << 62, 1), -1, 1));
    }

    [Fact]
    public void Dtype_shape_and_byte_count_are_each_refused_with_what_was_expected()
    {
        var fp32 = Bf16(1152, 1, 576);
        fp32.Dtype = DType.Fp32;
        Assert.Contains("kv must be Bf16, got Fp32", Refusal(fp32, -1, 576));
        Assert.Contains("kv must have shape [n, 576], got [1, 512]", Refusal(Bf16(1024, 1, 512), -1, 576));
        Assert.Contains("kv must have shape [n, 576], got [0, 576]", Refusal(Bf16(0, 0, 576), -1, 576));
        Assert.Contains("needs 1152 bytes of data, got 1150", Refusal(Bf16(1150, 1, 576), -1, 576));
        Assert.Contains("kv is missing", Assert.Throws<CacheException>(() => TensorCodec.Expect(null, "kv", DType.Bf16, 1)).Message);
    }
}
