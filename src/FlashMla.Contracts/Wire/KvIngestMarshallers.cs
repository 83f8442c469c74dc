using System.Buffers;
using FlashMla.Contracts.V1;
using Google.Protobuf;
using Grpc.Core;

namespace FlashMla.Contracts.Wire;

/// <summary>
/// flashmla.v1.KvCache/AppendKv with a pooled request marshaller, the same wire contract as the generated one:
/// each chunk's rows land in an array of the given pool (one copy from the HTTP/2 frames, no large array per
/// chunk), or, on the data plane, are parsed in place in the array the message was received into.
/// </summary>
public static class KvIngestMarshallers
{
    public const string ServiceName = "flashmla.v1.KvCache";
    public const string AppendKvPath = "/" + ServiceName + "/AppendKv";

    /// <summary>AppendKv over pooled chunks; the response is the generated message.</summary>
    public static Method<Leased<AppendKvChunk>, AppendKvResponse> AppendKv(ArrayPool<byte> pool) => new(
        MethodType.ClientStreaming, ServiceName, "AppendKv",
        Marshallers.Create<Leased<AppendKvChunk>>(DecodeMarshallers.Serialize, context => ParseChunk(context.PayloadAsReadOnlySequence(), pool)),
        Marshallers.Create(static (AppendKvResponse response) => response.ToByteArray(), AppendKvResponse.Parser.ParseFrom));

    /// <summary>A chunk, its rows copied once into an array of <paramref name="pool"/> (the lease returns it).</summary>
    public static Leased<AppendKvChunk> ParseChunk(in ReadOnlySequence<byte> payload, ArrayPool<byte> pool) =>
        // One tensor field: it is named as both of the parser's, which then fills only the first.
        PooledTensorParser.Parse(payload, pool, AppendKvChunk.Parser, AppendKvChunk.KvFieldNumber, AppendKvChunk.KvFieldNumber, AssignKv);

    /// <summary>A chunk lying whole in a buffer the caller owns; its rows wrap a slice of it (no copy).</summary>
    public static AppendKvChunk ParseChunkInPlace(ReadOnlyMemory<byte> payload) =>
        PooledTensorParser.ParseInPlace(payload, AppendKvChunk.Parser, AppendKvChunk.KvFieldNumber, AppendKvChunk.KvFieldNumber, AssignKv);

    /// <summary>A chunk's wire form in pieces, its rows sent from their own memory.</summary>
    public static TensorMessageWriter LayChunk(AppendKvChunk chunk)
    {
        var rest = chunk.Clone(); // shares the rows' bytes (ByteString is immutable)
        rest.Kv = null;
        return TensorMessageWriter.Create(rest, AppendKvChunk.KvFieldNumber, chunk.Kv, AppendKvChunk.KvFieldNumber, null);
    }

    private static void AssignKv(AppendKvChunk message, Tensor? kv, Tensor? unused)
    {
        if (kv is not null) message.Kv = kv;
    }
}
