using FlashMla.Core.Memory;
using FlashMla.Cuda.Interop;

namespace FlashMla.Cuda.Backend;

/// <summary>
/// Page-locks pool arrays for the device's copy engine with <c>cuMemHostRegister</c> (the arrays live on the
/// pinned object heap, so their addresses never change). Registration can fail (the driver limits how much
/// memory may be locked); the array then stays unregistered and the backend stages it, so a failure costs a
/// copy, never a result.
/// </summary>
internal sealed class HostMemoryRegistrar(PrimaryContextHandle context) : IHostMemoryRegistrar
{
    private long _refused;

    /// <summary>Registrations the driver refused (the backend staged those arrays instead).</summary>
    public long Refused => Interlocked.Read(ref _refused);

    public unsafe bool Register(byte[] array)
    {
        if (CudaDriver.cuCtxSetCurrent(context.DangerousGetHandle()) != CUresult.CUDA_SUCCESS) return Refuse();
        fixed (byte* p = array)
            return CudaDriver.cuMemHostRegister_v2(p, (nuint)array.Length, 0) == CUresult.CUDA_SUCCESS || Refuse();
    }

    public unsafe void Unregister(byte[] array)
    {
        if (CudaDriver.cuCtxSetCurrent(context.DangerousGetHandle()) != CUresult.CUDA_SUCCESS) return;
        fixed (byte* p = array) _ = CudaDriver.cuMemHostUnregister(p);
    }

    private bool Refuse()
    {
        Interlocked.Increment(ref _refused);
        return false;
    }
}
