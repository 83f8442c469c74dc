using System.Buffers;
using System.Buffers.Binary;
using FlashMla.Contracts.V1;
using Google.Protobuf;

namespace FlashMla.Contracts.Wire;

/// <summary>
/// The wire form of a message whose large bytes live in two <see cref="Tensor"/> fields, as a gRPC
/// length-prefixed message in pieces: small envelope pieces (the 5-byte gRPC prefix, the other fields, each
/// tensor's dtype and shape) written into one pooled array, and the tensors' data as the very memory the
/// message wraps. A socket can then send the data without anyone copying it; the counterpart of
/// <see cref="PooledTensorParser"/>. The pieces parse to the same message as <c>WriteTo</c>'s bytes (fields
/// in another order, which protobuf allows).
/// </summary>
public sealed class TensorMessageWriter : IDisposable
{
    /// <summary>gRPC's message prefix: a compressed flag and a big-endian length.</summary>
    public const int GrpcPrefixSize = 5;

    private const int TensorDataTag = (Tensor.DataFieldNumber << 3) | 2;

    private byte[] _envelope;
    private readonly ReadOnlyMemory<byte>[] _pieces = new ReadOnlyMemory<byte>[4];

    private TensorMessageWriter(byte[] envelope) => _envelope = envelope;

    /// <summary>The message's bytes, prefix included, in order.</summary>
    public ReadOnlySpan<ReadOnlyMemory<byte>> Pieces => _pieces.AsSpan(0, PieceCount);

    public int PieceCount { get; private set; }

    /// <summary>Bytes of all pieces together (the gRPC prefix's 5 included).</summary>
    public long Length { get; private set; }

    /// <summary>
    /// Lays out <paramref name="message"/> with tensors <paramref name="a"/> and <paramref name="b"/> (fields
    /// <paramref name="fieldA"/> and <paramref name="fieldB"/>; either may be null) taken out of it:
    /// <paramref name="withoutTensors"/> is the message with those two fields cleared.
    /// </summary>
    public static TensorMessageWriter Create(IMessage withoutTensors, int fieldA, Tensor? a, int fieldB, Tensor? b)
    {
        int headSize = withoutTensors.CalculateSize();
        var headA = TensorHead(a);
        var headB = TensorHead(b);
        int envelopeSize = GrpcPrefixSize + headSize + EnvelopeSize(fieldA, a, headA) + EnvelopeSize(fieldB, b, headB);
        var writer = new TensorMessageWriter(ArrayPool<byte>.Shared.Rent(envelopeSize));
        var envelope = writer._envelope.AsSpan();

        int pos = GrpcPrefixSize;
        withoutTensors.WriteTo(envelope.Slice(pos, headSize));
        pos += headSize;
        int start = 0;
        long total = 0;
        pos = WriteTensorHead(envelope, pos, fieldA, a, headA);
        if (a is not null && !a.Data.IsEmpty)
        {
            writer.Add(writer._envelope.AsMemory(start, pos - start), ref total);
            writer.Add(a.Data.Memory, ref total);
            start = pos;
        }
        pos = WriteTensorHead(envelope, pos, fieldB, b, headB);
        writer.Add(writer._envelope.AsMemory(start, pos - start), ref total);
        if (b is not null && !b.Data.IsEmpty) writer.Add(b.Data.Memory, ref total);

        long body = total - GrpcPrefixSize;
        if (body > uint.MaxValue) throw new InvalidOperationException($"a message of {body} bytes does not fit gRPC's length prefix");
        envelope[0] = 0; // not compressed
        BinaryPrimitives.WriteUInt32BigEndian(envelope[1..], (uint)body);
        writer.Length = total;
        return writer;
    }

    /// <summary>Copies every piece into <paramref name="destination"/> (tests, and callers that want one buffer).</summary>
    public void CopyTo(Span<byte> destination)
    {
        foreach (var piece in Pieces)
        {
            piece.Span.CopyTo(destination);
            destination = destination[piece.Length..];
        }
    }

    private void Add(ReadOnlyMemory<byte> piece, ref long total)
    {
        if (piece.IsEmpty) return;
        _pieces[PieceCount++] = piece;
        total += piece.Length;
    }

    /// <summary>The tensor without its data: dtype and shape, serialized by the generated code.</summary>
    private static Tensor? TensorHead(Tensor? tensor)
    {
        if (tensor is null) return null;
        var head = new Tensor { Dtype = tensor.Dtype };
        head.Shape.Add(tensor.Shape);
        return head;
    }

    private static int EnvelopeSize(int field, Tensor? tensor, Tensor? head)
    {
        if (tensor is null) return 0;
        int dataLength = tensor.Data.Length;
        long inner = InnerSize(tensor, head!);
        return CodedOutputStream.ComputeTagSize(field) + CodedOutputStream.ComputeLengthSize((int)Math.Min(inner, int.MaxValue))
            + head!.CalculateSize() + (dataLength == 0 ? 0 : 1 + CodedOutputStream.ComputeLengthSize(dataLength));
    }

    private static long InnerSize(Tensor tensor, Tensor head)
    {
        int dataLength = tensor.Data.Length;
        long size = head.CalculateSize();
        if (dataLength > 0) size += 1 + CodedOutputStream.ComputeLengthSize(dataLength) + (long)dataLength;
        if (size > int.MaxValue) throw new InvalidOperationException($"a tensor of {size} bytes does not fit a protobuf field");
        return size;
    }

    private static int WriteTensorHead(Span<byte> envelope, int pos, int field, Tensor? tensor, Tensor? head)
    {
        if (tensor is null) return pos;
        pos += WriteVarint(envelope[pos..], (uint)((field << 3) | 2));
        pos += WriteVarint(envelope[pos..], (uint)InnerSize(tensor, head!));
        int headSize = head!.CalculateSize();
        head.WriteTo(envelope.Slice(pos, headSize));
        pos += headSize;
        if (tensor.Data.Length > 0)
        {
            envelope[pos++] = TensorDataTag;
            pos += WriteVarint(envelope[pos..], (uint)tensor.Data.Length);
        }
        return pos;
    }

    private static int WriteVarint(Span<byte> destination, uint value)
    {
        int n = 0;
        while (value >= 0x80)
        {
            destination[n++] = (byte)(value | 0x80);
            value >>= 7;
        }
        destination[n++] = (byte)value;
        return n;
    }

    /// <summary>Gives the envelope array back; the pieces are invalid from then on.</summary>
    public void Dispose()
    {
        var envelope = Interlocked.Exchange(ref _envelope, []);
        if (envelope.Length > 0) ArrayPool<byte>.Shared.Return(envelope);
        PieceCount = 0;
    }
}
