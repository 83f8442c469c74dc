using System.Buffers;
using System.Runtime.CompilerServices;
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

    /// <summary>
    /// The byte array under <paramref name="memory"/> and the byte offset of its first element, when it is a
    /// slice of a <c>byte[]</c> or a <see cref="Cast{TFrom,TTo}"/> view of one; false for anything else.
    /// </summary>
    public static bool TryGetByteSegment<T>(ReadOnlyMemory<T> memory, out byte[] array, out int byteOffset) where T : unmanaged
    {
        if (MemoryMarshal.TryGetArray(memory, out var segment) && segment.Array is byte[] bytes)
        {
            (array, byteOffset) = (bytes, segment.Offset);
            return true;
        }
        if (MemoryMarshal.TryGetMemoryManager(memory, out MemoryManager<T>? manager, out int start, out _) &&
            manager is IByteArrayView { Bytes: { } viewed } view)
        {
            (array, byteOffset) = (viewed, view.ByteOffset + start * Unsafe.SizeOf<T>());
            return true;
        }
        (array, byteOffset) = (null!, 0);
        return false;
    }

    /// <summary>What a view exposes of the byte array under it (null when it views another element type).</summary>
    private interface IByteArrayView
    {
        byte[]? Bytes { get; }
        int ByteOffset { get; }
    }

    /// <summary>A typed view of a segment of an array of another type; pinning pins the array.</summary>
    private sealed class ArrayView<TFrom, TTo>(ArraySegment<TFrom> segment) : MemoryManager<TTo>, IByteArrayView
        where TFrom : unmanaged where TTo : unmanaged
    {
        public byte[]? Bytes => segment.Array as byte[];
        public int ByteOffset => segment.Offset * Unsafe.SizeOf<TFrom>();

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
