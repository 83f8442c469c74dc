using System.Buffers.Binary;
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using FlashMla.Core.Backends;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Cache;

/// <summary>
/// The paged KV cache: block allocator, sequence table and the backend's pools, kept consistent.
/// Every public operation validates first and either completes or changes nothing. Owned by the
/// scheduler loop (single-threaded); nothing here locks.
/// <para>
/// Every sequence belongs to a <see cref="Tenant"/>, and every operation that names a sequence names the caller's
/// tenant too: a sequence of another tenant is not found, by the same lookup, the same check and the same message as an
/// id that never existed (<see cref="Get"/>). Sequence ids are random 64-bit numbers (never 0, never a live id), so
/// they cannot be guessed either. A tenant's blocks and sequences count against its <see cref="TenantQuota"/>; blocks
/// are counted once however many of its sequences share them (sharing happens by fork only, so within one tenant).
/// An omitted tenant is <see cref="DefaultTenant"/>, the one tenant of a cache used without tenants.
/// </para>
/// </summary>
public sealed class PagedKvCache
{
    private readonly IAttentionBackend _backend;
    private readonly Dictionary<ulong, Sequence> _sequences = [];
    private readonly List<BlockCopy> _copies = [];
    private readonly int[] _scratchBlocks = new int[1];
    private readonly Func<ulong> _idSource;

    public PagedKvCache(IAttentionBackend backend, CacheLimits limits) : this(backend, limits, RandomId)
    {
    }

    /// <param name="idSource">Candidate sequence ids (tests make collisions happen; the product draws them at random).</param>
    internal PagedKvCache(IAttentionBackend backend, CacheLimits limits, Func<ulong> idSource)
    {
        _backend = backend;
        Limits = limits;
        Allocator = new BlockAllocator(backend.Geometry.NumBlocks);
        _idSource = idSource;
    }

    /// <summary>The owner of sequences made without naming a tenant: an admin without quotas.</summary>
    public Tenant DefaultTenant { get; } = new(Tenant.AnonymousName, isAdmin: true);

    public CacheLimits Limits { get; }
    public BlockAllocator Allocator { get; }
    public int NumLayers => _backend.Geometry.NumLayers;
    public int SequenceCount => _sequences.Count;
    public long RejectedNoSpace { get; private set; }
    public long Reclaimed { get; private set; }
    public IEnumerable<Sequence> Sequences => _sequences.Values;

    public ulong Create(Tenant? tenant = null)
    {
        tenant ??= DefaultTenant;
        RequireSequenceRoom(tenant);
        return Add(new Sequence(NewId(), tenant, NumLayers, Stopwatch.GetTimestamp())).Id;
    }

    /// <summary>
    /// The sequence <paramref name="id"/> of <paramref name="tenant"/>. Another tenant's sequence is refused exactly as a
    /// missing one: one lookup, one comparison, one message (which names only the id the caller sent), and it is not
    /// touched (its lease does not restart).
    /// </summary>
    public Sequence Get(ulong id, Tenant? tenant = null)
    {
        tenant ??= DefaultTenant;
        if (!_sequences.TryGetValue(id, out var sequence) || !ReferenceEquals(sequence.Owner, tenant)) throw CacheException.UnknownSequence(id);
        sequence.LastUsed = Stopwatch.GetTimestamp();
        return sequence;
    }

    /// <summary>A random id that is not 0 and not live (ids are not guessable: another tenant cannot find one by counting).</summary>
    private ulong NewId()
    {
        while (true)
        {
            ulong id = _idSource();
            if (id != 0 && !_sequences.ContainsKey(id)) return id;
        }
    }

    private static ulong RandomId()
    {
        Span<byte> bytes = stackalloc byte[sizeof(ulong)];
        RandomNumberGenerator.Fill(bytes);
        return BinaryPrimitives.ReadUInt64LittleEndian(bytes);
    }

