using System.Buffers.Binary;
using System.Runtime.InteropServices;
using FlashMla.Contracts.V1;
using FlashMla.Contracts.Wire;
using Google.Protobuf;

namespace FlashMla.Server.Tests;

/// <summary>The wire form in pieces (<see cref="TensorMessageWriter"/>) and the in-place parse are the generated code's contract.</summary>
public sealed class TensorMessageWriterTests
{
    private static Tensor? RandomTensor(Random random, int bytes, DType dtype, params long[] shape)
    {
        if (bytes < 0) return null;
        var data = new byte[bytes];
        random.NextBytes(data);
        var tensor = new Tensor { Dtype = dtype, Data = ByteString.CopyFrom(data) };
        tensor.Shape.Add(shape);
        return tensor;
    }

    public static TheoryData<int, int> Sizes => new()
    {
        { 0, 0 }, { -1, -1 }, { 1, -1 }, { -1, 7 }, { 127, 128 }, { 16_384, 300 }, { 2_097_152, 65_536 }, { 5, 0 },
    };

    [Theory]
    [MemberData(nameof(Sizes))]
    public void Pieces_parse_to_the_same_response_and_the_in_place_parse_wraps_the_buffer(int outBytes, int lseBytes)
    {
        var random = new Random(outBytes ^ lseBytes);
        var response = new DecodeResponse
        {
            RequestId = (ulong)random.NextInt64(),
            Out = RandomTensor(random, outBytes, DType.Bf16, 2, 1, 3, 512),
            Lse = RandomTensor(random, lseBytes, DType.Fp32, 2, 3, 1),
            Timings = new DecodeTimings { ComputeUs = 17, BatchSequences = 3 },
        };
        var output = response.Out;
        var lse = response.Lse;
        var rest = response.Clone();
        rest.Out = null;
        rest.Lse = null;
        using var wire = TensorMessageWriter.Create(rest, DecodeResponse.OutFieldNumber, output, DecodeResponse.LseFieldNumber, lse);
        Assert.InRange(wire.PieceCount, 1, 4);
        var bytes = new byte[wire.Length];
        wire.CopyTo(bytes);
        Assert.Equal(0, bytes[0]);
        Assert.Equal((uint)(bytes.Length - 5), BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(1)));
        var body = bytes.AsMemory(5);
        Assert.Equal(response, DecodeResponse.Parser.ParseFrom(body.Span));
        Assert.Equal(response.CalculateSize(), body.Length);

        var inPlace = DecodeMarshallers.ParseResponseInPlace(body);
        Assert.Equal(response, inPlace);
        if (outBytes > 0)
        {
            Assert.True(MemoryMarshal.TryGetArray(inPlace.Out.Data.Memory, out var segment));
            Assert.Same(bytes, segment.Array); // wrapped, not copied
        }
        // The tensors' data pieces are the message's own memory: sent without a copy.
        if (outBytes > 0) Assert.Contains(wire.Pieces.ToArray(), p => p.Equals(output!.Data.Memory));
    }

    [Fact]
    public void A_malformed_in_place_body_throws_as_the_generated_parser_does()
    {
        var request = new DecodeRequest { RequestId = 5, Q = RandomTensor(new Random(1), 1000, DType.Bf16, 1, 1, 1, 500) };
        var bytes = request.ToByteArray();
        Assert.Throws<InvalidProtocolBufferException>(() => DecodeMarshallers.ParseRequestInPlace(bytes.AsMemory(0, bytes.Length - 3)));
        Assert.Equal(request, DecodeMarshallers.ParseRequestInPlace(bytes));
    }
}
