using System.Buffers;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace FlashMla.Core.Memory;

/// <summary>
/// A bounded pool of tensor-sized byte arrays allocated on the pinned object heap (they never move), by
/// power-of-two size. Once a backend attaches an <see cref="IHostMemoryRegistrar"/>, every array of at least
/// <see cref="RegistrationMinBytes"/> the pool holds is page-locked with it, up to
/// <see cref="TensorPoolLimits.PageLockedBytes"/>, so the backend can copy a request's q straight from the array the
/// wire parsed it into, and the outputs straight into the arrays the response is written from
/// (<see cref="TryGetRegisteredAddress{T}"/>). The pool never lets go of an array it registered without
/// unregistering it first.
/// <para>
/// Bounded three ways (<see cref="TensorPoolLimits"/>): the bytes rented and not returned (<see cref="HeldBytes"/>:
/// requests admitted through <see cref="TryRent"/> or <see cref="WithinBudget"/> are refused past the budget), the
/// idle bytes kept for reuse, and the bytes page-locked.
/// </para>
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
    private readonly HashSet<byte[]> _owned = new(ReferenceEqualityComparer.Instance);      // pooled arrays, rented or idle
    private readonly HashSet<byte[]> _rented = new(ReferenceEqualityComparer.Instance);     // every array out now, oversized ones too
    private readonly HashSet<byte[]> _registered = new(ReferenceEqualityComparer.Instance);
    private readonly HashSet<byte[]> _overLockBudget = new(ReferenceEqualityComparer.Instance); // left unregistered for the cap
    private readonly object _lock = new();
    private IHostMemoryRegistrar? _registrar;
    private long _heldBytes, _peakHeldBytes, _idleBytes, _registeredBytes; // under _lock

    /// <param name="maxArrayBytes">Largest array kept (a power of two); larger rents are plain, unpooled arrays.</param>
    /// <param name="arraysPerSize">Idle arrays kept per size; more returned ones are let go.</param>
    /// <param name="limits">The pool's ceilings; none when null.</param>
    public PinnedTensorPool(int maxArrayBytes, int arraysPerSize, TensorPoolLimits? limits = null)
    {
        if (maxArrayBytes < MinArrayBytes || !int.IsPow2(maxArrayBytes))
            throw new ArgumentOutOfRangeException(nameof(maxArrayBytes), "a power of two of at least 4096");
        ArgumentOutOfRangeException.ThrowIfLessThan(arraysPerSize, 1);
        _maxArrayBytes = maxArrayBytes;
        _arraysPerSize = arraysPerSize;
        Limits = limits ?? TensorPoolLimits.Unbounded;
        _idle = new Stack<byte[]>[BucketOf(maxArrayBytes) + 1];
        for (int i = 0; i < _idle.Length; i++) _idle[i] = new Stack<byte[]>();
        WithinBudget = new BudgetedView(this);
    }

    public TensorPoolLimits Limits { get; }

    /// <summary>
    /// This pool as an <see cref="ArrayPool{T}"/> whose <c>Rent</c> is <see cref="TryRent"/>: past the budget of held
    /// bytes it throws <see cref="TensorBudgetExceededException"/>. For parsers of request messages, which take
    /// an <see cref="ArrayPool{T}"/>; what they rent is returned to either view alike.
    /// </summary>
    public ArrayPool<byte> WithinBudget { get; }

    /// <summary>Arrays the pool holds (rented or idle).</summary>
    public int OwnedArrays { get { lock (_lock) return _owned.Count; } }

    /// <summary>Arrays currently page-locked by the attached registrar.</summary>
    public int RegisteredArrays { get { lock (_lock) return _registered.Count; } }

    /// <summary>Bytes of the arrays rented now and not returned (oversized ones too).</summary>
    public long HeldBytes { get { lock (_lock) return _heldBytes; } }

    /// <summary>The most <see cref="HeldBytes"/> ever were.</summary>
    public long PeakHeldBytes { get { lock (_lock) return _peakHeldBytes; } }

    /// <summary>Bytes of idle arrays kept for reuse.</summary>
    public long IdleBytes { get { lock (_lock) return _idleBytes; } }

    /// <summary>Bytes page-locked by the attached registrar now.</summary>
    public long RegisteredBytes { get { lock (_lock) return _registeredBytes; } }

    /// <summary>
    /// Page-locks every array the pool holds with <paramref name="registrar"/> (within the page-locked budget), and
    /// from now on each new one (a backend calls this once it is ready). Replaces an earlier registrar after
    /// unregistering with it.
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

    /// <summary>An array of at least <paramref name="minimumLength"/> bytes, whatever the budget (it counts toward it).</summary>
    public override byte[] Rent(int minimumLength) => RentCore(minimumLength, withinBudget: false)!;

    /// <summary>
    /// An array of at least <paramref name="minimumLength"/> bytes if it fits in the budget of held bytes
    /// (<see cref="TensorPoolLimits.HeldBytes"/>); false, and nothing rented, if it does not.
    /// </summary>
    public bool TryRent(int minimumLength, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out byte[]? array)
    {
        array = RentCore(minimumLength, withinBudget: true);
        return array is not null;
    }

    private byte[]? RentCore(int minimumLength, bool withinBudget)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(minimumLength);
        bool pooled = minimumLength <= _maxArrayBytes;
        int size = pooled ? Math.Max(MinArrayBytes, (int)BitOperations.RoundUpToPowerOf2((uint)minimumLength)) : minimumLength;
        lock (_lock)
        {
            if (withinBudget && _heldBytes + size > Limits.HeldBytes) return null;
            _heldBytes += size;
            _peakHeldBytes = Math.Max(_peakHeldBytes, _heldBytes);
            if (pooled && _idle[BucketOf(size)].TryPop(out var idle))
            {
                _idleBytes -= size;
                _rented.Add(idle);
                if (_overLockBudget.Contains(idle)) RegisterLocked(idle); // room may have freed since it came back
                return idle;
            }
        }
        byte[] array;
        try
        {
            // Outside the lock (a large allocation takes a while); its bytes are counted already.
            array = GC.AllocateUninitializedArray<byte>(size, pinned: pooled);
        }
        catch
        {
            lock (_lock) _heldBytes -= size;
            throw;
        }
        lock (_lock)
        {
            _rented.Add(array);
            if (pooled)
            {
                _owned.Add(array);
                RegisterLocked(array);
            }
        }
        return array;
    }

    public override void Return(byte[] array, bool clearArray = false)
    {
        ArgumentNullException.ThrowIfNull(array);
        if (clearArray) Array.Clear(array);
        lock (_lock)
        {
            if (!_rented.Remove(array)) return; // not ours, or returned already
            _heldBytes -= array.Length;
            if (!_owned.Contains(array)) return; // an unpooled (oversized) array: the GC takes it
            var bucket = _idle[BucketOf(array.Length)];
            if (bucket.Count < _arraysPerSize && _idleBytes + array.Length <= Limits.RetainedBytes)
            {
                bucket.Push(array);
                _idleBytes += array.Length;
                return;
            }
            if (_registered.Remove(array))
            {
                _registrar!.Unregister(array);
                _registeredBytes -= array.Length;
            }
            _overLockBudget.Remove(array);
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
        if (_registrar is null || array.Length < RegistrationMinBytes || _registered.Contains(array)) return;
        if (_registeredBytes + array.Length > Limits.PageLockedBytes)
        {
            _overLockBudget.Add(array); // staged by the backend until room frees and it is rented again
            return;
        }
        _overLockBudget.Remove(array);
        if (_registrar.Register(array))
        {
            _registered.Add(array);
            _registeredBytes += array.Length;
        }
    }

    private void DetachLocked()
    {
        _overLockBudget.Clear();
        if (_registrar is null) return;
        foreach (var array in _registered) _registrar.Unregister(array);
        _registered.Clear();
        _registeredBytes = 0;
        _registrar = null;
    }

    /// <summary>The pool seen through <see cref="TryRent"/>: what <see cref="WithinBudget"/> is.</summary>
    private sealed class BudgetedView(PinnedTensorPool pool) : ArrayPool<byte>
    {
        public override byte[] Rent(int minimumLength) =>
            pool.TryRent(minimumLength, out var array) ? array : throw new TensorBudgetExceededException(minimumLength, pool.HeldBytes, pool.Limits.HeldBytes);

        public override void Return(byte[] array, bool clearArray = false) => pool.Return(array, clearArray);
    }

    private static int BucketOf(int size) => BitOperations.Log2((uint)size) - BitOperations.Log2(MinArrayBytes);
}
