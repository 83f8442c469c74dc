using FlashMla.Core.Backends;
using FlashMla.Core.Backends.Cpu;
using FlashMla.Core.Tensors;
using FlashMla.Cuda.Backend;
using FlashMla.Cuda.Interop;

namespace FlashMla.Cuda.DeviceCheck;

/// <summary>
/// An fp8 CUDA backend (KvDtype fp8: the fp8 kernels) and its oracle, an fp8 CPU backend of the same geometry,
/// written alike, with three host copies of what was written: the bf16 rows as sent, as an fp8 cache gives them back
/// (<see cref="Fp8KvFormat.RoundTrip"/>), and the fp8 tokens themselves (for the unrounded code x scale reference). Opened on first use, so without a GPU nothing opens; a fatbin without the fp8
/// kernels skips the test that asked, saying so (device-round's -failSkips turns that into a failure there).
/// </summary>
public sealed class Fp8Backends : IDisposable
{
    public const int Layers = 2, Blocks = 3072;

    private CudaBackend? _gpu;
    private CpuBackend? _cpu;

    private KvMirror? _sent, _dequantized;
    private Fp8TokenMirror? _tokens;

    // Half a gigabyte each: made on first use, so a run without a GPU never holds them.
    internal KvMirror Sent => _sent ??= new(Layers, Blocks);
    internal KvMirror Dequantized => _dequantized ??= new(Layers, Blocks);
    internal Fp8TokenMirror Tokens => _tokens ??= new(Layers, Blocks);

    internal CudaBackend Gpu => _gpu ??= OpenGpu();
    internal CpuBackend Cpu => _cpu ??= new CpuBackend(new KvPoolGeometry(Layers, Blocks, KvDtype.Fp8));

    /// <summary>bf16 rows into both backends (each quantizes them) and both host copies.</summary>
    internal void Write(int layer, int[] slots, ushort[] rows)
    {
        Gpu.WriteKv(layer, slots, rows);
        Cpu.WriteKv(layer, slots, rows);
        Sent.Write(layer, slots, rows);
        Dequantized.Write(layer, slots, Fp8KvFormat.RoundTrip(rows));
        Tokens.Write(layer, slots, rows);
    }

    /// <summary>The rows a decode step appended, into the host copies (the backends appended them themselves).</summary>
    internal void Appended(int layer, int[] slots, ushort[] rows)
    {
        Sent.Write(layer, slots, rows);
        Dequantized.Write(layer, slots, Fp8KvFormat.RoundTrip(rows));
        Tokens.Write(layer, slots, rows);
    }

    /// <summary>Seeds the inputs of one test, as <see cref="DeviceBackend.Steps"/> does.</summary>
    internal static DeviceSteps Steps(string test) => new(new Random(HashCode.Combine(GpuDevice.Seed, DeviceBackend.StableHash("fp8 " + test))));

    private static CudaBackend OpenGpu()
    {
        try
        {
            var backend = CudaBackendFactory.Create(new CudaBackendOptions
                { FatbinPath = GpuDevice.FatbinPath, NumLayers = Layers, NumBlocks = Blocks, KvDtype = KvDtype.Fp8 });
            backend.PoisonResults = true;
            backend.TransferChunkBytes = 64 << 10;
            return backend;
        }
        catch (InvalidOperationException e) when (e.InnerException is CudaException { Result: CUresult.CUDA_ERROR_NOT_FOUND })
        {
            Assert.Skip($"the fatbin {GpuDevice.FatbinPath} has no fp8 kernels ({MlaKernelAbi.KernelDecodeFp8}, {MlaKernelAbi.KernelAppendFp8}, " +
                $"{MlaKernelAbi.KernelAppendFp8Raw}, {MlaKernelAbi.KernelCopyFp8}): {e.Message}");
            throw;
        }
    }

    public void Dispose()
    {
        _gpu?.Dispose();
        _cpu?.Dispose();
    }
}