    private Sequence Add(Sequence sequence)
    {
        _sequences.Add(sequence.Id, sequence);
        sequence.Owner.Sequences++;
        return sequence;
    }

    /// <summary>Refuses (RESOURCE_EXHAUSTED) a new sequence past the cache's limit or the tenant's quota.</summary>
    private void RequireSequenceRoom(Tenant tenant)
    {
        if (_sequences.Count >= Limits.MaxSequences)
            throw new CacheException(CacheError.ResourceExhausted, $"the cache already holds the maximum of {Limits.MaxSequences} sequences");
        if (tenant.Quota.MaxSequences is { } quota && tenant.Sequences >= quota)
            throw tenant.RefuseQuota(TenantQuotaKind.Sequences, $"tenant '{tenant.Name}' already holds its maximum of {quota} sequences");
    }

    public void CheckLayer(int layer)
    {
        if ((uint)layer >= (uint)NumLayers)
            throw CacheException.Invalid($"layer {layer} is out of range (the cache has {NumLayers} layers)");
    }

    /// <summary>The pools' dtype: what <see cref="AppendStored"/> takes and <see cref="ReadStored"/> gives.</summary>
    public KvDtype Dtype => _backend.Geometry.Dtype;

    /// <summary>Appends <c>rows.Length / 576</c> bf16 rows to one layer of one sequence (quantized when the pools are fp8).</summary>
    public void Append(ulong id, int layer, ReadOnlySpan<ushort> rows, Tenant? tenant = null) =>
        AppendRows(id, layer, CheckRows(layer, rows.Length), MemoryMarshal.AsBytes(rows), stored: false, tenant);

    /// <summary>
    /// Appends rows already in the pools' stored format (<see cref="KvPoolGeometry.BytesPerToken"/> bytes each),
    /// copied as they are: KV that another system produced in the same format.
    /// </summary>
    public void AppendStored(ulong id, int layer, ReadOnlySpan<byte> rows, Tenant? tenant = null) =>
        AppendRows(id, layer, CheckStoredRows(layer, rows.Length), rows, stored: true, tenant);

    private void AppendRows(ulong id, int layer, int count, ReadOnlySpan<byte> rows, bool stored, Tenant? tenant)
    {
        int[] slots = new int[count];
        var (sequence, oldBlocks) = ReserveAppend(id, layer, count, slots, tenant);
        try
        {
            if (stored) _backend.WriteStoredKv(layer, slots, rows);
            else _backend.WriteKv(layer, slots, MemoryMarshal.Cast<byte, ushort>(rows));
        }
        catch
        {
            ReleaseBeyond(sequence, oldBlocks);
            throw;
        }
        sequence.LayerLengths[layer] += count;
    }

    /// <summary>Rows in <paramref name="elements"/> bf16 values for <paramref name="layer"/>, or a refusal.</summary>
    public int CheckRows(int layer, int elements) => CheckRows(layer, elements, MlaDims.HeadDimK, "values");

    /// <summary>Rows in <paramref name="bytes"/> bytes of the pools' stored format for <paramref name="layer"/>, or a refusal.</summary>
    public int CheckStoredRows(int layer, int bytes) => CheckRows(layer, bytes, _backend.Geometry.BytesPerToken, "bytes");

    private int CheckRows(int layer, int length, int perRow, string unit)
    {
        CheckLayer(layer);
        if (length == 0 || length % perRow != 0)
            throw CacheException.Invalid($"kv must hold a positive whole number of rows of {perRow} {unit}, got {length} {unit}");
        return length / perRow;
    }

