using System.Runtime.InteropServices;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Backends.Cpu;

/// <summary>
/// One layer's KV pool in native host memory: <c>[num_blocks, 64, 576]</c> bf16. Zeroed by
/// <c>calloc</c>, so the OS hands out pages lazily and an idle pool costs address space only.
/// A SafeHandle, so a forgotten Dispose cannot leak gigabytes.
/// </summary>
internal sealed unsafe class HostKvPool : SafeHandle
{
    private HostKvPool() : base(IntPtr.Zero, ownsHandle: true) { }

    public override bool IsInvalid => handle == IntPtr.Zero;

    /// <summary>Allocates a zeroed pool of <paramref name="slots"/> rows; throws OutOfMemoryException if the OS refuses.</summary>
    public static HostKvPool Allocate(long slots)
    {
        var pool = new HostKvPool();
        pool.SetHandle((IntPtr)NativeMemory.AllocZeroed((nuint)slots, MlaDims.KvRowBytes));
        return pool;
    }

    /// <summary>The first element of row <paramref name="slot"/>. The caller has checked the slot.</summary>
    public ushort* Row(long slot) => (ushort*)handle + slot * MlaDims.HeadDimK;

    protected override bool ReleaseHandle()
    {
        NativeMemory.Free((void*)handle);
        return true;
    }
}
