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
    public static IAttentionBackend? TryCreate(FlashMlaOptions options, out string why)
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
                MemoryFraction = options.MemoryFraction,
            });
            // The wire parses tensors into TensorBufferPool and responses are written from it: page-locked,
            // the backend copies between those arrays and the GPU without staging.
            if (options.PinnedTensorBuffers) backend.AttachHostPool(TensorBufferPool.Bytes);
            why = $"{probe.DeviceDescription ?? "GPU"} found and kernels loaded from {fatbin}" +
                (options.PinnedTensorBuffers ? "; tensor buffers page-locked" : "; tensor buffers staged");
            return backend;
        }
        catch (InvalidOperationException ex)
        {
            why = ex.Message;
            return null;
        }
    }
}
