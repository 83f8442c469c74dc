using System.Runtime.InteropServices;

namespace FlashMla.Cuda.Interop;

/// <summary>
/// The CUDA driver API functions this service uses, bound to <c>libcuda.so.1</c>. The library is
/// resolved on the first call, so a machine without a driver loads this assembly and fails only
/// when a function is called (with <see cref="DllNotFoundException"/>). Handles are raw pointers
/// here; the SafeHandle types in this folder own them. Functions with a versioned export
/// (<c>_v2</c>) are bound to the name cuda.h maps the plain name to.
/// </summary>
internal static unsafe partial class CudaDriver
{
    public const string Library = "libcuda.so.1";

    // Device and context.
    [LibraryImport(Library)] public static partial CUresult cuInit(uint flags);
    [LibraryImport(Library)] public static partial CUresult cuDriverGetVersion(out int version);
    [LibraryImport(Library)] public static partial CUresult cuDeviceGetCount(out int count);
    [LibraryImport(Library)] public static partial CUresult cuDeviceGet(out int device, int ordinal);
    [LibraryImport(Library)] public static partial CUresult cuDeviceGetName(byte* name, int length, int device);
    [LibraryImport(Library)] public static partial CUresult cuDeviceGetAttribute(out int value, CUdevice_attribute attribute, int device);
    [LibraryImport(Library)] public static partial CUresult cuDeviceTotalMem_v2(out nuint bytes, int device);
    [LibraryImport(Library)] public static partial CUresult cuDevicePrimaryCtxRetain(out IntPtr context, int device);
    [LibraryImport(Library)] public static partial CUresult cuDevicePrimaryCtxRelease_v2(int device);
    [LibraryImport(Library)] public static partial CUresult cuCtxSetCurrent(IntPtr context);
    [LibraryImport(Library)] public static partial CUresult cuMemGetInfo_v2(out nuint free, out nuint total);

    // Memory.
    [LibraryImport(Library)] public static partial CUresult cuMemAlloc_v2(out ulong devicePointer, nuint bytes);
    [LibraryImport(Library)] public static partial CUresult cuMemFree_v2(ulong devicePointer);
    [LibraryImport(Library)] public static partial CUresult cuMemAllocHost_v2(out IntPtr hostPointer, nuint bytes);
    [LibraryImport(Library)] public static partial CUresult cuMemFreeHost(IntPtr hostPointer);
    [LibraryImport(Library)] public static partial CUresult cuMemHostRegister_v2(void* hostPointer, nuint bytes, uint flags);
    [LibraryImport(Library)] public static partial CUresult cuMemHostUnregister(void* hostPointer);
    [LibraryImport(Library)] public static partial CUresult cuMemcpyHtoDAsync_v2(ulong destination, void* source, nuint bytes, IntPtr stream);
    [LibraryImport(Library)] public static partial CUresult cuMemcpyDtoHAsync_v2(void* destination, ulong source, nuint bytes, IntPtr stream);
    [LibraryImport(Library)] public static partial CUresult cuMemcpyDtoDAsync_v2(ulong destination, ulong source, nuint bytes, IntPtr stream);
    [LibraryImport(Library)] public static partial CUresult cuMemsetD8Async(ulong destination, byte value, nuint count, IntPtr stream);
    [LibraryImport(Library)] public static partial CUresult cuMemsetD32Async(ulong destination, uint value, nuint count, IntPtr stream);

    // Streams and events.
    [LibraryImport(Library)] public static partial CUresult cuStreamCreate(out IntPtr stream, uint flags);
    [LibraryImport(Library)] public static partial CUresult cuStreamDestroy_v2(IntPtr stream);
    [LibraryImport(Library)] public static partial CUresult cuStreamSynchronize(IntPtr stream);
    [LibraryImport(Library)] public static partial CUresult cuStreamWaitEvent(IntPtr stream, IntPtr evt, uint flags);
    [LibraryImport(Library)] public static partial CUresult cuEventCreate(out IntPtr evt, uint flags);
    [LibraryImport(Library)] public static partial CUresult cuEventRecord(IntPtr evt, IntPtr stream);
    [LibraryImport(Library)] public static partial CUresult cuEventSynchronize(IntPtr evt);
    [LibraryImport(Library)] public static partial CUresult cuEventElapsedTime(out float milliseconds, IntPtr start, IntPtr end);
    [LibraryImport(Library)] public static partial CUresult cuEventDestroy_v2(IntPtr evt);

