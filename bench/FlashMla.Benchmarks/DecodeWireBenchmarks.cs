using System.Buffers;
using BenchmarkDotNet.Attributes;
using FlashMla.Contracts.V1;
using FlashMla.Contracts.Wire;
using FlashMla.Shared;
using Google.Protobuf;

namespace FlashMla.Benchmarks;

/// <summary>
/// Parsing and writing one DecodeRequest / DecodeResponse as the server and the client see them: the
/// payload as Kestrel hands it over (a sequence of 4 KiB segments), b = 128, h_q 16 and 128.
/// Generated = Google.Protobuf's parser (copies each tensor into a new array);
/// Pooled = <see cref="DecodeMarshallers"/> (copies it into a pooled array, given back after).
/// </summary>
[MemoryDiagnoser, MinColumn]
public class DecodeWireBenchmarks
{
    private ReadOnlySequence<byte> _request, _response;
    private DecodeResponse _outgoing = null!;
    private readonly ArrayBufferWriter<byte> _writer = new();
    private readonly ArrayPool<byte> _pool = ArrayPool<byte>.Create(1 << 30, 16);

    [Params(16, 128)]
    public int Heads { get; set; }

    public const int Batch = 128;

    [GlobalSetup]
    public void Setup()
    {
        var random = new Random(1);
        var q = new byte[Batch * Heads * 576 * 2];
        random.NextBytes(q);
        var request = new DecodeRequest { RequestId = 1, Layer = 3, SQ = 1, HQ = (uint)Heads, Q = new Tensor { Dtype = DType.Bf16, Data = ByteString.CopyFrom(q) } };
        request.Q.Shape.Add([Batch, 1, Heads, 576]);
        for (ulong i = 0; i < Batch; i++) request.SequenceIds.Add(1000 + i);
        _request = Segmented(request.ToByteArray());

        var output = new byte[Batch * Heads * 512 * 2];
        random.NextBytes(output);
        var lse = new byte[Batch * Heads * 4];
        random.NextBytes(lse);
        _outgoing = new DecodeResponse
        {
            RequestId = 1,
            Out = new Tensor { Dtype = DType.Bf16, Data = UnsafeByteOperations.UnsafeWrap(output) },
            Lse = new Tensor { Dtype = DType.Fp32, Data = UnsafeByteOperations.UnsafeWrap(lse) },
            Timings = new DecodeTimings { ComputeUs = 300, BatchRequests = 1, BatchSequences = Batch },
        };
        _outgoing.Out.Shape.Add([Batch, 1, Heads, 512]);
        _outgoing.Lse.Shape.Add([Batch, Heads, 1]);
        _response = Segmented(_outgoing.ToByteArray());
    }

    [Benchmark(Baseline = true)]
    public int ParseRequestGenerated() => DecodeRequest.Parser.ParseFrom(_request).Q.Data.Length;

    [Benchmark]
    public int ParseRequestPooled()
    {
        using var parsed = DecodeMarshallers.ParseRequest(_request, _pool);
        return parsed.Message.Q.Data.Length;
    }

    [Benchmark]
    public int ParseResponseGenerated() => DecodeResponse.Parser.ParseFrom(_response).Out.Data.Length;

    [Benchmark]
    public int ParseResponsePooled()
    {
        using var parsed = DecodeMarshallers.ParseResponse(_response, _pool);
        return parsed.Message.Out.Data.Length;
    }

    /// <summary>Writing a response that wraps its buffers (UnsafeWrap): one copy into the writer, nothing allocated.</summary>
    [Benchmark]
    public int WriteResponseWrapped()
    {
        _writer.ResetWrittenCount();
        _outgoing.WriteTo(_writer);
        return _writer.WrittenCount;
    }

    private static ReadOnlySequence<byte> Segmented(byte[] bytes, int segment = 4096) => SegmentedSequence.Cut(bytes, () => segment);
}
