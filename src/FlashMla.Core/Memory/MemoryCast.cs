using System.Buffers;
using System.Runtime.InteropServices;

namespace FlashMla.Core.Memory;

/// <summary>
/// Views array-backed memory of one unmanaged type as another without copying: wire bytes as bf16
/// (<see cref="ushort"/>) for a backend, pooled output arrays as bytes for a response.
/// </summary>
public static class MemoryCast
{
    /// <summary>
    /// <paramref name="source"/> seen as <typeparamref name="TTo"/> (a trailing partial element is dropped).
    /// Array-backed memory is viewed in place; anything else is copied once.
    /// </summary>
    public static Memory<TTo> Cast<TFrom, TTo>(ReadOnlyMemory<TFrom> source) where TFrom : unmanaged where TTo : unmanaged
    {
        if (source.IsEmpty) return Memory<TTo>.Empty;
        if (MemoryMarshal.TryGetArray(source, out var segment)) return new ArrayView<TFrom, TTo>(segment).Memory;
        var copy = MemoryMarshal.Cast<TFrom, TTo>(source.Span).ToArray();
        return copy;
    }

    /// <summary>A typed view of a segment of an array of another type; pinning pins the array.</summary>
    private sealed class ArrayView<TFrom, TTo>(ArraySegment<TFrom> segment) : MemoryManager<TTo>
        where TFrom : unmanaged where TTo : unmanaged
    {
        public override Span<TTo> GetSpan() => MemoryMarshal.Cast<TFrom, TTo>(segment.AsSpan());

        public override unsafe MemoryHandle Pin(int elementIndex = 0)
        {
            if ((uint)elementIndex > (uint)GetSpan().Length) throw new ArgumentOutOfRangeException(nameof(elementIndex));
            var handle = GCHandle.Alloc(segment.Array, GCHandleType.Pinned);
            byte* start = (byte*)handle.AddrOfPinnedObject() + (long)segment.Offset * sizeof(TFrom) + (long)elementIndex * sizeof(TTo);
            return new MemoryHandle(start, handle);
        }

        public override void Unpin()
        {
        }

        protected override void Dispose(bool disposing)
        {
        }
    }
}
