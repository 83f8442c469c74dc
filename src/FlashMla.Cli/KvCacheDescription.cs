using FlashMla.Contracts.V1;

namespace FlashMla.Cli;

/// <summary>The server's KV cache format in words, for the commands' headers and results files.</summary>
internal static class KvCacheDescription
{
    /// <summary>"fp8" or "bf16".</summary>
    public static string DtypeName(ServiceConfig config) => config.KvDtype == DType.Fp8E4M3Scaled ? "fp8" : "bf16";

    /// <summary>e.g. "KV fp8, 656 B/token, 1835008 tokens/layer".</summary>
    public static string Of(ServiceConfig config) =>
        $"KV {DtypeName(config)}, {config.KvBytesPerToken} B/token, {config.TokenCapacity} tokens/layer";
}
