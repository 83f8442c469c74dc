using System.Buffers;
using Google.Protobuf;
using FlashMla.Contracts.V1;

namespace FlashMla.Contracts.Wire;

/// <summary>
/// Parses a message whose large <c>bytes</c> live in <see cref="Tensor"/> fields, copying each tensor's
/// bytes once from the received frames into a pooled array (the generated parser copies them into a fresh
/// array per message, which for megabyte tensors means large-object-heap allocations every step).
/// The message's other fields are handed, as their original bytes, to the generated parser, so their
/// meaning (and a repeated or unknown field's) is exactly the generated code's; inside a tensor, unknown
/// fields are skipped rather than kept (nothing reads them back). Anything this reader does
/// not recognize as well-formed falls back to the generated parser, whose result or exception is then the
/// answer: the wire contract and its error behaviour stay those of Google.Protobuf.
/// </summary>
public static class PooledTensorParser
{
    private const int WireVarint = 0, WireFixed64 = 1, WireLengthDelimited = 2, WireStartGroup = 3, WireEndGroup = 4, WireFixed32 = 5;
    private const uint TensorDtypeTag = (1 << 3) | WireVarint;
    private const uint TensorShapeTag = (2 << 3) | WireVarint;
    private const uint TensorShapePackedTag = (2 << 3) | WireLengthDelimited;
    private const uint TensorDataTag = (3 << 3) | WireLengthDelimited;

    /// <summary>
    /// Parses <paramref name="payload"/> as <typeparamref name="T"/>, tensors of fields
    /// <paramref name="tensorFieldA"/> and <paramref name="tensorFieldB"/> pooled; <paramref name="assign"/>
    /// sets those fields on the message built from the rest.
    /// </summary>
    public static Leased<T> Parse<T>(in ReadOnlySequence<byte> payload, ArrayPool<byte> pool, MessageParser<T> parser,
        int tensorFieldA, int tensorFieldB, Action<T, Tensor?, Tensor?> assign) where T : class, IMessage<T>
    {
        var arrays = new PooledArrays(pool);
        byte[] rest = ArrayPool<byte>.Shared.Rent(256);
        try
        {
            if (TryWalk(payload, arrays, (uint)(tensorFieldA << 3) | WireLengthDelimited, (uint)(tensorFieldB << 3) | WireLengthDelimited,
                    ref rest, out int restLength, out var a, out var b))
            {
                var message = parser.ParseFrom(rest.AsSpan(0, restLength));
                assign(message, a, b);
                return new Leased<T>(message, arrays);
            }
        }
        catch (InvalidProtocolBufferException)
        {
            // Fall through: the generated parser gives the canonical answer.
        }
        catch
        {
            arrays.Dispose(); // the pool refused a rent (a budget), or worse: nothing rented so far stays out
            throw;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(rest);
        }
        arrays.Dispose();
        return new Leased<T>(parser.ParseFrom(payload));
    }

    /// <summary>
    /// Parses a message that already lies whole in one buffer the caller owns (the data-plane listener receives
    /// each message straight into a pooled, page-locked array): tensor bytes are not copied, the tensors wrap
    /// slices of <paramref name="payload"/>, so the buffer must outlive the message.
    /// </summary>
    public static T ParseInPlace<T>(ReadOnlyMemory<byte> payload, MessageParser<T> parser, int tensorFieldA, int tensorFieldB,
        Action<T, Tensor?, Tensor?> assign) where T : class, IMessage<T>
    {
        var sequence = new ReadOnlySequence<byte>(payload);
        byte[] rest = ArrayPool<byte>.Shared.Rent(256);
        try
        {
            if (TryWalk(sequence, arrays: null, (uint)(tensorFieldA << 3) | WireLengthDelimited, (uint)(tensorFieldB << 3) | WireLengthDelimited,
                    ref rest, out int restLength, out var a, out var b))
            {
                var message = parser.ParseFrom(rest.AsSpan(0, restLength));
                assign(message, a, b);
                return message;
            }
        }
        catch (InvalidProtocolBufferException)
        {
            // Fall through: the generated parser gives the canonical answer.
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(rest);
        }
        return parser.ParseFrom(sequence);
    }

