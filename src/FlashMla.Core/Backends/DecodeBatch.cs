using FlashMla.Core.Tensors;

namespace FlashMla.Core.Backends;

/// <summary>
/// Everything one backend decode call needs, already validated and resolved to slots by the
/// cache: the layout is FlashMLA's (<c>h_kv = 1</c>).
/// <list type="bullet">
/// <item><c>Q</c> bf16 <c>[b, s_q, h_q, 576]</c>, or, for a batch merged from several requests, <c>QParts</c>:
/// each request's q where it lies, in batch order (a device backend uploads each in place; nobody gathers them)</item>
/// <item><c>NewKv</c> bf16 <c>[b, s_q, 576]</c> or empty; <c>NewKvSlots</c> <c>[b * s_q]</c></item>
/// <item><c>SeqLens</c> <c>[b]</c>: tokens per sequence after the append</item>
/// <item><c>BlockTable</c> <c>[b, BlockTableStride]</c>: block ids in sequence order</item>
/// <item><c>Out</c> bf16 <c>[b, s_q, h_q, 512]</c>; <c>Lse</c> fp32 <c>[b, h_q, s_q]</c></item>
/// </list>
/// Query token <c>i</c> of sequence <c>s</c> attends to positions <c>0 .. SeqLens[s] - s_q + i</c>;
/// positions before 0 are masked (a sequence shorter than s_q has query rows that see nothing:
/// their output is 0 and their lse is -infinity).
/// </summary>
public sealed class DecodeBatch
{
    public required int Layer { get; init; }
    public required int BatchSize { get; init; }
    public required int QueryTokens { get; init; }
    public required int Heads { get; init; }
    public required float SoftmaxScale { get; init; }
    public required ReadOnlyMemory<ushort> Q { get; init; }

    /// <summary>
    /// q as several pieces (whole sequences each, in batch order), when not one <see cref="Q"/>: then <see cref="Q"/>
    /// is empty. The pieces stay valid until the step completes, like <see cref="Q"/>.
    /// </summary>
    public IReadOnlyList<ReadOnlyMemory<ushort>>? QParts { get; init; }

    /// <summary>Elements of q, in one piece or several.</summary>
    public long QLength
    {
        get
        {
            if (QParts is null) return Q.Length;
            long total = 0;
            for (int i = 0; i < QParts.Count; i++) total += QParts[i].Length;
            return total;
        }
    }

    /// <summary>Copies q, in one piece or several, into <paramref name="destination"/> (at least <see cref="QLength"/> long).</summary>
    public void CopyQTo(Span<ushort> destination)
    {
        if (QParts is null)
        {
            Q.Span.CopyTo(destination);
            return;
        }
        foreach (var part in QParts)
        {
            part.Span.CopyTo(destination);
            destination = destination[part.Length..];
        }
    }
    public ReadOnlyMemory<ushort> NewKv { get; init; }
    public ReadOnlyMemory<int> NewKvSlots { get; init; }
    public required ReadOnlyMemory<int> SeqLens { get; init; }
    public required ReadOnlyMemory<int> BlockTable { get; init; }
    public required int BlockTableStride { get; init; }
    public required Memory<ushort> Out { get; init; }
    public required Memory<float> Lse { get; init; }

    /// <summary>Rows of the output: <c>b * s_q * h_q</c>.</summary>
    public int QueryRows => BatchSize * QueryTokens * Heads;

    /// <summary>Checks every length against the shape; a backend calls this before touching memory.</summary>
    public void Validate(KvPoolGeometry geometry)
    {
        Require(Layer >= 0 && Layer < geometry.NumLayers, "layer out of range");
        Require(BatchSize >= 1 && QueryTokens >= 1 && Heads >= 1 && Heads <= MlaDims.MaxHeads, "bad b, s_q or h_q");
        Require(float.IsFinite(SoftmaxScale) && SoftmaxScale > 0, "softmax scale must be finite and positive");
        Require(QParts is null || Q.IsEmpty, "q comes either in one piece or in parts");
        Require(QLength == (long)QueryRows * MlaDims.HeadDimK, "q has the wrong length");
        Require(NewKv.IsEmpty
            ? NewKvSlots.IsEmpty
            : NewKv.Length == BatchSize * QueryTokens * MlaDims.HeadDimK && NewKvSlots.Length == BatchSize * QueryTokens,
            "new kv or its slots have the wrong length");
        Require(SeqLens.Length == BatchSize, "seq lens have the wrong length");
        Require(BlockTableStride >= 1 && BlockTable.Length == BatchSize * BlockTableStride, "block table has the wrong length");
        Require(Out.Length == QueryRows * MlaDims.HeadDimV, "out has the wrong length");
        Require(Lse.Length == QueryRows, "lse has the wrong length");
        var lens = SeqLens.Span;
        for (int i = 0; i < lens.Length; i++)
            Require(lens[i] >= 0 && MlaDims.BlocksFor(lens[i]) <= BlockTableStride, "a sequence is longer than its block table");
    }

    private static void Require(bool condition, string message)
    {
        if (!condition) throw new ArgumentException("DecodeBatch: " + message);
    }
}
