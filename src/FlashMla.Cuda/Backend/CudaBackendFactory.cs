using System.Globalization;
using FlashMla.Core.Tensors;
using FlashMla.Cuda.Interop;

namespace FlashMla.Cuda.Backend;

/// <summary>
/// How the server finds out whether it can run on the GPU and gets a <see cref="CudaBackend"/>.
/// <code>
/// var probe = CudaBackendFactory.Probe(fatbinPath);          // never throws
/// log(probe.Reason);
/// if (probe.IsUsable) backend = CudaBackendFactory.Create(options);
/// </code>
/// <c>--backend auto</c> creates the CUDA backend when <see cref="CudaProbeResult.IsUsable"/>, else the
/// CPU one; <c>--backend cuda</c> refuses to start with <see cref="CudaProbeResult.Reason"/> when it is not.
/// </summary>
public static class CudaBackendFactory
{
    /// <summary>Bytes of one bf16 block (page) of one layer: 64 x 576 bf16 (an fp8 block: <see cref="KvDtypes.PageBytes"/>, 41,984).</summary>
    public const long BlockBytesPerLayer = (long)MlaDims.BlockSize * MlaDims.KvRowBytes;

    /// <summary>The most blocks a pool may have: slots (<c>block * 64 + offset</c>) are int32.</summary>
    public const int MaxBlocks = int.MaxValue / MlaDims.BlockSize;

    /// <summary>Whether a driver, a Hopper GPU and the fatbin are here, and why not in words. Never throws.</summary>
    public static CudaProbeResult Probe(string fatbinPath)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(fatbinPath);
        return CudaProbe.Run(fatbinPath);
    }

    /// <summary>
    /// Opens device 0, loads the fatbin and allocates the pools. Throws <see cref="InvalidOperationException"/>
    /// with the probe's reason when the backend cannot run here, or with the CUDA error when start-up fails.
    /// </summary>
    public static CudaBackend Create(CudaBackendOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        CudaProbeResult probe = Probe(options.FatbinPath);
        if (!probe.IsUsable) throw new InvalidOperationException("CUDA backend unavailable: " + probe.Reason);
        try
        {
            return CudaBackend.Open(options);
        }
        catch (CudaException e)
        {
            throw new InvalidOperationException("CUDA backend failed to start: " + e.Message, e);
        }
    }

    /// <summary>
    /// Blocks per layer that fit in <paramref name="fraction"/> of <paramref name="freeBytes"/> of device
    /// memory after <paramref name="reservedBytes"/> are kept back, for <paramref name="numLayers"/> pools of
    /// <paramref name="dtype"/> (fp8 blocks are 1152/656 = 1.756x as many). Throws when not even one block fits.
    /// </summary>
    public static int BlockCountFromMemory(long freeBytes, double fraction, int numLayers, long reservedBytes, KvDtype dtype = KvDtype.Bf16)
    {
        long blockBytes = dtype.PageBytes();
        ArgumentOutOfRangeException.ThrowIfNegative(freeBytes);
        ArgumentOutOfRangeException.ThrowIfLessThan(numLayers, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(reservedBytes);
        if (!(fraction > 0 && fraction <= 1)) throw new ArgumentOutOfRangeException(nameof(fraction), fraction, "must be in (0, 1]");
        long usable = (long)Math.Floor(freeBytes * fraction) - reservedBytes;
        long blocks = usable <= 0 ? 0 : usable / (numLayers * blockBytes);
        if (blocks < 1)
            throw new InvalidOperationException(string.Create(CultureInfo.InvariantCulture,
                $"no KV block fits: {freeBytes / (double)(1L << 30):F2} GiB free x {fraction} - {reservedBytes / (double)(1L << 20):F0} MiB reserved is less than one block of {numLayers} layers ({numLayers * blockBytes} bytes)"));
        return (int)Math.Min(blocks, MaxBlocks);
    }
}
