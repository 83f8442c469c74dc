using System.Diagnostics;
using FlashMla.Core.Backends;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Cache;

/// <summary>
/// The paged KV cache: block allocator, sequence table and the backend's pools, kept consistent.
/// Every public operation validates first and either completes or changes nothing. Owned by the
/// scheduler loop (single-threaded); nothing here locks.
/// </summary>
public sealed class PagedKvCache
{
    private readonly IAttentionBackend _backend;
    private readonly Dictionary<ulong, Sequence> _sequences = [];
    private readonly List<BlockCopy> _copies = [];
    private readonly int[] _scratchBlocks = new int[1];
    private ulong _nextId = 1;

    public PagedKvCache(IAttentionBackend backend, CacheLimits limits)
    {
        _backend = backend;
        Limits = limits;
        Allocator = new BlockAllocator(backend.Geometry.NumBlocks);
    }

    public CacheLimits Limits { get; }
    public BlockAllocator Allocator { get; }
    public int NumLayers => _backend.Geometry.NumLayers;
    public int SequenceCount => _sequences.Count;
    public long RejectedNoSpace { get; private set; }
    public long Reclaimed { get; private set; }
    public IEnumerable<Sequence> Sequences => _sequences.Values;

    public ulong Create()
    {
        if (_sequences.Count >= Limits.MaxSequences)
            throw new CacheException(CacheError.ResourceExhausted, $"the cache already holds the maximum of {Limits.MaxSequences} sequences");
        var sequence = new Sequence(_nextId++, NumLayers, Stopwatch.GetTimestamp());
        _sequences.Add(sequence.Id, sequence);
        return sequence.Id;
    }

    public Sequence Get(ulong id)
    {
        if (!_sequences.TryGetValue(id, out var sequence)) throw CacheException.UnknownSequence(id);
        sequence.LastUsed = Stopwatch.GetTimestamp();
        return sequence;
    }

    public void CheckLayer(int layer)
    {
        if ((uint)layer >= (uint)NumLayers)
            throw CacheException.Invalid($"layer {layer} is out of range (the cache has {NumLayers} layers)");
    }

    /// <summary>Appends <c>rows.Length / 576</c> rows to one layer of one sequence.</summary>
    public void Append(ulong id, int layer, ReadOnlySpan<ushort> rows)
    {
        int count = CheckRows(layer, rows.Length);
        int[] slots = new int[count];
        var (sequence, oldBlocks) = ReserveAppend(id, layer, count, slots);
        try
        {
            _backend.WriteKv(layer, slots, rows);
        }
        catch
        {
            ReleaseBeyond(sequence, oldBlocks);
            throw;
        }
        sequence.LayerLengths[layer] += count;
    }

    /// <summary>Rows in <paramref name="elements"/> bf16 values for <paramref name="layer"/>, or a refusal.</summary>
    public int CheckRows(int layer, int elements)
    {
        CheckLayer(layer);
        if (elements == 0 || elements % MlaDims.HeadDimK != 0)
            throw CacheException.Invalid($"kv must hold a positive whole number of rows of {MlaDims.HeadDimK} values, got {elements} values");
        return elements / MlaDims.HeadDimK;
    }

    /// <summary>
    /// The first half of an append whose write the caller starts itself (KV ingest beside decode): makes room for
    /// <paramref name="count"/> rows at the end of <paramref name="layer"/> and fills <paramref name="slots"/> with
    /// where they go. The caller then writes them, adds <paramref name="count"/> to the layer's length, or on failure
    /// calls <see cref="ReleaseBeyond"/> with the block count returned. Refused, it changes nothing.
    /// </summary>
    public (Sequence Sequence, int OldBlocks) ReserveAppend(ulong id, int layer, int count, Span<int> slots)
    {
        var sequence = Get(id);
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
    /// <see cref="BlocksNeeded"/>; when too few blocks are free nothing changes.
    /// </summary>
    public void Reserve(Sequence sequence, int layer, int count, int needed)
    {
        RequireFreeBlocks(needed, $"sequence {sequence.Id}");
        int start = sequence.LayerLengths[layer];
        int endBlocks = MlaDims.BlocksFor(start + count);
        int lastHeld = Math.Min(sequence.Blocks.Count, endBlocks);
        _copies.Clear();
        for (int b = start / MlaDims.BlockSize; b < lastHeld; b++)
        {
            int shared = sequence.Blocks[b];
            if (Allocator.RefCount(shared) <= 1) continue;
            Allocator.TryAllocate(_scratchBlocks);
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
                foreach (var copy in _copies) Allocator.Release(copy.Destination);
                throw;
            }
            foreach (var copy in _copies)
            {
                int index = sequence.Blocks.IndexOf(copy.Source, start / MlaDims.BlockSize);
                sequence.Blocks[index] = copy.Destination;
                Allocator.Release(copy.Source);
            }
        }
        int grow = endBlocks - sequence.Blocks.Count;
        if (grow > 0)
        {
            Span<int> fresh = grow <= 256 ? stackalloc int[grow] : new int[grow];
            Allocator.TryAllocate(fresh);
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
            Allocator.Release(sequence.Blocks[^1]);
            sequence.Blocks.RemoveAt(sequence.Blocks.Count - 1);
        }
    }