    // Modules and launches.
    [LibraryImport(Library)] public static partial CUresult cuModuleLoadData(out IntPtr module, void* image);
    [LibraryImport(Library)] public static partial CUresult cuModuleUnload(IntPtr module);
    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    public static partial CUresult cuModuleGetFunction(out IntPtr function, IntPtr module, string name);
    [LibraryImport(Library)] public static partial CUresult cuFuncSetAttribute(IntPtr function, CUfunction_attribute attribute, int value);
    [LibraryImport(Library, StringMarshalling = StringMarshalling.Utf8)]
    public static partial CUresult cuModuleGetGlobal_v2(out ulong devicePointer, out nuint bytes, IntPtr module, string name);
    [LibraryImport(Library)] public static partial CUresult cuMemcpyDtoH_v2(void* destination, ulong source, nuint bytes);
    [LibraryImport(Library)] public static partial CUresult cuLaunchKernelEx(CUlaunchConfig* config, IntPtr function, void** kernelParameters, void** extra);
    [LibraryImport(Library)] public static partial CUresult cuOccupancyMaxActiveClusters(out int clusters, IntPtr function, CUlaunchConfig* config);
    [LibraryImport(Library)]
    public static partial CUresult cuLaunchKernel(
        IntPtr function,
        uint gridX, uint gridY, uint gridZ,
        uint blockX, uint blockY, uint blockZ,
        uint sharedMemoryBytes, IntPtr stream,
        void** kernelParameters, void** extra);

    // Tensor maps (TMA). The enums are C enums (int); the values this service passes are in KvTensorMap.
    [LibraryImport(Library)]
    public static partial CUresult cuTensorMapEncodeTiled(
        TensorMapBytes* tensorMap, int dataType, uint rank, ulong globalAddress,
        ulong* globalDim, ulong* globalStrides, uint* boxDim, uint* elementStrides,
        int interleave, int swizzle, int l2Promotion, int oobFill);

    // Errors.
    [LibraryImport(Library)] public static partial CUresult cuGetErrorName(CUresult error, out IntPtr name);
    [LibraryImport(Library)] public static partial CUresult cuGetErrorString(CUresult error, out IntPtr text);

    /// <summary><c>CU_STREAM_NON_BLOCKING</c>: no implicit ordering with the legacy default stream.</summary>
    public const uint StreamNonBlocking = 1;

    /// <summary><c>CU_EVENT_DEFAULT</c> (timing enabled).</summary>
    public const uint EventDefault = 0;

    /// <summary><c>CU_EVENT_DISABLE_TIMING</c>.</summary>
    public const uint EventDisableTiming = 2;
}

/// <summary>The driver's <c>CUresult</c> codes this service names; any other value passes through as a number.</summary>
public enum CUresult
{
    CUDA_SUCCESS = 0,
    CUDA_ERROR_INVALID_VALUE = 1,
    CUDA_ERROR_OUT_OF_MEMORY = 2,
    CUDA_ERROR_NOT_INITIALIZED = 3,
    CUDA_ERROR_DEINITIALIZED = 4,
    CUDA_ERROR_STUB_LIBRARY = 34,
    CUDA_ERROR_INSUFFICIENT_DRIVER = 35,
    CUDA_ERROR_NO_DEVICE = 100,
    CUDA_ERROR_INVALID_DEVICE = 101,
    CUDA_ERROR_INVALID_IMAGE = 200,
    CUDA_ERROR_INVALID_CONTEXT = 201,
    CUDA_ERROR_NO_BINARY_FOR_GPU = 209,
    CUDA_ERROR_ECC_UNCORRECTABLE = 214,
    CUDA_ERROR_INVALID_PTX = 218,
    CUDA_ERROR_NVLINK_UNCORRECTABLE = 220,
    CUDA_ERROR_UNSUPPORTED_PTX_VERSION = 222,
    CUDA_ERROR_FILE_NOT_FOUND = 301,
    CUDA_ERROR_INVALID_HANDLE = 400,
    CUDA_ERROR_NOT_FOUND = 500,
    CUDA_ERROR_NOT_READY = 600,
    CUDA_ERROR_ILLEGAL_ADDRESS = 700,
    CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES = 701,
    CUDA_ERROR_LAUNCH_TIMEOUT = 702,
    CUDA_ERROR_CONTEXT_IS_DESTROYED = 709,
    CUDA_ERROR_ASSERT = 710,
    CUDA_ERROR_HARDWARE_STACK_ERROR = 714,
    CUDA_ERROR_ILLEGAL_INSTRUCTION = 715,
    CUDA_ERROR_MISALIGNED_ADDRESS = 716,
    CUDA_ERROR_INVALID_ADDRESS_SPACE = 717,
    CUDA_ERROR_INVALID_PC = 718,
    CUDA_ERROR_LAUNCH_FAILED = 719,
    CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE = 720,
    CUDA_ERROR_NOT_PERMITTED = 800,
    CUDA_ERROR_NOT_SUPPORTED = 801,
    CUDA_ERROR_SYSTEM_NOT_READY = 802,
    CUDA_ERROR_SYSTEM_DRIVER_MISMATCH = 803,
    CUDA_ERROR_UNKNOWN = 999,
}

/// <summary>The <c>CUdevice_attribute</c> values this service reads.</summary>
internal enum CUdevice_attribute
{
    CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT = 16,
    CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE = 38,
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75,
    CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76,
    CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN = 97,
}

/// <summary>The <c>CUfunction_attribute</c> values this service sets.</summary>
internal enum CUfunction_attribute
{
    CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8,
}
