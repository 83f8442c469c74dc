using System.Buffers;

namespace FlashMla.Shared;

/// <summary>
/// Byte arrays as multi-segment <see cref="ReadOnlySequence{T}"/>s, the way gRPC hands a message over after
/// HTTP/2 framing. Linked into the tests and the benchmarks, which both feed the wire parser such input.
/// </summary>
internal static class SegmentedSequence
{
    /// <summary>
    /// <paramref name="bytes"/> cut into consecutive segments; <paramref name="nextLength"/> proposes each
    /// segment's length (clipped to what is left). An empty array gives an empty sequence.
    /// </summary>
    public static ReadOnlySequence<byte> Cut(byte[] bytes, Func<int> nextLength)
    {
        Segment? first = null, last = null;
        for (int start = 0; start < bytes.Length;)
        {
            int length = Math.Min(bytes.Length - start, nextLength());
            var memory = bytes.AsMemory(start, length);
            if (first is null) first = last = new Segment(memory, 0);
            else last = last!.Append(memory);
            start += length;
        }
        return first is null ? ReadOnlySequence<byte>.Empty : new ReadOnlySequence<byte>(first, 0, last!, last!.Memory.Length);
    }

    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        public Segment(ReadOnlyMemory<byte> memory, long runningIndex)
        {
            Memory = memory;
            RunningIndex = runningIndex;
        }

        public Segment Append(ReadOnlyMemory<byte> memory)
        {
            var next = new Segment(memory, RunningIndex + Memory.Length);
            Next = next;
            return next;
        }
    }
}
