using System.Buffers.Binary;
using FlashMla.Contracts.V1;
using Google.Protobuf;

namespace FlashMla.Http2.Tests;

/// <summary>
/// A scripted flashmla.v1.Decoder server on one connection: every request message on every stream is answered with
/// the response <see cref="Respond"/> makes, its gRPC body (prefix + message) cut into DATA frames as
/// <see cref="Cut"/> says (frames that split a prefix, or that carry the end of one message and the start of the
/// next, are the test's choice); a stream whose request side ends gets its trailers (grpc-status 0).
/// </summary>
internal sealed class ScriptedDecodeServer(ScriptedConnection connection)
{
    /// <summary>The response to a request; null sends nothing for it (the test writes what it wants itself).</summary>
    public Func<DecodeRequest, DecodeResponse?> Respond { get; init; } = _ => null;

    /// <summary>The DATA frame payloads a response's gRPC body goes out as (default: frames of up to 1 MiB).</summary>
    public Func<byte[], IEnumerable<ArraySegment<byte>>> Cut { get; init; } = body => Pieces(body, 1 << 20);

    /// <summary>Whole answers a stream holds back to send together (packed into shared frames); 1 sends each at once.</summary>
    public int Coalesce { get; init; } = 1;

    /// <summary>Streams the client reset (RST_STREAM), as they came.</summary>
    public List<int> Resets { get; } = [];

    /// <summary>Responses sent (or handed to <see cref="Cut"/>), in order, with their stream.</summary>
    public List<(int StreamId, DecodeResponse Response)> Sent { get; } = [];

    /// <summary>Request messages seen, in order, with their stream.</summary>
    public List<(int StreamId, DecodeRequest Request)> Requests { get; } = [];

    /// <summary>A gRPC body: the 5-byte prefix (uncompressed, length) and the message.</summary>
    public static byte[] Body(byte[] message)
    {
        var body = new byte[5 + message.Length];
        BinaryPrimitives.WriteUInt32BigEndian(body.AsSpan(1), (uint)message.Length);
        message.CopyTo(body, 5);
        return body;
    }

    public static IEnumerable<ArraySegment<byte>> Pieces(byte[] body, int size)
    {
        for (int i = 0; i < body.Length; i += size) yield return new ArraySegment<byte>(body, i, Math.Min(size, body.Length - i));
    }

    public static byte[] ResponseHeaders => ScriptedConnection.Headers(200, ("content-type", "application/grpc"));

    public static byte[] OkTrailers => ScriptedConnection.Fields(("grpc-status", "0"));

    /// <summary>Serves until the client closes the connection (or <paramref name="until"/> is cancelled).</summary>
    private readonly Dictionary<int, MemoryStream> received = new();
    private readonly Dictionary<int, List<byte[]>> held = new();

    /// <summary>Serves a stream whose HEADERS (both ways) the test already exchanged itself; call before <see cref="RunAsync"/>.</summary>
    public void Adopt(int streamId)
    {
        received[streamId] = new MemoryStream();
        held[streamId] = [];
    }

    public async Task RunAsync(CancellationToken until = default)
    {
        while (!until.IsCancellationRequested)
        {
            (Http2FrameHeader Header, byte[] Payload) frame;
            try
            {
                frame = await connection.ReadFrameAsync().WaitAsync(until);
            }
            catch (Exception ex) when (ex is IOException or EndOfStreamException or OperationCanceledException or ObjectDisposedException || until.IsCancellationRequested)
            {
                return;
            }
            var (header, payload) = frame;
            int id = header.StreamId;
            switch (header.Type)
            {
                case Http2FrameType.Headers:
                    received[id] = new MemoryStream();
                    held[id] = [];
                    await connection.WriteAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, id, ResponseHeaders);
                    if (header.Has(Http2FrameFlags.EndStream)) await EndAsync(id);
                    break;
                case Http2FrameType.Data when received.TryGetValue(id, out var bytes):
                    bytes.Write(payload);
                    foreach (var request in WholeMessages(bytes))
                    {
                        lock (Requests) Requests.Add((id, request));
                        if (Respond(request) is not { } response) continue;
                        lock (Sent) Sent.Add((id, response));
                        held[id].Add(Body(response.ToByteArray()));
                        if (held[id].Count >= Coalesce) await FlushAsync(id, held[id]);
                    }
                    if (header.Has(Http2FrameFlags.EndStream))
                    {
                        await FlushAsync(id, held[id]);
                        await EndAsync(id);
                    }
                    break;
                case Http2FrameType.RstStream:
                    lock (Resets) Resets.Add(id);
                    received.Remove(id);
                    break;
            }
        }
    }

    private async Task FlushAsync(int id, List<byte[]> answers)
    {
        if (answers.Count == 0) return;
        var together = answers.SelectMany(a => a).ToArray();
        answers.Clear();
        foreach (var piece in Cut(together)) await connection.WriteAsync(Http2FrameType.Data, Http2FrameFlags.None, id, [.. piece]);
    }

    private Task EndAsync(int id) =>
        connection.WriteAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders | Http2FrameFlags.EndStream, id, OkTrailers);

    private static List<DecodeRequest> WholeMessages(MemoryStream bytes)
    {
        var found = new List<DecodeRequest>();
        var all = bytes.ToArray();
        int at = 0;
        while (all.Length - at >= 5)
        {
            int length = (int)BinaryPrimitives.ReadUInt32BigEndian(all.AsSpan(at + 1));
            if (all.Length - at - 5 < length) break;
            found.Add(DecodeRequest.Parser.ParseFrom(all.AsSpan(at + 5, length)));
            at += 5 + length;
        }
        bytes.SetLength(0);
        bytes.Write(all, at, all.Length - at);
        return found;
    }

    /// <summary>A response whose out and lse are random bytes of the request's sizes (seeded by the request id and <paramref name="salt"/>).</summary>
    public static DecodeResponse RandomAnswer(DecodeRequest request, int salt = 0, int outBytesDelta = 0)
    {
        long rows = request.SequenceIds.Count * (long)request.SQ * request.HQ;
        var random = new Random(HashCode.Combine(request.RequestId, salt));
        var output = new byte[rows * 512 * 2 + outBytesDelta];
        var lse = new byte[rows * 4];
        random.NextBytes(output);
        random.NextBytes(lse);
        return new DecodeResponse
        {
            RequestId = request.RequestId,
            Out = new Tensor { Dtype = DType.Bf16, Data = ByteString.CopyFrom(output), Shape = { request.SequenceIds.Count, request.SQ, request.HQ, 512 } },
            Lse = new Tensor { Dtype = DType.Fp32, Data = ByteString.CopyFrom(lse), Shape = { request.SequenceIds.Count, request.HQ, request.SQ } },
            Timings = new DecodeTimings { ComputeUs = request.RequestId },
        };
    }
}
