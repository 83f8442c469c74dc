using FlashMla.Core.Backends;
using FlashMla.Core.Tensors;
using FlashMla.Cuda.Backend;
using FlashMla.Cuda.Interop;

namespace FlashMla.Cuda.DeviceCheck;

/// <summary>
/// A sticky device fault: the context is lost for good, the backend says so with the CUDA error, and every later call
/// fails at once. The fault kills the process's CUDA context, so this collection runs last (<see cref="GpuLastOrderer"/>).
/// </summary>
[Collection(StickyFaultCollection.Name), Trait("Category", GpuDevice.Category)]
public sealed class StickyFaultTests(ITestOutputHelper output)
{
    [Fact]
    public void After_a_sticky_fault_the_backend_reports_it_and_refuses_every_later_call()
    {
        GpuDevice.Require();
        using CudaBackend doomed = CudaBackendFactory.Create(new CudaBackendOptions { FatbinPath = GpuDevice.FatbinPath, NumLayers = 1, NumBlocks = 4 });

        CudaException injected = DeviceFault.Inject(GpuDevice.FatbinPath);
        Assert.True(injected.IsSticky, injected.Message);

        var first = Assert.Throws<BackendFaultException>(() => doomed.WriteKv(0, [0], new ushort[MlaDims.HeadDimK]));
        var next = Assert.Throws<BackendFaultException>(() => doomed.ReadKv(0, [0], new ushort[MlaDims.HeadDimK]));
        output.WriteLine($"injected: {injected.Message} | first call: {first.Message} | next call: {next.Message}");
        Assert.True(first.IsSticky);
        Assert.Contains("CUDA_ERROR_ILLEGAL_ADDRESS", first.Message, StringComparison.Ordinal);
        Assert.True(next.IsSticky);
        Assert.Contains("earlier device fault", next.Message, StringComparison.Ordinal);
    }
}

/// <summary>
/// Faults the device's primary context from outside the backend, as a bad kernel anywhere in the process would: the
/// append kernel on unmapped addresses (CUDA_ERROR_ILLEGAL_ADDRESS, sticky). Test code only.
/// </summary>
internal static class DeviceFault
{
    public static CudaException Inject(string fatbinPath)
    {
        CudaException.Check(CudaDriver.cuInit(0), "cuInit");
        CudaDeviceInfo device = CudaDeviceInfo.Read(0);
        using PrimaryContextHandle context = PrimaryContextHandle.Retain(device.Ordinal);
        context.MakeCurrent();
        using MlaKernels kernels = MlaKernels.Load(context, fatbinPath, device, Core.Tensors.KvDtype.Bf16);
        using StreamHandle stream = StreamHandle.Create(context);
        try
        {
            kernels.Append(new KvAppendParams { KvPool = 256, Rows = 256, Slots = 256, NumRows = 1, NumBlocks = 1 }, stream.Stream);
            stream.Synchronize("fault injection");
        }
        catch (CudaException e)
        {
            return e;
        }
        throw new InvalidOperationException("the append kernel on unmapped addresses did not fault");
    }
}

[CollectionDefinition(Name)]
public sealed class StickyFaultCollection
{
    public const string Name = "gpu, sticky fault (last)";
}