    /// <summary>
    /// The first half of an append whose write the caller starts itself (KV ingest beside decode): makes room for
    /// <paramref name="count"/> rows at the end of <paramref name="layer"/> and fills <paramref name="slots"/> with
    /// where they go. The caller then writes them, adds <paramref name="count"/> to the layer's length, or on failure
    /// calls <see cref="ReleaseBeyond"/> with the block count returned. Refused, it changes nothing.
    /// </summary>
    /// <remarks>The sequence is <paramref name="tenant"/>'s (another's is not found), and new blocks count against its quota.</remarks>
    public (Sequence Sequence, int OldBlocks) ReserveAppend(ulong id, int layer, int count, Span<int> slots, Tenant? tenant = null)
    {
        var sequence = Get(id, tenant);
        int oldBlocks = sequence.Blocks.Count;
        Reserve(sequence, layer, count, BlocksNeeded(sequence, layer, count));
        SlotsOf(sequence, sequence.LayerLengths[layer], slots[..count]);
        return (sequence, oldBlocks);
    }

    /// <summary>
    /// Blocks a write of <paramref name="count"/> rows at the end of <paramref name="layer"/> needs:
    /// new blocks past the capacity plus a private copy of every shared block in the written range.
    /// Throws when the sequence would pass the length limit.
    /// </summary>
    public int BlocksNeeded(Sequence sequence, int layer, int count)
    {
        int start = sequence.LayerLengths[layer];
        long end = (long)start + count;
        if (end > Limits.MaxSequenceLength)
            throw CacheException.Invalid($"sequence {sequence.Id} would reach {end} tokens in layer {layer}, past the limit of {Limits.MaxSequenceLength}");
        int needed = Math.Max(0, MlaDims.BlocksFor((int)end) - sequence.Blocks.Count);
        int lastHeld = Math.Min(sequence.Blocks.Count, MlaDims.BlocksFor((int)end));
        for (int b = start / MlaDims.BlockSize; b < lastHeld; b++)
            if (Allocator.RefCount(sequence.Blocks[b]) > 1) needed++;
        return needed;
    }

