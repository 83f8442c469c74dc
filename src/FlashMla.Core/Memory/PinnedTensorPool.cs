using System.Buffers;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace FlashMla.Core.Memory;

/// <summary>
/// A bounded pool of tensor-sized byte arrays allocated on the pinned object heap (they never move), by
/// power-of-two size. Once a backend attaches an <see cref="IHostMemoryRegistrar"/>, every array of at least
/// <see cref="RegistrationMinBytes"/> the pool holds is page-locked with it, so the backend can copy a
/// request's q straight from the array the wire parsed it into, and the outputs straight into the arrays
/// the response is written from (<see cref="TryGetRegisteredAddress{T}"/>). The pool never lets go of an
/// array it registered without unregistering it first.
/// <para>
/// Thread-safe: buffers are rented on the scheduler loop and by the gRPC marshallers, and returned on
/// whichever thread wrote the response.
/// </para>
/// </summary>
public sealed class PinnedTensorPool : ArrayPool<byte>
{
    /// <summary>Smallest array the pool hands out (smaller rents get this size).</summary>
    public const int MinArrayBytes = 4096;

    /// <summary>Arrays below this size are not page-locked: staging them costs less than registering them.</summary>
    public const int RegistrationMinBytes = 256 * 1024;

    private readonly int _maxArrayBytes;
    private readonly int _arraysPerSize;
    private readonly Stack<byte[]>[] _idle;
    private readonly HashSet<byte[]> _owned = new(ReferenceEqualityComparer.Instance);
    private readonly HashSet<byte[]> _registered = new(ReferenceEqualityComparer.Instance);
    private readonly object _lock = new();
    private IHostMemoryRegistrar? _registrar;

    /// <param name="maxArrayBytes">Largest array kept (a power of two); larger rents are plain, unpooled arrays.</param>
    /// <param name="arraysPerSize">Idle arrays kept per size; more returned ones are let go.</param>
    public PinnedTensorPool(int maxArrayBytes, int arraysPerSize)
    {
        if (maxArrayBytes < MinArrayBytes || !int.IsPow2(maxArrayBytes))
            throw new ArgumentOutOfRangeException(nameof(maxArrayBytes), "a power of two of at least 4096");
        ArgumentOutOfRangeException.ThrowIfLessThan(arraysPerSize, 1);
        _maxArrayBytes = maxArrayBytes;
        _arraysPerSize = arraysPerSize;
        _idle = new Stack<byte[]>[BucketOf(maxArrayBytes) + 1];
        for (int i = 0; i < _idle.Length; i++) _idle[i] = new Stack<byte[]>();
    }

    /// <summary>Arrays the pool holds (rented or idle).</summary>
    public int OwnedArrays { get { lock (_lock) return _owned.Count; } }

    /// <summary>Arrays currently page-locked by the attached registrar.</summary>
    public int RegisteredArrays { get { lock (_lock) return _registered.Count; } }

    /// <summary>
    /// Page-locks every array the pool holds with <paramref name="registrar"/>, and from now on each new one
    /// (a backend calls this once it is ready). Replaces an earlier registrar after unregistering with it.
    /// </summary>
    public void Attach(IHostMemoryRegistrar registrar)
    {
        ArgumentNullException.ThrowIfNull(registrar);
        lock (_lock)
        {
            DetachLocked();
            _registrar = registrar;
            foreach (var array in _owned) RegisterLocked(array);
        }
    }

    /// <summary>Unregisters every array (before the backend that registered them goes away).</summary>
    public void Detach()
    {
        lock (_lock) DetachLocked();
    }

    public override byte[] Rent(int minimumLength)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(minimumLength);
        if (minimumLength > _maxArrayBytes) return GC.AllocateUninitializedArray<byte>(minimumLength);
        int size = Math.Max(MinArrayBytes, (int)BitOperations.RoundUpToPowerOf2((uint)minimumLength));
        var bucket = _idle[BucketOf(size)];
        lock (_lock)
        {
            if (bucket.Count > 0) return bucket.Pop();
        }
        var array = GC.AllocateUninitializedArray<byte>(size, pinned: true);
        lock (_lock)
        {
            _owned.Add(array);
            RegisterLocked(array);
        }
        return array;
    }

    public override void Return(byte[] array, bool clearArray = false)
    {
        ArgumentNullException.ThrowIfNull(array);
        if (clearArray) Array.Clear(array);
        lock (_lock)
        {
            if (!_owned.Contains(array)) return; // an unpooled (oversized) array, or not ours: the GC takes it
            var bucket = _idle[BucketOf(array.Length)];
            if (bucket.Count < _arraysPerSize)
            {
                bucket.Push(array);
                return;
            }
            if (_registered.Remove(array)) _registrar!.Unregister(array);
            _owned.Remove(array);
        }
    }

    /// <summary>
    /// The address of <paramref name="memory"/>'s first element when it lies in an array of this pool that the
    /// attached registrar page-locked (whole wire arrays, or <see cref="MemoryCast"/> views of them); false
    /// otherwise, and the caller stages the bytes. The array never moves, so the address stays valid for as
    /// long as the caller keeps the array rented.
    /// </summary>
    public unsafe bool TryGetRegisteredAddress<T>(ReadOnlyMemory<T> memory, out nint address) where T : unmanaged
    {
        address = 0;
        if (memory.IsEmpty || !MemoryCast.TryGetByteSegment(memory, out var array, out int byteOffset)) return false;
        lock (_lock)
        {
            if (!_registered.Contains(array)) return false;
        }
        address = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(array)) + byteOffset;
        return true;
    }

    private void RegisterLocked(byte[] array)
    {
        if (_registrar is null || array.Length < RegistrationMinBytes) return;
        if (_registrar.Register(array)) _registered.Add(array);
    }

    private void DetachLocked()
    {
        if (_registrar is null) return;
        foreach (var array in _registered) _registrar.Unregister(array);
        _registered.Clear();
        _registrar = null;
    }

    private static int BucketOf(int size) => BitOperations.Log2((uint)size) - BitOperations.Log2(MinArrayBytes);
}
