namespace FlashMla.Core.Tensors;

/// <summary>The fixed dimensions of MLA decode with absorbed weights (DeepSeek-V2/V3).</summary>
public static class MlaDims
{
    /// <summary>Columns of q and of a KV row: 512 latent ("nope") + 64 rope.</summary>
    public const int HeadDimK = 576;

    /// <summary>Columns of V (the first 512 of a KV row) and of the output.</summary>
    public const int HeadDimV = 512;

    /// <summary>Tokens per KV page (block).</summary>
    public const int BlockSize = 64;

    /// <summary>Bytes of one KV row in bf16.</summary>
    public const int KvRowBytes = HeadDimK * 2;

    /// <summary>Largest h_q any backend supports (128 heads / tensor-parallel degree 1).</summary>
    public const int MaxHeads = 128;

    /// <summary>The scale used when a request leaves it unset.</summary>
    public static readonly float DefaultSoftmaxScale = 1f / MathF.Sqrt(HeadDimK);

    /// <summary>Blocks needed to hold <paramref name="tokens"/> tokens.</summary>
    public static int BlocksFor(int tokens) => (tokens + BlockSize - 1) / BlockSize;
}
