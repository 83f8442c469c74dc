using System.Globalization;
using FlashMla.Core.Tensors;
using FlashMla.Cuda.Interop;

namespace FlashMla.Cuda.Backend;

/// <summary>
/// The loaded fatbin and the kernels of one KV dtype, launched with the shapes of the kernel ABI
/// (<see cref="MlaKernelAbi"/>): the bf16 kernels, or the fp8 ones (decode, quantizing append, raw append, page
/// copy) with the shared combine. Only the dtype's kernels are looked up, so a fatbin without fp8 kernels still
/// serves a bf16 cache. Every launch is asynchronous on the given stream; a launch that the
/// driver refuses throws <see cref="CudaException"/> at once, a fault inside a kernel surfaces at the
/// next synchronize.
/// </summary>
internal sealed class MlaKernels : IDisposable
{
    private readonly KernelModuleHandle _module;
    private readonly IntPtr _decode;
    private readonly IntPtr _combine;
    private readonly IntPtr _append;
    private readonly IntPtr _appendStored;
    private readonly IntPtr _copy;
    private readonly KernelNames _names;

    /// <summary>How the decode is launched: in clusters when the module exports a width for it.</summary>
    public DecodeLaunch DecodeLaunch { get; }

    /// <summary>The kernels and the decode's dynamic shared memory of one dtype.</summary>
    internal readonly record struct KernelNames(string Decode, int DecodeSmemBytes, string Append, string AppendStored, string Copy)
    {
        public static KernelNames For(KvDtype dtype) => dtype switch
        {
            KvDtype.Bf16 => new(MlaKernelAbi.KernelDecode, MlaKernelAbi.DecodeSmemBytes, MlaKernelAbi.KernelAppend,
                MlaKernelAbi.KernelAppend, MlaKernelAbi.KernelCopy), // a stored bf16 row is a bf16 row
            KvDtype.Fp8 => new(MlaKernelAbi.KernelDecodeFp8, MlaKernelAbi.DecodeFp8SmemBytes, MlaKernelAbi.KernelAppendFp8,
                MlaKernelAbi.KernelAppendFp8Raw, MlaKernelAbi.KernelCopyFp8),
            _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "unknown KV dtype"),
        };
    }

    private MlaKernels(KernelModuleHandle module, KernelNames names, int smCount)
    {
        _module = module;
        _names = names;
        _decode = module.GetFunction(names.Decode);
        _combine = module.GetFunction(MlaKernelAbi.KernelCombine);
        _append = module.GetFunction(names.Append);
        _appendStored = module.GetFunction(names.AppendStored);
        _copy = module.GetFunction(names.Copy);
        CudaException.Check(
            CudaDriver.cuFuncSetAttribute(_decode, CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, names.DecodeSmemBytes),
            "cuFuncSetAttribute(" + names.Decode + ", max dynamic shared memory)");
        DecodeLaunch = ReadDecodeLaunch(module, _decode, names, smCount);
    }

    /// <summary>
    /// The cluster width the module exports for the decode (<c>&lt;name&gt;_cluster_x</c>, an int), and how many SMs
    /// its clusters fill at once; a module without the symbol is launched plainly.
    /// </summary>
    private static unsafe DecodeLaunch ReadDecodeLaunch(KernelModuleHandle module, IntPtr decode, KernelNames names, int smCount)
    {
        string symbol = names.Decode + MlaKernelAbi.DecodeClusterWidthSuffix;
        if (!module.TryGetGlobal(symbol, out ulong pointer, out nuint bytes)) return DecodeLaunch.Plain(smCount);
        if (bytes != sizeof(int))
            throw new InvalidOperationException($"the kernel module's {symbol} has {bytes} bytes; the ABI says it is an int");
        int width = 0;
        CudaException.Check(CudaDriver.cuMemcpyDtoH_v2(&width, pointer, sizeof(int)), "cuMemcpyDtoH(" + symbol + ")");
        width = DecodeLaunch.ValidateWidth(width, symbol);
        if (width == 1) return DecodeLaunch.Plain(smCount);
        CUlaunchAttribute cluster = CUlaunchAttribute.Cluster((uint)width);
        var config = new CUlaunchConfig
        {
            GridDimX = (uint)width, GridDimY = 1, GridDimZ = 1,
            BlockDimX = MlaKernelAbi.DecodeThreads, BlockDimY = 1, BlockDimZ = 1,
            SharedMemBytes = (uint)names.DecodeSmemBytes,
            Attrs = &cluster,
            NumAttrs = 1,
        };
        CudaException.Check(CudaDriver.cuOccupancyMaxActiveClusters(out int clusters, decode, &config),
            "cuOccupancyMaxActiveClusters(" + names.Decode + ")");
        if (clusters < 1)
            throw new InvalidOperationException($"no cluster of {width} {names.Decode} CTAs fits on this device");
        return new DecodeLaunch(width, Math.Min(smCount, clusters * width));
    }

    /// <summary>Loads the fatbin into the current context and looks up <paramref name="dtype"/>'s kernels; the file must exist.</summary>
    public static MlaKernels Load(PrimaryContextHandle context, string fatbinPath, CudaDeviceInfo device, KvDtype dtype)
    {
        var names = KernelNames.For(dtype);
        if (device.MaxSharedMemoryPerBlock < names.DecodeSmemBytes)
            throw new InvalidOperationException(string.Create(CultureInfo.InvariantCulture,
                $"{device.Name} allows {device.MaxSharedMemoryPerBlock} bytes of shared memory per block; the decode kernel needs {names.DecodeSmemBytes}"));
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
            return new MlaKernels(module, names, device.SmCount);
        }
        catch
        {
            module.Dispose();
            throw;
        }
    }

    public void Decode(in MlaDecodeParams p, IntPtr stream)
    {
        int cluster = DecodeLaunch.ClusterFor(p.NumRowGroups);
        if (cluster > 1)
            LaunchClustered(_decode, _names.Decode, (uint)p.NumRowGroups, (uint)p.NumSmParts, (uint)cluster,
                MlaKernelAbi.DecodeThreads, _names.DecodeSmemBytes, stream, p);
        else
            Launch(_decode, _names.Decode, (uint)p.NumRowGroups, (uint)p.NumSmParts,
                MlaKernelAbi.DecodeThreads, _names.DecodeSmemBytes, stream, p);
    }

    public void Combine(in MlaDecodeParams p, IntPtr stream) =>
        Launch(_combine, MlaKernelAbi.KernelCombine, (uint)p.Batch,
            (uint)((p.RowsPerSeq + MlaKernelAbi.CombineRowsPerCta - 1) / MlaKernelAbi.CombineRowsPerCta),
            MlaKernelAbi.CombineThreads, 0, stream, p);

    /// <summary>bf16 rows into their slots (quantized by the fp8 kernel).</summary>
    public void Append(in KvAppendParams p, IntPtr stream) => LaunchAppend(_append, _names.Append, p, stream);

    /// <summary>Rows already in the pool's stored format into their slots, as they are.</summary>
    public void AppendStored(in KvAppendParams p, IntPtr stream) => LaunchAppend(_appendStored, _names.AppendStored, p, stream);

    private static void LaunchAppend(IntPtr function, string name, in KvAppendParams p, IntPtr stream) =>
        Launch(function, name,
            (uint)((p.NumRows + MlaKernelAbi.AppendRowsPerCta - 1) / MlaKernelAbi.AppendRowsPerCta), 1,
            MlaKernelAbi.AppendThreads, 0, stream, p);

    public void CopyBlocks(in BlockCopyParams p, IntPtr stream) =>
        Launch(_copy, _names.Copy, (uint)p.NumPairs, (uint)p.NumLayers,
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

    private static unsafe void LaunchClustered<T>(IntPtr function, string name, uint gridX, uint gridY, uint clusterX, int threads,
        int sharedBytes, IntPtr stream, T parameters)
        where T : unmanaged
    {
        void* argument = &parameters;
        CUlaunchAttribute cluster = CUlaunchAttribute.Cluster(clusterX);
        var config = new CUlaunchConfig
        {
            GridDimX = gridX, GridDimY = gridY, GridDimZ = 1,
            BlockDimX = (uint)threads, BlockDimY = 1, BlockDimZ = 1,
            SharedMemBytes = (uint)sharedBytes,
            Stream = stream,
            Attrs = &cluster,
            NumAttrs = 1,
        };
        CudaException.Check(CudaDriver.cuLaunchKernelEx(&config, function, &argument, null),
            "cuLaunchKernelEx(" + name + ", clusters of " + clusterX.ToString(CultureInfo.InvariantCulture) + ")");
    }

    public void Dispose() => _module.Dispose();
}
