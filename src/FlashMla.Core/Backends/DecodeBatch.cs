using FlashMla.Core.Tensors;

namespace FlashMla.Core.Backends;

/// <summary>
/// Everything one backend decode call needs, already validated and resolved to slots by the
/// cache: the layout is FlashMLA's (<c>h_kv = 1</c>).
/// <list type="bullet">
/// <item><c>Q</c> bf16 <c>[b, s_q, h_q, 576]</c> in segments of whole sequences (<see cref="QuerySegments"/>)</item>
/// <item><c>NewKv</c> bf16 <c>[b, s_q, 576]</c> or empty; <c>NewKvSlots</c> <c>[b * s_q]</c></item>
/// <item><c>SeqLens</c> <c>[b]</c>: tokens per sequence after the append</item>
/// <item><c>BlockTable</c> <c>[b, BlockTableStride]</c>: block ids in sequence order</item>
/// <item><c>Out</c> bf16 <c>[b, s_q, h_q, 512]</c>; <c>Lse</c> fp32 <c>[b, h_q, s_q]</c></item>
/// </list>
/// Query token <c>i</c> of sequence <c>s</c> attends to positions <c>0 .. SeqLens[s] - s_q + i</c>;
/// positions before 0 are masked (a sequence shorter than s_q has query rows that see nothing:
/// their output is 0 and their lse is -infinity). The scheduler never sends such rows (it refuses a step
/// without new rows over a layer shorter than s_q); backends still define them, and their tests pin it.
/// </summary>
public sealed class DecodeBatch
{
    public required int Layer { get; init; }
    public required int BatchSize { get; init; }
    public required int QueryTokens { get; init; }
    public required int Heads { get; init; }
    public required float SoftmaxScale { get; init; }
    public required QuerySegments Q { get; init; }
    public ReadOnlyMemory<ushort> NewKv { get; init; }
    public ReadOnlyMemory<int> NewKvSlots { get; init; }
    public required ReadOnlyMemory<int> SeqLens { get; init; }
    public required ReadOnlyMemory<int> BlockTable { get; init; }
    public required int BlockTableStride { get; init; }
    public required Memory<ushort> Out { get; init; }
    public required Memory<float> Lse { get; init; }

    /// <summary>Rows of the output: <c>b * s_q * h_q</c>.</summary>
    public int QueryRows => BatchSize * QueryTokens * Heads;

    /// <summary>Elements of q per sequence: <c>s_q * h_q * 576</c>.</summary>
    public int QueryElementsPerSequence => QueryTokens * Heads * MlaDims.HeadDimK;

    /// <summary>
    /// Asserts the batch against its own shape and against the pools it will touch. This is not input
    /// validation: requests are validated once, at the edge (<c>DecodeShape</c>, the host's tensor checks), and
    /// the scheduler builds batches from them and from the cache, so a batch that fails here is a bug, and its
    /// <see cref="ArgumentException"/> surfaces as an internal error. Backends still run it before they touch
    /// memory, because a wrong length or index would corrupt a pool or fault the device; it costs
    /// O(b + blocks used).
    /// </summary>
    public void CheckInvariants(KvPoolGeometry geometry)
    {
        Require((uint)Layer < (uint)geometry.NumLayers, "layer out of range");
        Require(BatchSize >= 1 && QueryTokens >= 1 && Heads >= 1 && Heads <= MlaDims.MaxHeads, "bad b, s_q or h_q");
        Require(float.IsFinite(SoftmaxScale) && SoftmaxScale > 0, "softmax scale must be finite and positive");
        long perSequence = QueryElementsPerSequence;
        for (int i = 0; i < Q.Count; i++)
            Require(!Q[i].IsEmpty && Q[i].Length % perSequence == 0, "a q segment does not hold whole sequences");
        Require(Q.Length == (long)QueryRows * MlaDims.HeadDimK, "q has the wrong length");
        Require(NewKv.IsEmpty
            ? NewKvSlots.IsEmpty
            : NewKv.Length == BatchSize * QueryTokens * MlaDims.HeadDimK && NewKvSlots.Length == BatchSize * QueryTokens,
            "new kv or its slots have the wrong length");
        Require(SeqLens.Length == BatchSize, "seq lens have the wrong length");
        Require(BlockTableStride >= 1 && BlockTable.Length == BatchSize * BlockTableStride, "block table has the wrong length");
        Require(Out.Length == QueryRows * MlaDims.HeadDimV, "out has the wrong length");
        Require(Lse.Length == QueryRows, "lse has the wrong length");

        var lens = SeqLens.Span;
        var table = BlockTable.Span;
        for (int s = 0; s < lens.Length; s++)
        {
            if (lens[s] < 0 || MlaDims.BlocksFor(lens[s]) > BlockTableStride) throw Broken($"sequence {s} is longer than its block table");
            var used = table.Slice(s * BlockTableStride, MlaDims.BlocksFor(lens[s]));
            for (int b = 0; b < used.Length; b++)
                if ((uint)used[b] >= (uint)geometry.NumBlocks)
                    throw Broken($"sequence {s} block {b} is {used[b]}, outside the pool of {geometry.NumBlocks} blocks");
        }
        var slots = NewKvSlots.Span;
        for (int n = 0; n < slots.Length; n++)
            if ((ulong)slots[n] >= (ulong)geometry.TotalSlots)
                throw Broken($"slot {slots[n]} of new row {n} is outside the pool of {geometry.TotalSlots} slots");
    }

    private static void Require(bool condition, string message)
    {
        if (!condition) throw Broken(message);
    }

    private static ArgumentException Broken(string message) => new("DecodeBatch: " + message);
}
