namespace FlashMla.Core.Backends;

/// <summary>
/// The q of a decode batch, bf16 <c>[b, s_q, h_q, 576]</c>, as segments in batch order, each holding whole
/// sequences. A batch of one request is one segment (the request's own bytes); a batch merged from several
/// requests has one segment per request, each where its bytes lie, so nobody gathers them (a device backend
/// uploads each in place, the CPU backend reads each in place). Backends walk the segments: the one-segment
/// form is not a case of its own to them.
/// <para>
/// The list of segments is read while the backend's <c>Submit</c> (or <c>Decode</c>) runs, so its owner may
/// reuse the list once that returns; the memory each segment views stays valid until the step completes.
/// </para>
/// </summary>
public readonly struct QuerySegments
{
    private readonly ReadOnlyMemory<ushort> _whole;
    private readonly IReadOnlyList<ReadOnlyMemory<ushort>>? _segments;

    /// <summary>q in one segment.</summary>
    public QuerySegments(ReadOnlyMemory<ushort> whole)
    {
        _whole = whole;
        _segments = null;
    }

    /// <summary>q in several segments, in batch order.</summary>
    public QuerySegments(IReadOnlyList<ReadOnlyMemory<ushort>> segments)
    {
        ArgumentNullException.ThrowIfNull(segments);
        _whole = default;
        _segments = segments;
    }

    public static implicit operator QuerySegments(ReadOnlyMemory<ushort> whole) => new(whole);
    public static implicit operator QuerySegments(Memory<ushort> whole) => new(whole);
    public static implicit operator QuerySegments(ushort[] whole) => new(whole);

    /// <summary>Segments, at least one.</summary>
    public int Count => _segments?.Count ?? 1;

    public ReadOnlyMemory<ushort> this[int index] => _segments is not null ? _segments[index]
        : index == 0 ? _whole : throw new ArgumentOutOfRangeException(nameof(index), index, "q is one segment");

    /// <summary>Elements of q, all segments together.</summary>
    public long Length
    {
        get
        {
            long total = 0;
            for (int i = 0; i < Count; i++) total += this[i].Length;
            return total;
        }
    }

    /// <summary>Copies every segment, in order, into <paramref name="destination"/> (at least <see cref="Length"/> long).</summary>
    public void CopyTo(Span<ushort> destination)
    {
        for (int i = 0; i < Count; i++)
        {
            var segment = this[i].Span;
            segment.CopyTo(destination);
            destination = destination[segment.Length..];
        }
    }
}