    /// <summary>
    /// Makes positions <c>len .. len+count-1</c> of <paramref name="layer"/> writable: copies shared blocks in that
    /// range (copy-on-write) and allocates blocks past the capacity. <paramref name="needed"/> comes from
    /// <see cref="BlocksNeeded"/>; when too few blocks are free, or the owner's quota has too few left, nothing changes.
    /// </summary>
    public void Reserve(Sequence sequence, int layer, int count, int needed)
    {
        RequireBlocks(sequence.Owner, needed, $"sequence {sequence.Id}");
        int start = sequence.LayerLengths[layer];
        int endBlocks = MlaDims.BlocksFor(start + count);
        int lastHeld = Math.Min(sequence.Blocks.Count, endBlocks);
        _copies.Clear();
        for (int b = start / MlaDims.BlockSize; b < lastHeld; b++)
        {
            int shared = sequence.Blocks[b];
            if (Allocator.RefCount(shared) <= 1) continue;
            Allocate(sequence.Owner, _scratchBlocks);
            _copies.Add(new BlockCopy(shared, _scratchBlocks[0]));
        }
        if (_copies.Count > 0)
        {
            try
            {
                _backend.CopyBlocks(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_copies));
            }
            catch
            {
                foreach (var copy in _copies) Release(sequence.Owner, copy.Destination);
                throw;
            }
            foreach (var copy in _copies)
            {
                int index = sequence.Blocks.IndexOf(copy.Source, start / MlaDims.BlockSize);
                sequence.Blocks[index] = copy.Destination;
                Release(sequence.Owner, copy.Source);
            }
        }
        int grow = endBlocks - sequence.Blocks.Count;
        if (grow > 0)
        {
            Span<int> fresh = grow <= 256 ? stackalloc int[grow] : new int[grow];
            Allocate(sequence.Owner, fresh);
            foreach (int block in fresh) sequence.Blocks.Add(block);
        }
    }

    /// <summary>Refuses (RESOURCE_EXHAUSTED, counted) when fewer than <paramref name="needed"/> blocks are free.</summary>
    public void RequireFreeBlocks(int needed, string forWhat)
    {
        if (needed <= Allocator.FreeBlocks) return;
        RejectedNoSpace++;
        throw new CacheException(CacheError.ResourceExhausted,
            $"{forWhat} needs {needed} more KV blocks, only {Allocator.FreeBlocks} of {Allocator.TotalBlocks} are free");
    }

    /// <summary>
    /// Refuses (RESOURCE_EXHAUSTED, counted) when fewer than <paramref name="needed"/> blocks are free, or when
    /// <paramref name="owner"/> would hold more than its quota.
    /// </summary>
    public void RequireBlocks(Tenant owner, int needed, string forWhat)
    {
        if (needed > Allocator.FreeBlocks) owner.RejectedNoSpace++;
        RequireFreeBlocks(needed, forWhat);
        if (owner.Quota.MaxBlocks is { } quota && (long)owner.BlocksHeld + needed > quota)
        {
            owner.RejectedNoSpace++;
            throw owner.RefuseQuota(TenantQuotaKind.Blocks,
                $"{forWhat} needs {needed} more KV blocks, and tenant '{owner.Name}' holds {owner.BlocksHeld} of its quota of {quota}");
        }
    }

    /// <summary>Takes blocks for <paramref name="owner"/> (the caller checked they are there: <see cref="RequireBlocks"/>).</summary>
    private void Allocate(Tenant owner, Span<int> blocks)
    {
        if (!Allocator.TryAllocate(blocks)) throw new InvalidOperationException("blocks allocated without checking they are free");
        owner.BlocksHeld += blocks.Length;
    }

    /// <summary>One reference fewer to a block of <paramref name="owner"/>'s; counted off its blocks when it goes free.</summary>
    private void Release(Tenant owner, int block)
    {
        if (Allocator.Release(block)) owner.BlocksHeld--;
    }

    /// <summary>Slots of positions <c>start .. start + slots.Length - 1</c> (blocks must be held).</summary>
    public static void SlotsOf(Sequence sequence, int start, Span<int> slots)
    {
        for (int i = 0; i < slots.Length; i++) slots[i] = sequence.SlotOf(start + i);
    }

    /// <summary>Undoes the growth of a failed write: releases blocks past <paramref name="keepBlocks"/>.</summary>
    public void ReleaseBeyond(Sequence sequence, int keepBlocks)
    {
        int needBlocks = Math.Max(keepBlocks, MlaDims.BlocksFor(sequence.MaxLength));
        while (sequence.Blocks.Count > needBlocks)
        {
            Release(sequence.Owner, sequence.Blocks[^1]);
            sequence.Blocks.RemoveAt(sequence.Blocks.Count - 1);
        }
    }

    /// <summary>A new sequence sharing the parent's blocks that are full in every layer, with a copy of the rest.</summary>
    /// <remarks>The child belongs to the parent's tenant, and counts against its quotas.</remarks>
    public (ulong Id, int Shared, int Copied) Fork(ulong parentId, Tenant? tenant = null)
    {
        var parent = Get(parentId, tenant);
        var owner = parent.Owner;
        RequireSequenceRoom(owner);
        int shared = Math.Min(parent.MinLength / MlaDims.BlockSize, parent.Blocks.Count);
        int copied = parent.Blocks.Count - shared;
        RequireBlocks(owner, copied, $"the fork of sequence {parentId}");
        int[] fresh = new int[copied];
        Allocate(owner, fresh);
        if (copied > 0)
        {
            var copies = new BlockCopy[copied];
            for (int i = 0; i < copied; i++) copies[i] = new BlockCopy(parent.Blocks[shared + i], fresh[i]);
            try
            {
                _backend.CopyBlocks(copies);
            }
            catch
            {
                foreach (int block in fresh) Release(owner, block);
                throw;
            }
        }
        var child = new Sequence(NewId(), owner, NumLayers, Stopwatch.GetTimestamp());
        for (int i = 0; i < shared; i++)
        {
            Allocator.AddRef(parent.Blocks[i]);
            child.Blocks.Add(parent.Blocks[i]);
        }
        child.Blocks.AddRange(fresh);
        parent.LayerLengths.CopyTo(child.LayerLengths, 0);
        Add(child);
        return (child.Id, shared, copied);
    }

    /// <summary>Cuts every layer to at most <paramref name="length"/> tokens; returns the blocks let go.</summary>
    public int Truncate(ulong id, int length, Tenant? tenant = null)
    {
        var sequence = Get(id, tenant);
        if (length < 0 || length > sequence.MaxLength)
            throw CacheException.Invalid($"cannot truncate sequence {id} to {length} tokens: its longest layer holds {sequence.MaxLength}");
        for (int l = 0; l < sequence.LayerLengths.Length; l++)
            sequence.LayerLengths[l] = Math.Min(sequence.LayerLengths[l], length);
        int before = sequence.Blocks.Count;
        ReleaseBeyond(sequence, 0);
        return before - sequence.Blocks.Count;
    }

    /// <summary>Removes the sequence; returns the blocks it referenced.</summary>
    public int Free(ulong id, Tenant? tenant = null) => Remove(Get(id, tenant));

    private int Remove(Sequence sequence)
    {
        _sequences.Remove(sequence.Id);
        sequence.Owner.Sequences--;
        foreach (int block in sequence.Blocks) Release(sequence.Owner, block);
        return sequence.Blocks.Count;
    }

    /// <summary>Reads rows <c>start .. start + count - 1</c> of one layer into <paramref name="rows"/> as bf16 (dequantized when the pools are fp8).</summary>
    public void Read(ulong id, int layer, int start, int count, Span<ushort> rows, Tenant? tenant = null)
    {
        int[] slots = ReadSlots(id, layer, start, count, tenant);
        if (rows.Length != count * MlaDims.HeadDimK) throw new ArgumentException("destination has the wrong length", nameof(rows));
        _backend.ReadKv(layer, slots, rows);
    }

    /// <summary>Reads rows <c>start .. start + count - 1</c> of one layer into <paramref name="rows"/> in the pools' stored format.</summary>
    public void ReadStored(ulong id, int layer, int start, int count, Span<byte> rows, Tenant? tenant = null)
    {
        int[] slots = ReadSlots(id, layer, start, count, tenant);
        if (rows.Length != (long)count * _backend.Geometry.BytesPerToken) throw new ArgumentException("destination has the wrong length", nameof(rows));
        _backend.ReadStoredKv(layer, slots, rows);
    }

    /// <summary>Slots of rows <c>start .. start + count - 1</c> of one layer, after checking they are held.</summary>
    private int[] ReadSlots(ulong id, int layer, int start, int count, Tenant? tenant)
    {
        CheckLayer(layer);
        var sequence = Get(id, tenant);
        int length = sequence.LayerLengths[layer];
        if (start < 0 || count < 0 || (long)start + count > length)
            throw CacheException.Invalid($"rows {start}..{(long)start + count - 1} are outside layer {layer} of sequence {id}, which holds {length}");
        int[] slots = new int[count];
        SlotsOf(sequence, start, slots);
        return slots;
    }

    /// <summary>
    /// Frees every sequence unused for longer than <paramref name="leaseTicks"/>, except those <paramref name="inUse"/>
    /// says work is still running on; returns how many.
    /// </summary>
    public int ReclaimIdle(long nowTicks, long leaseTicks, Func<ulong, bool>? inUse = null)
    {
        List<Sequence>? idle = null;
        foreach (var s in _sequences.Values)
            if (nowTicks - s.LastUsed > leaseTicks && !(inUse?.Invoke(s.Id) ?? false)) (idle ??= []).Add(s);
        if (idle is null) return 0;
        foreach (var s in idle)
        {
            Remove(s);
            s.Owner.ReclaimedSequences++;
        }
        Reclaimed += idle.Count;
        return idle.Count;
    }
}
