using FlashMla.Contracts.V1;
using FlashMla.Core.Cache;
using FlashMla.Core.Tensors;

namespace FlashMla.Server.Services;

/// <summary>The cache's KV dtype on the wire: which <see cref="DType"/> and row shape a stored row travels as, and which rows an append takes.</summary>
public static class KvWire
{
    /// <summary>The wire dtype of rows stored as <paramref name="dtype"/>.</summary>
    public static DType DTypeOf(KvDtype dtype) => dtype switch
    {
        KvDtype.Bf16 => DType.Bf16,
        KvDtype.Fp8 => DType.Fp8E4M3Scaled,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "unknown KV dtype"),
    };

    /// <summary>The last extent of a stored row tensor: 576 bf16 values, or 656 bytes.</summary>
    public static int RowExtent(KvDtype dtype) => dtype == KvDtype.Fp8 ? Fp8KvFormat.TokenBytes : MlaDims.HeadDimK;

    /// <summary>
    /// The rows of an append: bf16 <c>[n, 576]</c> into any cache (<c>Stored</c> false), or <c>[n, 656]</c> fp8 rows
    /// into an fp8 cache, copied as they are (<c>Stored</c> true). Anything else is INVALID_ARGUMENT.
    /// </summary>
    public static (ReadOnlyMemory<byte> Bytes, bool Stored) ExpectAppendRows(Tensor? kv, KvDtype cache)
    {
        if (kv?.Dtype == DType.Fp8E4M3Scaled)
        {
            if (cache != KvDtype.Fp8)
                throw CacheException.Invalid(
                    $"kv is {DType.Fp8E4M3Scaled}, but this server's cache is {cache.OptionName()} (KvDtype); send bf16 rows [n, {MlaDims.HeadDimK}]");
            return (TensorCodec.Expect(kv, "kv", DType.Fp8E4M3Scaled, -1, Fp8KvFormat.TokenBytes), true);
        }
        return (TensorCodec.Expect(kv, "kv", DType.Bf16, -1, MlaDims.HeadDimK), false);
    }
}
