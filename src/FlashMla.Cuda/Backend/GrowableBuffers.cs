using System.Runtime.InteropServices;
using FlashMla.Cuda.Interop;

namespace FlashMla.Cuda.Backend;

/// <summary>
/// Pinned host memory reused across steps and grown (never shrunk) when a step needs more. Growing
/// frees the old block, so the caller grows only while the stream is idle (between steps).
/// </summary>
internal sealed class PinnedStaging(PrimaryContextHandle context, string name) : IDisposable
{
    private PinnedHostMemoryHandle? _memory;

    public long Capacity => _memory?.Bytes ?? 0;

    public IntPtr Pointer => _memory?.Pointer ?? throw new InvalidOperationException(name + " is not allocated");

    public void EnsureCapacity(long bytes)
    {
        if (bytes <= Capacity) return;
        long grown = BufferSizes.Grown(Capacity, bytes);
        _memory?.Dispose();
        _memory = null;
        _memory = PinnedHostMemoryHandle.Allocate(context, grown);
    }

    /// <summary>A view of <paramref name="count"/> elements at byte offset <paramref name="byteOffset"/>.</summary>
    public unsafe Span<T> Span<T>(long byteOffset, int count) where T : unmanaged
    {
        if (byteOffset < 0 || byteOffset + (long)count * sizeof(T) > Capacity)
            throw new ArgumentOutOfRangeException(nameof(count), $"{name}: [{byteOffset}, +{count} x {sizeof(T)}) is outside {Capacity} bytes");
        return new Span<T>((byte*)Pointer + byteOffset, count);
    }

    public void Dispose() => _memory?.Dispose();
}

/// <summary>Device memory reused across steps and grown when needed (only while the stream is idle).</summary>
internal sealed class DeviceScratch(PrimaryContextHandle context, string name) : IDisposable
{
    private DeviceMemoryHandle? _memory;

    public long Capacity => _memory?.Bytes ?? 0;

    public ulong Pointer => _memory?.Pointer ?? throw new InvalidOperationException(name + " is not allocated");

    public void EnsureCapacity(long bytes)
    {
        if (bytes <= Capacity) return;
        long grown = BufferSizes.Grown(Capacity, bytes);
        _memory?.Dispose();
        _memory = null;
        _memory = DeviceMemoryHandle.Allocate(context, grown);
    }

    public void Dispose() => _memory?.Dispose();
}

internal static class BufferSizes
{
    /// <summary>Alignment of each region inside a staging buffer (the ABI needs 16; 256 is what cuMemAlloc gives).</summary>
    public const long RegionAlignment = 256;

    public static long RoundUp(long value, long multiple) => checked((value + multiple - 1) / multiple * multiple);

    /// <summary>
    /// The new size of a buffer of <paramref name="capacity"/> bytes that must hold <paramref name="needed"/>:
    /// at least double (by at most 1 GiB at a time) so a slowly growing step does not reallocate every time,
    /// at least 1 MiB, in 64 KiB steps.
    /// </summary>
    public static long Grown(long capacity, long needed)
    {
        long grown = Math.Max(needed, Math.Min(capacity * 2, capacity + (1L << 30)));
        return RoundUp(Math.Max(grown, 1L << 20), 1L << 16);
    }

    public static long Bytes<T>(long count) where T : unmanaged => checked(count * Marshal.SizeOf<T>());
}
