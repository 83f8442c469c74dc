using FlashMla.Core.Backends;
using FlashMla.Core.Tensors;
using FlashMla.Cuda.Interop;

namespace FlashMla.Cuda.Backend;

/// <summary>
/// The checks <see cref="CudaBackend"/> runs before it touches device memory, apart from the backend
/// so they run (and are tested) without a GPU. A kernel given an index outside the pools faults the
/// whole context (a sticky error), so every index that reaches a kernel is checked here or in
/// <see cref="DecodeBatch.CheckInvariants"/>.
/// </summary>
internal static class CudaBackendArguments
{
    public static void Layer(KvPoolGeometry geometry, int layer)
    {
        if ((uint)layer >= (uint)geometry.NumLayers)
            throw new ArgumentOutOfRangeException(nameof(layer), layer, $"layer must be in 0 .. {geometry.NumLayers - 1}");
    }

    public static void Rows(KvPoolGeometry geometry, int layer, ReadOnlySpan<int> slots, int rowElements)
    {
        Layer(geometry, layer);
        if (rowElements != slots.Length * MlaDims.HeadDimK)
            throw new ArgumentException($"{slots.Length} slots need {slots.Length * MlaDims.HeadDimK} bf16 values, got {rowElements}", "rows");
        Slots(geometry, slots);
    }

    /// <summary>Rows in the pools' stored format: <see cref="KvPoolGeometry.BytesPerToken"/> bytes each.</summary>
    public static void StoredRows(KvPoolGeometry geometry, int layer, ReadOnlySpan<int> slots, int rowBytes)
    {
        Layer(geometry, layer);
        if (rowBytes != (long)slots.Length * geometry.BytesPerToken)
            throw new ArgumentException($"{slots.Length} slots need {(long)slots.Length * geometry.BytesPerToken} bytes of stored rows ({geometry.BytesPerToken} each), got {rowBytes}", "rows");
        Slots(geometry, slots);
    }

    public static void Slots(KvPoolGeometry geometry, ReadOnlySpan<int> slots)
    {
        long total = geometry.TotalSlots;
        for (int i = 0; i < slots.Length; i++)
            if ((ulong)slots[i] >= (ulong)total)
                throw new ArgumentOutOfRangeException(nameof(slots), slots[i], $"slot {i} is outside the pool of {total} slots");
    }

    public static void Copies(KvPoolGeometry geometry, ReadOnlySpan<BlockCopy> copies)
    {
        for (int i = 0; i < copies.Length; i++)
        {
            BlockCopy c = copies[i];
            if ((uint)c.Source >= (uint)geometry.NumBlocks || (uint)c.Destination >= (uint)geometry.NumBlocks)
                throw new ArgumentOutOfRangeException(nameof(copies), c, $"copy {i} names a block outside 0 .. {geometry.NumBlocks - 1}");
        }
    }

    /// <summary>
    /// The batch's invariants (<see cref="DecodeBatch.CheckInvariants"/>) plus the kernel ABI's limit on rows per
    /// sequence, which the edge already enforces through <see cref="CudaBackend.MaxQueryRowsPerSequence"/>: a
    /// failure here is a caller's bug, refused before it can fault the device.
    /// </summary>
    public static void Decode(KvPoolGeometry geometry, DecodeBatch batch)
    {
        ArgumentNullException.ThrowIfNull(batch);
        batch.CheckInvariants(geometry);
        long rowsPerSeq = (long)batch.QueryTokens * batch.Heads;
        if (rowsPerSeq > MlaKernelAbi.MaxRowsPerSeq)
            throw new ArgumentException(
                $"DecodeBatch: s_q * h_q = {rowsPerSeq} is more than the CUDA kernels take ({MlaKernelAbi.MaxRowsPerSeq})");
    }
}

/// <summary>
/// Cuts a list of block copies into waves that one copy-kernel launch can run in parallel while
/// keeping the list's sequential meaning: inside a wave no block is both read and written, and no
/// block is written twice. Self-copies change nothing and are left out of the pairs.
/// </summary>
internal sealed class BlockCopyWaves
{
    private readonly HashSet<int> _sources = [];
    private readonly HashSet<int> _destinations = [];

    /// <summary>Appends (start, count) of each wave of <paramref name="copies"/>, in order, to <paramref name="waves"/>.</summary>
    public void Split(ReadOnlySpan<BlockCopy> copies, List<(int Start, int Count)> waves)
    {
        waves.Clear();
        _sources.Clear();
        _destinations.Clear();
        int start = 0;
        for (int i = 0; i < copies.Length; i++)
        {
            BlockCopy c = copies[i];
            if (c.Source == c.Destination) continue;
            bool conflict = _destinations.Contains(c.Source) || _sources.Contains(c.Destination) || _destinations.Contains(c.Destination);
            if (conflict)
            {
                waves.Add((start, i - start));
                start = i;
                _sources.Clear();
                _destinations.Clear();
            }
            _sources.Add(c.Source);
            _destinations.Add(c.Destination);
        }
        if (copies.Length > start) waves.Add((start, copies.Length - start));
    }
}

internal static class SlotRuns
{
    /// <summary>Length of the run of consecutive slots (s, s+1, s+2, ...) that starts at <paramref name="start"/>; such rows are contiguous in a pool.</summary>
    public static int RunLength(ReadOnlySpan<int> slots, int start)
    {
        int n = 1;
        while (start + n < slots.Length && slots[start + n] == slots[start] + n) n++;
        return n;
    }
}