    private static bool TryWalk(in ReadOnlySequence<byte> payload, PooledArrays? arrays, uint tagA, uint tagB, ref byte[] rest,
        out int restLength, out Tensor? a, out Tensor? b)
    {
        a = b = null;
        restLength = 0;
        var reader = new SequenceReader<byte>(payload);
        while (!reader.End)
        {
            long start = reader.Consumed;
            if (!TryReadVarint(ref reader, out ulong tag) || tag == 0 || tag > uint.MaxValue) return false;
            if (tag == tagA || tag == tagB)
            {
                if (!TryReadLength(ref reader, out int length)) return false;
                ref Tensor? target = ref tag == tagA ? ref a : ref b;
                target ??= new Tensor();
                if (!TryParseTensor(payload.Slice(reader.Position, length), target, arrays)) return false;
                reader.Advance(length);
                continue;
            }
            if (!TrySkip(ref reader, (uint)tag, depth: 0)) return false;
            int fieldLength = checked((int)(reader.Consumed - start));
            if (restLength + fieldLength > rest.Length)
            {
                var bigger = ArrayPool<byte>.Shared.Rent(Math.Max(rest.Length * 2, restLength + fieldLength));
                rest.AsSpan(0, restLength).CopyTo(bigger);
                ArrayPool<byte>.Shared.Return(rest);
                rest = bigger;
            }
            payload.Slice(start, fieldLength).CopyTo(rest.AsSpan(restLength));
            restLength += fieldLength;
        }
        return true;
    }

    /// <summary>Merges one occurrence of a Tensor field into <paramref name="tensor"/>, as the generated parser would.</summary>
    private static bool TryParseTensor(ReadOnlySequence<byte> bytes, Tensor tensor, PooledArrays? arrays)
    {
        var reader = new SequenceReader<byte>(bytes);
        while (!reader.End)
        {
            if (!TryReadVarint(ref reader, out ulong tag) || tag == 0 || tag > uint.MaxValue) return false;
            switch ((uint)tag)
            {
                case TensorDtypeTag:
                    if (!TryReadVarint(ref reader, out ulong dtype)) return false;
                    tensor.Dtype = (DType)(int)dtype;
                    break;
                case TensorShapeTag:
                    if (!TryReadVarint(ref reader, out ulong extent)) return false;
                    tensor.Shape.Add((long)extent);
                    break;
                case TensorShapePackedTag:
                {
                    if (!TryReadLength(ref reader, out int length)) return false;
                    long end = reader.Consumed + length;
                    while (reader.Consumed < end)
                    {
                        if (!TryReadVarint(ref reader, out ulong packed)) return false;
                        tensor.Shape.Add((long)packed);
                    }
                    if (reader.Consumed != end) return false;
                    break;
                }
                case TensorDataTag:
                {
                    if (!TryReadLength(ref reader, out int length)) return false;
                    if (length == 0)
                    {
                        tensor.Data = ByteString.Empty;
                        break;
                    }
                    var data = reader.Sequence.Slice(reader.Position, length);
                    if (arrays is null && data.IsSingleSegment)
                    {
                        // In place: the caller's buffer holds the whole message and outlives it.
                        tensor.Data = UnsafeByteOperations.UnsafeWrap(data.First);
                    }
                    else
                    {
                        if (arrays is null) return false;
                        var array = arrays.Rent(length);
                        data.CopyTo(array);
                        tensor.Data = UnsafeByteOperations.UnsafeWrap(array.AsMemory(0, length));
                    }
                    reader.Advance(length);
                    break;
                }
                default:
                    if (!TrySkip(ref reader, (uint)tag, depth: 0)) return false;
                    break;
            }
        }
        return true;
    }

    private static bool TrySkip(ref SequenceReader<byte> reader, uint tag, int depth)
    {
        switch ((int)(tag & 7))
        {
            case WireVarint:
                return TryReadVarint(ref reader, out _);
            case WireFixed64:
                return reader.TryAdvance(8);
            case WireFixed32:
                return reader.TryAdvance(4);
            case WireLengthDelimited:
                return TryReadLength(ref reader, out int length) && reader.TryAdvance(length);
            case WireStartGroup:
                if (depth > 64) return false;
                while (true)
                {
                    if (!TryReadVarint(ref reader, out ulong inner) || inner == 0 || inner > uint.MaxValue) return false;
                    if ((inner & 7) == WireEndGroup) return (inner >> 3) == (tag >> 3);
                    if (!TrySkip(ref reader, (uint)inner, depth + 1)) return false;
                }
            default:
                return false;
        }
    }

    private static bool TryReadLength(ref SequenceReader<byte> reader, out int length)
    {
        length = 0;
        if (!TryReadVarint(ref reader, out ulong value) || value > int.MaxValue || (long)value > reader.Remaining) return false;
        length = (int)value;
        return true;
    }

    private static bool TryReadVarint(ref SequenceReader<byte> reader, out ulong value)
    {
        value = 0;
        for (int shift = 0; shift < 70; shift += 7)
        {
            if (!reader.TryRead(out byte next)) return false;
            value |= (ulong)(next & 0x7F) << shift;
            if (next < 0x80) return true;
        }
        return false;
    }
}

file static class SequenceReaderExtensions
{
    public static bool TryAdvance(ref this SequenceReader<byte> reader, long count)
    {
        if (count < 0 || count > reader.Remaining) return false;
        reader.Advance(count);
        return true;
    }
}
