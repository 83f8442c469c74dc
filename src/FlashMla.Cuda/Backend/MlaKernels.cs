using System.Globalization;
using FlashMla.Cuda.Interop;

namespace FlashMla.Cuda.Backend;

/// <summary>
/// The loaded fatbin and its kernels, launched with the shapes of the kernel ABI
/// (<see cref="MlaKernelAbi"/>). Every launch is asynchronous on the given stream; a launch that the
/// driver refuses throws <see cref="CudaException"/> at once, a fault inside a kernel surfaces at the
/// next synchronize.
/// </summary>
internal sealed class MlaKernels : IDisposable
{
    private readonly KernelModuleHandle _module;
    private readonly IntPtr _decode;
    private readonly IntPtr _combine;
    private readonly IntPtr _append;
    private readonly IntPtr _copy;

    private MlaKernels(KernelModuleHandle module)
    {
        _module = module;
        _decode = module.GetFunction(MlaKernelAbi.KernelDecode);
        _combine = module.GetFunction(MlaKernelAbi.KernelCombine);
        _append = module.GetFunction(MlaKernelAbi.KernelAppend);
        _copy = module.GetFunction(MlaKernelAbi.KernelCopy);
        CudaException.Check(
            CudaDriver.cuFuncSetAttribute(_decode, CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, MlaKernelAbi.DecodeSmemBytes),
            "cuFuncSetAttribute(" + MlaKernelAbi.KernelDecode + ", max dynamic shared memory)");
    }

    /// <summary>Loads the fatbin into the current context; the file must exist.</summary>
    public static MlaKernels Load(PrimaryContextHandle context, string fatbinPath, CudaDeviceInfo device)
    {
        if (device.MaxSharedMemoryPerBlock < MlaKernelAbi.DecodeSmemBytes)
            throw new InvalidOperationException(string.Create(CultureInfo.InvariantCulture,
                $"{device.Name} allows {device.MaxSharedMemoryPerBlock} bytes of shared memory per block; the decode kernel needs {MlaKernelAbi.DecodeSmemBytes}"));
        byte[] image;
        try
        {
            image = File.ReadAllBytes(fatbinPath);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new InvalidOperationException($"cannot read the kernel fatbin {fatbinPath}: {e.Message}", e);
        }
        KernelModuleHandle module = KernelModuleHandle.Load(context, image, Path.GetFileName(fatbinPath));
        try
        {
            return new MlaKernels(module);
        }
        catch
        {
            module.Dispose();
            throw;
        }
    }

    public void Decode(in MlaDecodeParams p, IntPtr stream) =>
        Launch(_decode, MlaKernelAbi.KernelDecode, (uint)p.NumRowGroups, (uint)p.NumSmParts,
            MlaKernelAbi.DecodeThreads, MlaKernelAbi.DecodeSmemBytes, stream, p);

    public void Combine(in MlaDecodeParams p, IntPtr stream) =>
        Launch(_combine, MlaKernelAbi.KernelCombine, (uint)p.Batch,
            (uint)((p.RowsPerSeq + MlaKernelAbi.CombineRowsPerCta - 1) / MlaKernelAbi.CombineRowsPerCta),
            MlaKernelAbi.CombineThreads, 0, stream, p);

    public void Append(in KvAppendParams p, IntPtr stream) =>
        Launch(_append, MlaKernelAbi.KernelAppend,
            (uint)((p.NumRows + MlaKernelAbi.AppendRowsPerCta - 1) / MlaKernelAbi.AppendRowsPerCta), 1,
            MlaKernelAbi.AppendThreads, 0, stream, p);

    public void CopyBlocks(in BlockCopyParams p, IntPtr stream) =>
        Launch(_copy, MlaKernelAbi.KernelCopy, (uint)p.NumPairs, (uint)p.NumLayers,
            MlaKernelAbi.CopyThreads, 0, stream, p);

    private static unsafe void Launch<T>(IntPtr function, string name, uint gridX, uint gridY, int threads, int sharedBytes, IntPtr stream, T parameters)
        where T : unmanaged
    {
        // The kernel's one parameter is the struct by value: kernelParams = { &params }.
        void* argument = &parameters;
        CudaException.Check(
            CudaDriver.cuLaunchKernel(function, gridX, gridY, 1, (uint)threads, 1, 1, (uint)sharedBytes, stream, &argument, null),
            "cuLaunchKernel(" + name + ")");
    }

    public void Dispose() => _module.Dispose();
}
