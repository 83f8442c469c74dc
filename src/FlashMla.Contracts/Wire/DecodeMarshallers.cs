using System.Buffers;
using FlashMla.Contracts.V1;
using Google.Protobuf;
using Grpc.Core;

namespace FlashMla.Contracts.Wire;

/// <summary>
/// Method definitions of flashmla.v1.Decoder with pooled marshallers, the same wire contract as the
/// generated ones: incoming tensors land in arrays of the given pool (one copy from the HTTP/2 frames),
/// outgoing messages are written straight from the memory their tensors wrap, and an outgoing message's
/// lease is given back as soon as it has been serialized.
/// </summary>
public sealed class DecodeMarshallers
{
    public const string ServiceName = "flashmla.v1.Decoder";

    public DecodeMarshallers(ArrayPool<byte> pool)
    {
        var requests = Marshallers.Create(Serialize, context => ParseRequest(context.PayloadAsReadOnlySequence(), pool));
        var responses = Marshallers.Create(Serialize, context => ParseResponse(context.PayloadAsReadOnlySequence(), pool));
        Decode = new Method<Leased<DecodeRequest>, Leased<DecodeResponse>>(MethodType.DuplexStreaming, ServiceName, "Decode", requests, responses);
        DecodeOnce = new Method<Leased<DecodeRequest>, Leased<DecodeResponse>>(MethodType.Unary, ServiceName, "DecodeOnce", requests, responses);
    }

    public Method<Leased<DecodeRequest>, Leased<DecodeResponse>> Decode { get; }
    public Method<Leased<DecodeRequest>, Leased<DecodeResponse>> DecodeOnce { get; }

    public static Leased<DecodeRequest> ParseRequest(in ReadOnlySequence<byte> payload, ArrayPool<byte> pool) =>
        PooledTensorParser.Parse(payload, pool, DecodeRequest.Parser, DecodeRequest.QFieldNumber, DecodeRequest.KvFieldNumber,
            static (message, q, kv) =>
            {
                if (q is not null) message.Q = q;
                if (kv is not null) message.Kv = kv;
            });

    /// <summary>A request's wire form in pieces, its tensors sent from their own memory (<see cref="TensorMessageWriter"/>).</summary>
    public static TensorMessageWriter LayRequest(DecodeRequest request)
    {
        var rest = request.Clone(); // shares the tensors' bytes (ByteString is immutable): nothing tensor-sized is copied
        rest.Q = null;
        rest.Kv = null;
        return TensorMessageWriter.Create(rest, DecodeRequest.QFieldNumber, request.Q, DecodeRequest.KvFieldNumber, request.Kv);
    }

    /// <summary>A response's wire form in pieces, its tensors sent from their own memory.</summary>
    public static TensorMessageWriter LayResponse(DecodeResponse response)
    {
        var rest = response.Clone();
        rest.Out = null;
        rest.Lse = null;
        return TensorMessageWriter.Create(rest, DecodeResponse.OutFieldNumber, response.Out, DecodeResponse.LseFieldNumber, response.Lse);
    }

    /// <summary>A request lying whole in a buffer the caller owns; its tensors wrap slices of it (no copy).</summary>
    public static DecodeRequest ParseRequestInPlace(ReadOnlyMemory<byte> payload) =>
        PooledTensorParser.ParseInPlace(payload, DecodeRequest.Parser, DecodeRequest.QFieldNumber, DecodeRequest.KvFieldNumber,
            static (message, q, kv) =>
            {
                if (q is not null) message.Q = q;
                if (kv is not null) message.Kv = kv;
            });

    /// <summary>A response lying whole in a buffer the caller owns; its tensors wrap slices of it (no copy).</summary>
    public static DecodeResponse ParseResponseInPlace(ReadOnlyMemory<byte> payload) =>
        PooledTensorParser.ParseInPlace(payload, DecodeResponse.Parser, DecodeResponse.OutFieldNumber, DecodeResponse.LseFieldNumber,
            static (message, output, lse) =>
            {
                if (output is not null) message.Out = output;
                if (lse is not null) message.Lse = lse;
            });

    public static Leased<DecodeResponse> ParseResponse(in ReadOnlySequence<byte> payload, ArrayPool<byte> pool) =>
        PooledTensorParser.Parse(payload, pool, DecodeResponse.Parser, DecodeResponse.OutFieldNumber, DecodeResponse.LseFieldNumber,
            static (message, output, lse) =>
            {
                if (output is not null) message.Out = output;
                if (lse is not null) message.Lse = lse;
            });

    /// <summary>Writes a leased message and gives its lease back (every pooled marshaller's serializer).</summary>
    internal static void Serialize<T>(Leased<T> leased, SerializationContext context) where T : class, IBufferMessage
    {
        try
        {
            context.SetPayloadLength(leased.Message.CalculateSize());
            leased.Message.WriteTo(context.GetBufferWriter());
            context.Complete();
        }
        finally
        {
            leased.Dispose();
        }
    }
}
