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
        var envelopeA = new TensorEnvelope(fieldA, a);
        var envelopeB = new TensorEnvelope(fieldB, b);
        var writer = new TensorMessageWriter(ArrayPool<byte>.Shared.Rent(GrpcPrefixSize + headSize + envelopeA.Size + envelopeB.Size));
        var envelope = writer._envelope.AsSpan();

        int pos = GrpcPrefixSize;
        withoutTensors.WriteTo(envelope.Slice(pos, headSize));
        pos += headSize;
        int start = 0;
        long total = 0;
        pos = envelopeA.Write(envelope, pos);
        if (envelopeA.DataLength > 0)
        {
            writer.Add(writer._envelope.AsMemory(start, pos - start), ref total);
            writer.Add(a!.Data.Memory, ref total);
            start = pos;
        }
        pos = envelopeB.Write(envelope, pos);
        writer.Add(writer._envelope.AsMemory(start, pos - start), ref total);
        if (envelopeB.DataLength > 0) writer.Add(b!.Data.Memory, ref total);

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

    /// <summary>
    /// What a tensor field puts before its data: tag, length, the tensor's dtype and shape (the generated code's
    /// bytes), and the data field's tag and length. Sizes are computed once; nothing for a null tensor.
    /// </summary>
    private readonly struct TensorEnvelope
    {
        private readonly int _field;
        private readonly Tensor? _head; // the tensor without its data
        private readonly int _headSize;
        private readonly int _innerSize; // the tensor message's length, data included

        public TensorEnvelope(int field, Tensor? tensor)
        {
            _field = field;
            if (tensor is null) return;
            _head = new Tensor { Dtype = tensor.Dtype };
            _head.Shape.Add(tensor.Shape);
            _headSize = _head.CalculateSize();
            DataLength = tensor.Data.Length;
            long inner = _headSize + (DataLength == 0 ? 0 : 1L + CodedOutputStream.ComputeLengthSize(DataLength) + DataLength);
            if (inner > int.MaxValue) throw new InvalidOperationException($"a tensor of {inner} bytes does not fit a protobuf field");
            _innerSize = (int)inner;
            Size = CodedOutputStream.ComputeTagSize(field) + CodedOutputStream.ComputeLengthSize(_innerSize) + _headSize
                + (DataLength == 0 ? 0 : 1 + CodedOutputStream.ComputeLengthSize(DataLength));
        }

        /// <summary>Bytes of the envelope (the data not included).</summary>
        public int Size { get; }

        public int DataLength { get; }

        /// <summary>Writes the envelope at <paramref name="pos"/>; returns the position after it.</summary>
        public int Write(Span<byte> destination, int pos)
        {
            if (_head is null) return pos;
            pos += WriteVarint(destination[pos..], (uint)((_field << 3) | 2));
            pos += WriteVarint(destination[pos..], (uint)_innerSize);
            _head.WriteTo(destination.Slice(pos, _headSize));
            pos += _headSize;
            if (DataLength > 0)
            {
                destination[pos++] = TensorDataTag;
                pos += WriteVarint(destination[pos..], (uint)DataLength);
            }
            return pos;
        }
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
