using System.Runtime.InteropServices;

namespace FlashMla.Cuda.Interop;

/// <summary>
/// <c>CUlaunchConfig</c> (cuda.h, CUDA 12+): a launch's shape for <c>cuLaunchKernelEx</c>, with its attributes.
/// 56 bytes: seven 32-bit fields, then the stream and the attribute array (8-byte aligned), then their count.
/// </summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct CUlaunchConfig
{
    public uint GridDimX, GridDimY, GridDimZ;
    public uint BlockDimX, BlockDimY, BlockDimZ;
    public uint SharedMemBytes;
    public IntPtr Stream;
    public CUlaunchAttribute* Attrs;
    public uint NumAttrs;
}

/// <summary>
/// <c>CUlaunchAttribute</c>: an id (a C enum), padding to 8 bytes, then the 64-byte <c>CUlaunchAttributeValue</c>
/// union, of which this service uses the cluster dimension (three 32-bit fields at its start). 72 bytes.
/// </summary>
[StructLayout(LayoutKind.Explicit, Size = 72)]
internal struct CUlaunchAttribute
{
    /// <summary><c>CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION</c>.</summary>
    public const int ClusterDimension = 4;

    [FieldOffset(0)] public int Id;
    [FieldOffset(8)] public uint ClusterDimX;
    [FieldOffset(12)] public uint ClusterDimY;
    [FieldOffset(16)] public uint ClusterDimZ;

    /// <summary>Clusters of <paramref name="width"/> CTAs along x.</summary>
    public static CUlaunchAttribute Cluster(uint width) =>
        new() { Id = ClusterDimension, ClusterDimX = width, ClusterDimY = 1, ClusterDimZ = 1 };
}
