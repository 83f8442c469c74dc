using FlashMla.Core.Backends;
using FlashMla.Core.Memory;
using FlashMla.Cuda.Backend;

namespace FlashMla.Server.Hosting;

/// <summary>Probes for the CUDA backend (driver, Hopper device, fatbin) and builds it when everything is there.</summary>
public static class CudaSelection
{
    /// <summary>The fatbin path: absolute as given, relative ones from the executable's folder.</summary>
    public static string ResolveFatbin(FlashMlaOptions options) =>
        Path.IsPathRooted(options.FatbinPath) ? options.FatbinPath : Path.Combine(AppContext.BaseDirectory, options.FatbinPath);

    /// <summary>The backend, or null with <paramref name="why"/> saying what is missing.</summary>
    /// <param name="tensorBuffers">The host's tensor pool: page-locked for the backend unless <paramref name="switches"/> say to stage.</param>
    public static IAttentionBackend? TryCreate(FlashMlaOptions options, PinnedTensorPool tensorBuffers, MeasurementSwitches switches, out string why)
    {
        string fatbin = ResolveFatbin(options);
        var probe = CudaBackendFactory.Probe(fatbin);
        if (!probe.IsUsable)
        {
            why = probe.Reason;
            return null;
        }
        try
        {
            var backend = CudaBackendFactory.Create(new CudaBackendOptions
            {
                FatbinPath = fatbin,
                NumLayers = options.Layers,
                NumBlocks = options.TotalBlocks,
                KvDtype = options.ParsedKvDtype,
                MemoryFraction = options.MemoryFraction,
            });
            // The wire parses tensors into the host's pool and responses are written from it: page-locked, the
            // backend copies between those arrays and the GPU without staging.
            if (!switches.StageTensorBuffers) backend.AttachHostPool(tensorBuffers);
            why = $"{probe.DeviceDescription ?? "GPU"} found and kernels loaded from {fatbin}" +
                (switches.StageTensorBuffers ? $"; tensor buffers staged ({MeasurementSwitches.StageTensorBuffersVariable}=1)" : "; tensor buffers page-locked");
            return backend;
        }
        catch (InvalidOperationException ex)
        {
            why = ex.Message;
            return null;
        }
    }
}
