using System.Globalization;
using FlashMla.Core.Tensors;

namespace FlashMla.Cuda.Backend;

/// <summary>The GPU room's settings; the server binds its own options onto these and calls <see cref="Validate"/> at start-up.</summary>
public sealed class CudaBackendOptions
{
    /// <summary>The kernels, as built by native/build.sh (native/build/flashmla.fatbin).</summary>
    public required string FatbinPath { get; init; }

    /// <summary>Layers of the model: one KV pool each.</summary>
    public required int NumLayers { get; init; }

    /// <summary>How the pools store rows: bf16, or fp8 (FlashMLA's FP8 with scale, the fp8 kernels).</summary>
    public KvDtype KvDtype { get; init; } = KvDtype.Bf16;

    /// <summary>Blocks per pool, or 0 to size the pools from free device memory with <see cref="MemoryFraction"/>.</summary>
    public int NumBlocks { get; init; }

    /// <summary>Share of the device memory free after start-up that the KV pools may take, when <see cref="NumBlocks"/> is 0.</summary>
    public double MemoryFraction { get; init; } = 0.9;

    /// <summary>Device memory kept out of the pools for workspace and staging growth (bytes), when sizing from memory.</summary>
    public long ReservedBytes { get; init; } = 512L << 20;

    public void Validate()
    {
        List<string> problems = [];
        if (string.IsNullOrWhiteSpace(FatbinPath)) problems.Add("FatbinPath is empty");
        if (NumLayers < 1) problems.Add(Invariant($"NumLayers must be at least 1 (got {NumLayers})"));
        if (NumBlocks < 0) problems.Add(Invariant($"NumBlocks must be 0 (size from memory) or positive (got {NumBlocks})"));
        if (NumBlocks > CudaBackendFactory.MaxBlocks) problems.Add(Invariant($"NumBlocks must be at most {CudaBackendFactory.MaxBlocks}: slots are int32 (got {NumBlocks})"));
        if (NumBlocks == 0 && !(MemoryFraction > 0 && MemoryFraction <= 1))
            problems.Add(Invariant($"MemoryFraction must be in (0, 1] (got {MemoryFraction})"));
        if (!Enum.IsDefined(KvDtype)) problems.Add(Invariant($"KvDtype {KvDtype} is not a KV dtype"));
        if (ReservedBytes < 0) problems.Add(Invariant($"ReservedBytes must not be negative (got {ReservedBytes})"));
        if (problems.Count > 0) throw new ArgumentException("CUDA backend options: " + string.Join("; ", problems));
    }

    private static string Invariant(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);
}
