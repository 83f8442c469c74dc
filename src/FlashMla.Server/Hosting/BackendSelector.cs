using FlashMla.Core.Backends;
using FlashMla.Core.Backends.Cpu;
using FlashMla.Core.Memory;
using FlashMla.Core.Tensors;

namespace FlashMla.Server.Hosting;

/// <summary>Picks and builds the backend from the options: auto | cpu | cuda, and says why.</summary>
public static class BackendSelector
{
    public static BackendHolder Create(FlashMlaOptions options, PinnedTensorPool tensorBuffers, MeasurementSwitches switches)
    {
        switch (options.Backend)
        {
            case "cpu":
                return new BackendHolder(CreateCpu(options), "asked for with Backend=cpu");
            case "cuda":
            {
                var cuda = CudaSelection.TryCreate(options, tensorBuffers, switches, out string why);
                return cuda is null
                    ? throw new InvalidOperationException("Backend=cuda was asked for, but the CUDA backend cannot start: " + why)
                    : new BackendHolder(cuda, "asked for with Backend=cuda; " + why);
            }
            default:
            {
                var cuda = CudaSelection.TryCreate(options, tensorBuffers, switches, out string why);
                return cuda is not null
                    ? new BackendHolder(cuda, "auto: " + why)
                    : new BackendHolder(CreateCpu(options), "auto: no usable GPU (" + why + "), using the CPU backend");
            }
        }
    }

    /// <summary>
    /// Blocks per layer for the CPU backend: the explicit count, or the memory budget divided by a block of every
    /// layer in the KV dtype (an fp8 block is 41,984 bytes against bf16's 73,728, so the budget holds 1.756x the blocks).
    /// </summary>
    public static int CpuBlockCount(FlashMlaOptions options)
    {
        if (options.TotalBlocks > 0) return options.TotalBlocks;
        long budget = (long)(options.CpuMemoryMiB * 1024L * 1024L * options.MemoryFraction);
        long blockBytes = options.ParsedKvDtype.PageBytes();
        long blocks = budget / (blockBytes * options.Layers);
        if (blocks < 1)
            throw new InvalidOperationException(
                $"CpuMemoryMiB={options.CpuMemoryMiB} x MemoryFraction={options.MemoryFraction} does not hold one block of {options.Layers} layers ({blockBytes * options.Layers} bytes)");
        return (int)Math.Min(blocks, int.MaxValue / MlaDims.BlockSize);
    }

    private static IAttentionBackend CreateCpu(FlashMlaOptions options) =>
        new CpuBackend(new KvPoolGeometry(options.Layers, CpuBlockCount(options), options.ParsedKvDtype), options.CpuThreads == 0 ? null : options.CpuThreads);
}
