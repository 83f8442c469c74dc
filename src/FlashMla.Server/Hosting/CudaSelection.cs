using FlashMla.Core.Backends;

namespace FlashMla.Server.Hosting;

/// <summary>Probes for the CUDA backend (driver, device, fatbin) and builds it when everything is there.</summary>
public static class CudaSelection
{
    public static IAttentionBackend? TryCreate(FlashMlaOptions options, out string why)
    {
        why = "this build has no CUDA backend wired yet";
        _ = options;
        return null;
    }
}
