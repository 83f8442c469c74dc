using FlashMla.Core.Backends;
using FlashMla.Cuda.Interop;

namespace FlashMla.Cuda.Backend;

/// <summary>
/// The door of every call into the device, shared by the KV pools, the decode pipeline and its completion thread:
/// binds the context to the calling thread, refuses at once once the device is lost, and turns a CUDA error into
/// <see cref="BackendFaultException"/>, remembering a sticky one (after it, every later call fails at once).
/// </summary>
internal sealed class CudaCallGuard(PrimaryContextHandle context)
{
    private CudaException? _stickyFault;

    /// <summary>True once a sticky fault was seen: the context is unusable for good.</summary>
    public bool DeviceLost => Volatile.Read(ref _stickyFault) is not null;

    /// <summary>Before a call: refuses after a sticky fault, else makes the context current on this thread.</summary>
    public void Enter()
    {
        if (Volatile.Read(ref _stickyFault) is { } fault)
            throw new BackendFaultException("CUDA backend is unusable after an earlier device fault: " + fault.Message, isSticky: true, fault);
        try
        {
            context.MakeCurrent();
        }
        catch (CudaException e)
        {
            throw Fault(e);
        }
    }

    /// <summary>The backend's exception for <paramref name="e"/>; a sticky error marks the device lost. Thread-safe.</summary>
    public BackendFaultException Fault(CudaException e)
    {
        if (e.IsSticky) Interlocked.CompareExchange(ref _stickyFault, e, null);
        return new BackendFaultException("CUDA backend: " + e.Message, e.IsSticky, e);
    }
}

/// <summary>Asynchronous copies between host and device memory on a stream, with the operation named in the error.</summary>
internal static unsafe class DeviceCopy
{
    public static void ToDevice(ulong destination, IntPtr source, long bytes, string what, StreamHandle stream) =>
        CudaException.Check(CudaDriver.cuMemcpyHtoDAsync_v2(destination, (void*)source, (nuint)bytes, stream.Stream), "cuMemcpyHtoDAsync(" + what + ")");

    public static void ToHost(IntPtr destination, ulong source, long bytes, string what, StreamHandle stream) =>
        CudaException.Check(CudaDriver.cuMemcpyDtoHAsync_v2((void*)destination, source, (nuint)bytes, stream.Stream), "cuMemcpyDtoHAsync(" + what + ")");
}

/// <summary>How a completion thread ends a submission: done, or failed with the backend's exception for what went wrong.</summary>
internal static class SubmissionCompletion
{
    /// <summary>
    /// Binds the context to this thread, runs <paramref name="finish"/> (waits for the device, unstages) and completes
    /// <paramref name="submission"/> with the phases it returns, or fails it: a CUDA error through the guard (a sticky one
    /// marks the device lost), anything else as a fault of <paramref name="what"/>.
    /// </summary>
    public static void Complete<TState>(PrimaryContextHandle context, CudaCallGuard guard, DecodeSubmission submission, TState state,
        Func<TState, DevicePhases?> finish, string what)
    {
        try
        {
            context.MakeCurrent();
            submission.MarkComplete(finish(state));
        }
        catch (CudaException e)
        {
            submission.MarkFailed(guard.Fault(e));
        }
        catch (Exception e)
        {
            submission.MarkFailed(new BackendFaultException($"CUDA backend: completing {what} failed: " + e.Message, isSticky: false, e));
        }
    }
}
