using System.Runtime.InteropServices;

namespace FlashMla.Cuda.Interop;

/// <summary>A retained primary context of one device; released when disposed.</summary>
internal sealed class PrimaryContextHandle : SafeHandle
{
    private PrimaryContextHandle(IntPtr context, int device) : base(IntPtr.Zero, ownsHandle: true)
    {
        SetHandle(context);
        Device = device;
    }

    public int Device { get; }

    public override bool IsInvalid => handle == IntPtr.Zero;

    public static PrimaryContextHandle Retain(int device)
    {
        CudaException.Check(CudaDriver.cuDevicePrimaryCtxRetain(out IntPtr context, device), "cuDevicePrimaryCtxRetain");
        return new PrimaryContextHandle(context, device);
    }

    /// <summary>Binds the context to the calling thread (per-thread state in the driver).</summary>
    public void MakeCurrent() => CudaException.Check(CudaDriver.cuCtxSetCurrent(handle), "cuCtxSetCurrent");

    protected override bool ReleaseHandle() =>
        CudaDriver.cuDevicePrimaryCtxRelease_v2(Device) == CUresult.CUDA_SUCCESS;
}

/// <summary>
/// A resource created in a context. It holds a reference on the context's handle so the context
/// outlives it, and makes the context current before freeing (a finalizer thread has none).
/// </summary>
internal abstract class ContextBoundHandle : SafeHandle
{
    private readonly PrimaryContextHandle _context;

    protected ContextBoundHandle(PrimaryContextHandle context, IntPtr value) : base(IntPtr.Zero, ownsHandle: true)
    {
        bool added = false;
        context.DangerousAddRef(ref added);
        _context = context;
        SetHandle(value);
    }

    public override bool IsInvalid => handle == IntPtr.Zero;

    protected sealed override bool ReleaseHandle()
    {
        CUresult bound = CudaDriver.cuCtxSetCurrent(_context.DangerousGetHandle());
        CUresult freed = bound == CUresult.CUDA_SUCCESS ? Free(handle) : bound;
        _context.DangerousRelease();
        return freed == CUresult.CUDA_SUCCESS;
    }

    protected abstract CUresult Free(IntPtr value);
}

/// <summary>Device memory from <c>cuMemAlloc</c>.</summary>
internal sealed class DeviceMemoryHandle : ContextBoundHandle
{
    private DeviceMemoryHandle(PrimaryContextHandle context, ulong pointer, long bytes)
        : base(context, (IntPtr)(long)pointer) => Bytes = bytes;

    public long Bytes { get; }

    /// <summary>The device address (<c>CUdeviceptr</c>).</summary>
    public ulong Pointer => (ulong)(long)handle;

    public static DeviceMemoryHandle Allocate(PrimaryContextHandle context, long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(bytes);
        CudaException.Check(CudaDriver.cuMemAlloc_v2(out ulong pointer, (nuint)bytes), $"cuMemAlloc({bytes} bytes)");
        return new DeviceMemoryHandle(context, pointer, bytes);
    }

    protected override CUresult Free(IntPtr value) => CudaDriver.cuMemFree_v2((ulong)(long)value);
}

/// <summary>Page-locked host memory from <c>cuMemAllocHost</c>: the only source of truly asynchronous copies.</summary>
internal sealed class PinnedHostMemoryHandle : ContextBoundHandle
{
    private PinnedHostMemoryHandle(PrimaryContextHandle context, IntPtr pointer, long bytes)
        : base(context, pointer) => Bytes = bytes;

    public long Bytes { get; }

    public IntPtr Pointer => handle;

    public static PinnedHostMemoryHandle Allocate(PrimaryContextHandle context, long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(bytes);
        CudaException.Check(CudaDriver.cuMemAllocHost_v2(out IntPtr pointer, (nuint)bytes), $"cuMemAllocHost({bytes} bytes)");
        return new PinnedHostMemoryHandle(context, pointer, bytes);
    }

    protected override CUresult Free(IntPtr value) => CudaDriver.cuMemFreeHost(value);
}

