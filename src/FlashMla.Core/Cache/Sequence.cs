using FlashMla.Core.Tensors;

namespace FlashMla.Core.Cache;

/// <summary>
/// One sequence in the cache: its block list (valid for every layer) and a length per layer.
/// Invariant: <c>Blocks.Count == BlocksFor(MaxLength)</c>; block <c>i</c> holds positions <c>64 i .. 64 i + 63</c>.
/// </summary>
public sealed class Sequence
{
    internal Sequence(ulong id, Tenant owner, int numLayers, long now)
    {
        Id = id;
        Owner = owner;
        LayerLengths = new int[numLayers];
        LastUsed = now;
    }

    public ulong Id { get; }

    /// <summary>The tenant that created it (or its fork parent); only that tenant's requests find it.</summary>
    public Tenant Owner { get; }
    internal List<int> Blocks { get; } = [];
    internal int[] LayerLengths { get; }

    /// <summary>Timestamp (Stopwatch ticks) of the last request that named this sequence.</summary>
    internal long LastUsed { get; set; }

    public IReadOnlyList<int> BlockIds => Blocks;
    public ReadOnlySpan<int> Lengths => LayerLengths;

    public int MaxLength
    {
        get
        {
            int max = 0;
            foreach (int l in LayerLengths) max = Math.Max(max, l);
            return max;
        }
    }

    public int MinLength
    {
        get
        {
            int min = int.MaxValue;
            foreach (int l in LayerLengths) min = Math.Min(min, l);
            return min;
        }
    }

    /// <summary>Slot of position <paramref name="position"/> (the block must be held).</summary>
    public int SlotOf(int position) => Blocks[position / MlaDims.BlockSize] * MlaDims.BlockSize + position % MlaDims.BlockSize;
}
