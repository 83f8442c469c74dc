namespace FlashMla.Core.Tensors;

/// <summary>How the KV pools store a token's 576-value row.</summary>
public enum KvDtype
{
    /// <summary>576 bf16 values: 1,152 bytes a token.</summary>
    Bf16 = 0,

    /// <summary>FlashMLA's "FP8 with scale" row (<see cref="Fp8KvFormat"/>): 656 bytes a token.</summary>
    Fp8 = 1,
}

/// <summary>The sizes and names of each <see cref="KvDtype"/>.</summary>
public static class KvDtypes
{
    /// <summary>Bytes of one token's row in a pool.</summary>
    public static int BytesPerToken(this KvDtype dtype) => dtype switch
    {
        KvDtype.Bf16 => MlaDims.KvRowBytes,
        KvDtype.Fp8 => Fp8KvFormat.TokenBytes,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "unknown KV dtype"),
    };

    /// <summary>Bytes of one 64-token page of one layer.</summary>
    public static long PageBytes(this KvDtype dtype) => (long)MlaDims.BlockSize * dtype.BytesPerToken();

    /// <summary>The option's spelling: "bf16" or "fp8".</summary>
    public static string OptionName(this KvDtype dtype) => dtype switch
    {
        KvDtype.Bf16 => "bf16",
        KvDtype.Fp8 => "fp8",
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "unknown KV dtype"),
    };

    /// <summary>Parses the option's spelling ("bf16" or "fp8", any case); false for anything else.</summary>
    public static bool TryParse(string? text, out KvDtype dtype)
    {
        switch (text?.Trim().ToLowerInvariant())
        {
            case "bf16":
                dtype = KvDtype.Bf16;
                return true;
            case "fp8":
                dtype = KvDtype.Fp8;
                return true;
            default:
                dtype = KvDtype.Bf16;
                return false;
        }
    }
}