/// <summary>A non-blocking stream.</summary>
internal sealed class StreamHandle : ContextBoundHandle
{
    private StreamHandle(PrimaryContextHandle context, IntPtr stream) : base(context, stream) { }

    public IntPtr Stream => handle;

    public static StreamHandle Create(PrimaryContextHandle context)
    {
        CudaException.Check(CudaDriver.cuStreamCreate(out IntPtr stream, CudaDriver.StreamNonBlocking), "cuStreamCreate");
        return new StreamHandle(context, stream);
    }

    public void Synchronize(string operation) =>
        CudaException.Check(CudaDriver.cuStreamSynchronize(handle), "cuStreamSynchronize(" + operation + ")");

    /// <summary>Work enqueued on this stream from now on starts only after <paramref name="evt"/> has completed.</summary>
    public void Wait(EventHandle evt) =>
        CudaException.Check(CudaDriver.cuStreamWaitEvent(handle, evt.Event, 0), "cuStreamWaitEvent");

    protected override CUresult Free(IntPtr value) => CudaDriver.cuStreamDestroy_v2(value);
}

/// <summary>An event on a stream: for timing and for waiting on part of a stream's work.</summary>
internal sealed class EventHandle : ContextBoundHandle
{
    private EventHandle(PrimaryContextHandle context, IntPtr evt) : base(context, evt) { }

    public IntPtr Event => handle;

    /// <summary>An event; <paramref name="timing"/> false makes recording and waiting cheaper.</summary>
    public static EventHandle Create(PrimaryContextHandle context, bool timing = true)
    {
        CudaException.Check(CudaDriver.cuEventCreate(out IntPtr evt, timing ? CudaDriver.EventDefault : CudaDriver.EventDisableTiming), "cuEventCreate");
        return new EventHandle(context, evt);
    }

    public void Record(StreamHandle stream) => CudaException.Check(CudaDriver.cuEventRecord(handle, stream.Stream), "cuEventRecord");

    public void Synchronize() => CudaException.Check(CudaDriver.cuEventSynchronize(handle), "cuEventSynchronize");

    /// <summary>Milliseconds from <paramref name="start"/> to this event; both must have completed.</summary>
    public float MillisecondsSince(EventHandle start)
    {
        CudaException.Check(CudaDriver.cuEventElapsedTime(out float ms, start.Event, handle), "cuEventElapsedTime");
        return ms;
    }

    protected override CUresult Free(IntPtr value) => CudaDriver.cuEventDestroy_v2(value);
}

/// <summary>A loaded module (fatbin) and the functions looked up in it.</summary>
internal sealed class KernelModuleHandle : ContextBoundHandle
{
    private KernelModuleHandle(PrimaryContextHandle context, IntPtr module) : base(context, module) { }

    public static unsafe KernelModuleHandle Load(PrimaryContextHandle context, ReadOnlySpan<byte> image, string what)
    {
        if (image.IsEmpty) throw new ArgumentException("empty module image", nameof(image));
        IntPtr module;
        fixed (byte* p = image)
            CudaException.Check(CudaDriver.cuModuleLoadData(out module, p), "cuModuleLoadData(" + what + ")");
        return new KernelModuleHandle(context, module);
    }

    /// <summary>A kernel by its extern "C" name. The function lives as long as the module.</summary>
    public IntPtr GetFunction(string name)
    {
        CudaException.Check(CudaDriver.cuModuleGetFunction(out IntPtr function, handle, name), "cuModuleGetFunction(" + name + ")");
        return function;
    }

    /// <summary>A global variable of the module (its device address and size), or false when it has none of that name.</summary>
    public bool TryGetGlobal(string name, out ulong devicePointer, out nuint bytes)
    {
        CUresult found = CudaDriver.cuModuleGetGlobal_v2(out devicePointer, out bytes, handle, name);
        if (found == CUresult.CUDA_ERROR_NOT_FOUND) return false;
        CudaException.Check(found, "cuModuleGetGlobal(" + name + ")");
        return true;
    }

    protected override CUresult Free(IntPtr value) => CudaDriver.cuModuleUnload(value);
}
