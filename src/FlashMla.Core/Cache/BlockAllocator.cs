namespace FlashMla.Core.Cache;

/// <summary>
/// Reference-counted pool of KV block ids (one numbering for every layer). A block is free when its
/// count is 0; it is on the free list exactly then. Owned by the scheduler loop: not thread-safe.
/// </summary>
public sealed class BlockAllocator
{
    private readonly int[] _refCounts;
    private readonly int[] _freeList;
    private int _freeCount;

    public BlockAllocator(int totalBlocks)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(totalBlocks, 1);
        _refCounts = new int[totalBlocks];
        _freeList = new int[totalBlocks];
        // Lowest ids on top, so a fresh cache hands out 0, 1, 2, ... (easy to read in logs and tests).
        for (int i = 0; i < totalBlocks; i++) _freeList[i] = totalBlocks - 1 - i;
        _freeCount = totalBlocks;
    }

    public int TotalBlocks => _refCounts.Length;
    public int FreeBlocks => _freeCount;
    public int UsedBlocks => TotalBlocks - _freeCount;

    public int RefCount(int block) => _refCounts[block];

    /// <summary>Takes <c>destination.Length</c> blocks with count 1, or none and false if too few are free.</summary>
    public bool TryAllocate(Span<int> destination)
    {
        if (destination.Length > _freeCount) return false;
        for (int i = 0; i < destination.Length; i++)
        {
            int block = _freeList[--_freeCount];
            _refCounts[block] = 1;
            destination[i] = block;
        }
        return true;
    }

    /// <summary>One more owner of an allocated block (a fork sharing it).</summary>
    public void AddRef(int block)
    {
        if (_refCounts[block] <= 0) throw new InvalidOperationException($"block {block} is free and cannot be shared");
        _refCounts[block]++;
    }

    /// <summary>One owner fewer; returns true when the block went back to the free list.</summary>
    public bool Release(int block)
    {
        int count = _refCounts[block];
        if (count <= 0) throw new InvalidOperationException($"block {block} released while free (double free)");
        _refCounts[block] = count - 1;
        if (count > 1) return false;
        _freeList[_freeCount++] = block;
        return true;
    }
}
