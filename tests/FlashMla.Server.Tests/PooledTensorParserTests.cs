using System.Buffers;
using FlashMla.Contracts.V1;
using FlashMla.Contracts.Wire;
using FlashMla.Shared;
using Google.Protobuf;

namespace FlashMla.Server.Tests;

/// <summary>
/// The pooled parser of FlashMla.Contracts.Wire against Google.Protobuf's own, on random messages cut into
/// random segments (as HTTP/2 frames arrive), with the wire's odd corners: unpacked shapes, repeated
/// tensor fields, unknown fields, truncation.
/// </summary>
public sealed class PooledTensorParserTests
{
    private static ReadOnlySequence<byte> Cut(byte[] bytes, Random random) => SegmentedSequence.Cut(bytes, () => random.Next(1, 64));

    private static Tensor RandomTensor(Random random)
    {
        var data = new byte[random.Next(0, 300)];
        random.NextBytes(data);
        var tensor = new Tensor { Dtype = (DType)random.Next(0, 3), Data = ByteString.CopyFrom(data) };
        for (int i = random.Next(0, 5); i > 0; i--) tensor.Shape.Add(random.Next(-3, 1 << 20));
        return tensor;
    }

    private static byte[] WithExtras(byte[] message, Random random)
    {
        // Unknown fields (a varint, a fixed32, a fixed64, a length-delimited one) and an unpacked shape entry inside a tensor field.
        var extra = new List<byte>(message);
        extra.AddRange([(11 << 3) | 0, 0x96, 0x01, (12 << 3) | 5, 1, 2, 3, 4, (13 << 3) | 1, 1, 2, 3, 4, 5, 6, 7, 8, (14 << 3) | 2, 2, 0xAA, 0xBB]);
        if (random.Next(2) == 0) extra.AddRange([(6 << 3) | 2, 4, (2 << 3) | 0, 7, (9 << 3) | 0, 1]);
        return [.. extra];
    }

    [Fact]
    public void Random_requests_in_random_segments_parse_as_the_generated_parser_parses_them()
    {
        var random = new Random(42);
        for (int n = 0; n < 300; n++)
        {
            var request = new DecodeRequest { RequestId = (ulong)random.NextInt64(), Layer = (uint)random.Next(), SQ = (uint)random.Next(0, 9), HQ = (uint)random.Next(0, 200), SoftmaxScale = (float)random.NextDouble() };
            for (int i = random.Next(0, 6); i > 0; i--) request.SequenceIds.Add((ulong)random.NextInt64());
            if (random.Next(4) != 0) request.Q = RandomTensor(random);
            if (random.Next(2) != 0) request.Kv = RandomTensor(random);
            var bytes = request.ToByteArray();
            if (random.Next(3) == 0) bytes = WithExtras(bytes, random);
            if (random.Next(4) == 0) bytes = [.. bytes, .. new DecodeRequest { Q = RandomTensor(random), Layer = 3 }.ToByteArray()];

            using var pooled = DecodeMarshallers.ParseRequest(Cut(bytes, random), ArrayPool<byte>.Shared);
            Assert.False(pooled.IsReleased, "a well-formed message fell back to the generated parser");
            var expected = DecodeRequest.Parser.ParseFrom(bytes);
            if (expected.Q is { } q)
            {
                // The pooled parser keeps no unknown fields inside a tensor (nothing reads them).
                var known = new Tensor { Dtype = q.Dtype, Data = q.Data };
                known.Shape.Add(q.Shape);
                expected.Q = known;
            }
            Assert.Equal(expected, pooled.Message);
        }
    }

    [Fact]
    public void Random_responses_in_random_segments_parse_as_the_generated_parser_parses_them()
    {
        var random = new Random(43);
        for (int n = 0; n < 300; n++)
        {
            var response = new DecodeResponse { RequestId = (ulong)random.NextInt64() };
            if (random.Next(3) == 0) response.Error = new Google.Rpc.Status { Code = random.Next(0, 17), Message = "m" + random.Next() };
            if (random.Next(4) != 0) response.Out = RandomTensor(random);
            if (random.Next(4) != 0) response.Lse = RandomTensor(random);
            if (random.Next(2) != 0) response.Timings = new DecodeTimings { ComputeUs = random.NextDouble(), BatchRequests = (uint)random.Next() };
            var bytes = response.ToByteArray();
            using var pooled = DecodeMarshallers.ParseResponse(Cut(bytes, random), ArrayPool<byte>.Shared);
            Assert.False(pooled.IsReleased, "a well-formed message fell back to the generated parser");
            Assert.Equal(DecodeResponse.Parser.ParseFrom(bytes), pooled.Message);
        }
    }

    [Fact]
    public void Malformed_bytes_throw_what_the_generated_parser_throws()
    {
        var random = new Random(44);
        var request = new DecodeRequest { RequestId = 5, Q = RandomTensor(random) };
        request.SequenceIds.Add([1, 2, 3]);
        var bytes = request.ToByteArray();
        for (int cut = 1; cut < bytes.Length; cut++)
        {
            var truncated = bytes[..cut];
            Exception? expected = Record.Exception(() => DecodeRequest.Parser.ParseFrom(truncated));
            Exception? actual = Record.Exception(() => DecodeMarshallers.ParseRequest(Cut(truncated, random), ArrayPool<byte>.Shared).Dispose());
            Assert.Equal(expected?.GetType(), actual?.GetType());
            Assert.Equal(expected?.Message, actual?.Message);
        }
    }
}
