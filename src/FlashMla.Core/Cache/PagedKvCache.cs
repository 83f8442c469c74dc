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

    /// <summary>The pools' dtype: what <see cref="AppendStored"/> takes and <see cref="ReadStored"/> gives.</summary>
    public KvDtype Dtype => _backend.Geometry.Dtype;

    /// <summary>Appends <c>rows.Length / 576</c> bf16 rows to one layer of one sequence (quantized when the pools are fp8).</summary>
    public void Append(ulong id, int layer, ReadOnlySpan<ushort> rows)
    {
        var (sequence, oldBlocks, slots) = PrepareAppend(id, layer, rows.Length, MlaDims.HeadDimK, "values");
        try
        {
            _backend.WriteKv(layer, slots, rows);
        }
        catch
        {
            ReleaseBeyond(sequence, oldBlocks);
            throw;
        }
        sequence.LayerLengths[layer] += slots.Length;
    }

    /// <summary>
    /// Appends rows already in the pools' stored format (<see cref="KvPoolGeometry.BytesPerToken"/> bytes each),
    /// copied as they are: KV that another system produced in the same format.
    /// </summary>
    public void AppendStored(ulong id, int layer, ReadOnlySpan<byte> rows)
    {
        var (sequence, oldBlocks, slots) = PrepareAppend(id, layer, rows.Length, _backend.Geometry.BytesPerToken, "bytes");
        try
        {
            _backend.WriteStoredKv(layer, slots, rows);
        }
        catch
        {
            ReleaseBeyond(sequence, oldBlocks);
            throw;
        }
        sequence.LayerLengths[layer] += slots.Length;
    }

    /// <summary>Checks an append of <paramref name="length"/> elements, <paramref name="perRow"/> a row, and makes its positions writable.</summary>
    private (Sequence Sequence, int OldBlocks, int[] Slots) PrepareAppend(ulong id, int layer, int length, int perRow, string unit)
    {
        CheckLayer(layer);
        if (length == 0 || length % perRow != 0)
            throw CacheException.Invalid($"kv must hold a positive whole number of rows of {perRow} {unit}, got {length} {unit}");
        var sequence = Get(id);
        int count = length / perRow;
        int oldBlocks = sequence.Blocks.Count;
        Reserve(sequence, layer, count, BlocksNeeded(sequence, layer, count));
        int[] slots = new int[count];
        SlotsOf(sequence, sequence.LayerLengths[layer], slots);
        return (sequence, oldBlocks, slots);
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

    /// <summary>Reads rows <c>start .. start + count - 1</c> of one layer into <paramref name="rows"/> as bf16 (dequantized when the pools are fp8).</summary>
    public void Read(ulong id, int layer, int start, int count, Span<ushort> rows)
    {
        int[] slots = ReadSlots(id, layer, start, count);
        if (rows.Length != count * MlaDims.HeadDimK) throw new ArgumentException("destination has the wrong length", nameof(rows));
        _backend.ReadKv(layer, slots, rows);
    }

    /// <summary>Reads rows <c>start .. start + count - 1</c> of one layer into <paramref name="rows"/> in the pools' stored format.</summary>
    public void ReadStored(ulong id, int layer, int start, int count, Span<byte> rows)
    {
        int[] slots = ReadSlots(id, layer, start, count);
        if (rows.Length != (long)count * _backend.Geometry.BytesPerToken) throw new ArgumentException("destination has the wrong length", nameof(rows));
        _backend.ReadStoredKv(layer, slots, rows);
    }

    /// <summary>Slots of rows <c>start .. start + count - 1</c> of one layer, after checking they are held.</summary>
    private int[] ReadSlots(ulong id, int layer, int start, int count)
    {
        CheckLayer(layer);
        var sequence = Get(id);
        int length = sequence.LayerLengths[layer];
        if (start < 0 || count < 0 || (long)start + count > length)
            throw CacheException.Invalid($"rows {start}..{(long)start + count - 1} are outside layer {layer} of sequence {id}, which holds {length}");
        int[] slots = new int[count];
        SlotsOf(sequence, start, slots);
        return slots;
    }

    /// <summary>Frees every sequence unused for longer than <paramref name="leaseTicks"/>; returns how many.</summary>
    public int ReclaimIdle(long nowTicks, long leaseTicks)
    {
        List<ulong>? idle = null;
        foreach (var s in _sequences.Values)
            if (nowTicks - s.LastUsed > leaseTicks) (idle ??= []).Add(s.Id);
        if (idle is null) return 0;
        foreach (ulong id in idle) Free(id);
        Reclaimed += idle.Count;
        return idle.Count;
    }
}
