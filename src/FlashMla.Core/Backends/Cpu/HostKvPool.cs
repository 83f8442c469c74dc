using System.Runtime.InteropServices;

namespace FlashMla.Core.Backends.Cpu;

/// <summary>
/// One layer's KV pool in native host memory: <c>[num_blocks, 64]</c> token rows of a fixed byte size (1,152 for
/// bf16, 656 for fp8). Zeroed by
/// <c>calloc</c>, so the OS hands out pages lazily and an idle pool costs address space only.
/// A SafeHandle, so a forgotten Dispose cannot leak gigabytes.
/// </summary>
internal sealed unsafe class HostKvPool : SafeHandle
{
    private HostKvPool(int bytesPerToken) : base(IntPtr.Zero, ownsHandle: true) => BytesPerToken = bytesPerToken;

    /// <summary>Bytes of one token's row.</summary>
    public int BytesPerToken { get; }

    public override bool IsInvalid => handle == IntPtr.Zero;

    /// <summary>Allocates a zeroed pool of <paramref name="slots"/> rows; throws OutOfMemoryException if the OS refuses.</summary>
    public static HostKvPool Allocate(long slots, int bytesPerToken)
    {
        var pool = new HostKvPool(bytesPerToken);
        pool.SetHandle((IntPtr)NativeMemory.AllocZeroed((nuint)slots, (nuint)bytesPerToken));
        return pool;
    }

    /// <summary>The first byte of row <paramref name="slot"/>. The caller has checked the slot.</summary>
    public byte* Row(long slot) => (byte*)handle + slot * BytesPerToken;

    /// <summary>Row <paramref name="slot"/> as bytes.</summary>
    public Span<byte> RowBytes(long slot) => new(Row(slot), BytesPerToken);

    protected override bool ReleaseHandle()
    {
        NativeMemory.Free((void*)handle);
        return true;
    }
}
