using System.Globalization;
using FlashMla.Cuda.Backend;

namespace FlashMla.Cuda.DeviceCheck;

/// <summary>
/// Where the device tests find their inputs, and whether a GPU is here. Environment: FLASHMLA_FATBIN (the kernels;
/// default native/build/flashmla.fatbin under the repository), FLASHMLA_ABI_HEADER (default
/// native/include/mla_params.h under the repository), FLASHMLA_DEVICE_SEED (the random inputs; 20261201 unless set).
/// The repository is looked for upward from the working folder and from the test assembly's folder.
/// </summary>
internal static class GpuDevice
{
    /// <summary>The trait every test that needs a GPU carries: <c>[Trait("Category", "Gpu")]</c>.</summary>
    public const string Category = "Gpu";

    public static string FatbinPath { get; } = Environment.GetEnvironmentVariable("FLASHMLA_FATBIN") is { Length: > 0 } fatbin
        ? Path.GetFullPath(fatbin)
        : InRepository("native/build/flashmla.fatbin") ?? Path.GetFullPath("native/build/flashmla.fatbin");

    public static string? HeaderPath { get; } = Environment.GetEnvironmentVariable("FLASHMLA_ABI_HEADER") is { Length: > 0 } header
        ? Path.GetFullPath(header)
        : InRepository("native/include/mla_params.h");

    public static int Seed { get; } = int.TryParse(Environment.GetEnvironmentVariable("FLASHMLA_DEVICE_SEED"), NumberStyles.Integer,
        CultureInfo.InvariantCulture, out int seed) ? seed : 20261201;

    private static readonly Lazy<CudaProbeResult> Probed = new(() => CudaBackendFactory.Probe(FatbinPath!));

    /// <summary>Skips the calling test, saying why, unless a usable GPU and the fatbin are here.</summary>
    public static void Require()
    {
        CudaProbeResult probe = Probed.Value;
        if (!probe.IsUsable) Assert.Skip("no usable CUDA device: " + probe.Reason);
    }

    private static string? InRepository(string relative)
    {
        foreach (string start in new[] { Directory.GetCurrentDirectory(), AppContext.BaseDirectory })
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
                if (Directory.Exists(Path.Combine(dir.FullName, "native", "include")))
                    return Path.Combine(dir.FullName, relative);
        return null;
    }
}