    /// <summary>A new sequence sharing the parent's blocks that are full in every layer, with a copy of the rest.</summary>
    public (ulong Id, int Shared, int Copied) Fork(ulong parentId)
    {
        var parent = Get(parentId);
        if (_sequences.Count >= Limits.MaxSequences)
            throw new CacheException(CacheError.ResourceExhausted, $"the cache already holds the maximum of {Limits.MaxSequences} sequences");
        int shared = Math.Min(parent.MinLength / MlaDims.BlockSize, parent.Blocks.Count);
        int copied = parent.Blocks.Count - shared;
        RequireFreeBlocks(copied, $"the fork of sequence {parentId}");
        int[] fresh = new int[copied];
        Allocator.TryAllocate(fresh);
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
                foreach (int block in fresh) Allocator.Release(block);
                throw;
            }
        }
        var child = new Sequence(_nextId++, NumLayers, Stopwatch.GetTimestamp());
        for (int i = 0; i < shared; i++)
        {
            Allocator.AddRef(parent.Blocks[i]);
            child.Blocks.Add(parent.Blocks[i]);
        }
        child.Blocks.AddRange(fresh);
        parent.LayerLengths.CopyTo(child.LayerLengths, 0);
        _sequences.Add(child.Id, child);
        return (child.Id, shared, copied);
    }

    /// <summary>Cuts every layer to at most <paramref name="length"/> tokens; returns the blocks let go.</summary>
    public int Truncate(ulong id, int length)
    {
        var sequence = Get(id);
        if (length < 0 || length > sequence.MaxLength)
            throw CacheException.Invalid($"cannot truncate sequence {id} to {length} tokens: its longest layer holds {sequence.MaxLength}");
        for (int l = 0; l < sequence.LayerLengths.Length; l++)
            sequence.LayerLengths[l] = Math.Min(sequence.LayerLengths[l], length);
        int before = sequence.Blocks.Count;
        ReleaseBeyond(sequence, 0);
        return before - sequence.Blocks.Count;
    }

    /// <summary>Removes the sequence; returns the blocks it referenced.</summary>
    public int Free(ulong id)
    {
        if (!_sequences.Remove(id, out var sequence)) throw CacheException.UnknownSequence(id);
        foreach (int block in sequence.Blocks) Allocator.Release(block);
        return sequence.Blocks.Count;
    }

    /// <summary>Reads rows <c>start .. start + count - 1</c> of one layer into <paramref name="rows"/>.</summary>
    public void Read(ulong id, int layer, int start, int count, Span<ushort> rows)
    {
        CheckLayer(layer);
        var sequence = Get(id);
        int length = sequence.LayerLengths[layer];
        if (start < 0 || count < 0 || (long)start + count > length)
            throw CacheException.Invalid($"rows {start}..{(long)start + count - 1} are outside layer {layer} of sequence {id}, which holds {length}");
        if (rows.Length != count * MlaDims.HeadDimK) throw new ArgumentException("destination has the wrong length", nameof(rows));
        Span<int> slots = count <= 1024 ? stackalloc int[count] : new int[count];
        SlotsOf(sequence, start, slots);
        _backend.ReadKv(layer, slots, rows);
    }

    /// <summary>
    /// Frees every sequence unused for longer than <paramref name="leaseTicks"/>, except those <paramref name="inUse"/>
    /// says work is still running on; returns how many.
    /// </summary>
    public int ReclaimIdle(long nowTicks, long leaseTicks, Func<ulong, bool>? inUse = null)
    {
        List<ulong>? idle = null;
        foreach (var s in _sequences.Values)
            if (nowTicks - s.LastUsed > leaseTicks && !(inUse?.Invoke(s.Id) ?? false)) (idle ??= []).Add(s.Id);
        if (idle is null) return 0;
        foreach (ulong id in idle) Free(id);
        Reclaimed += idle.Count;
        return idle.Count;
    }
}
