using System.Buffers.Binary;
using System.Net.Sockets;
using FlashMla.Http2;

namespace FlashMla.Server.Tests;

/// <summary>
/// A bare HTTP/2 client for protocol tests of either port: preface, SETTINGS, then whatever the test writes;
/// reads whole frames. The static helpers build request header blocks and gRPC messages by hand.
/// </summary>
internal sealed class RawHttp2Client : IAsyncDisposable
{
    private readonly Socket _socket = new(SocketType.Stream, ProtocolType.Tcp);
    private readonly CancellationTokenSource _timeout = new(TimeSpan.FromSeconds(20));
    private readonly HpackDecoder _decoder = new(4096);

    public Socket Socket => _socket;

    public static async Task<RawHttp2Client> ConnectAsync(string address, (Http2Setting, uint)[]? settings = null)
    {
        var client = new RawHttp2Client();
        await client._socket.ConnectAsync("127.0.0.1", new Uri(address).Port);
        var own = settings ?? [];
        var hello = new byte[Http2Frames.Preface.Length + Http2Frames.SettingsFrameSize(own.Length)];
        Http2Frames.Preface.CopyTo(hello);
        Http2Frames.WriteSettings(hello.AsSpan(Http2Frames.Preface.Length), own);
        await client._socket.SendAsync(hello);
        return client;
    }

    /// <summary>A gRPC message in 16 KiB DATA frames.</summary>
    public async Task SendMessageAsync(int streamId, byte[] bytes, bool endStream)
    {
        for (int offset = 0; offset < bytes.Length; offset += 16384)
        {
            int n = Math.Min(16384, bytes.Length - offset);
            bool last = offset + n == bytes.Length;
            await SendAsync(Http2FrameType.Data, last && endStream ? Http2FrameFlags.EndStream : Http2FrameFlags.None, streamId, bytes.AsSpan(offset, n));
        }
    }

    /// <summary>Reads stream <paramref name="streamId"/>'s frames to its end: DATA bytes, and the grpc-status of its trailers or "RST".</summary>
    public async Task<(long DataBytes, uint? DeclaredLength, string? Status)> ReadStreamAsync(int streamId)
    {
        long data = 0;
        uint? declared = null;
        while (await ReadFrameAsync() is { } frame)
        {
            if (frame.Header.StreamId != streamId) continue;
            if (frame.Header.Type == Http2FrameType.Data)
            {
                if (declared is null && frame.Payload.Length >= 5) declared = BinaryPrimitives.ReadUInt32BigEndian(frame.Payload.AsSpan(1));
                data += frame.Header.Length;
            }
            if (frame.Header.Type == Http2FrameType.RstStream) return (data, declared, "RST");
            if (frame.Header.Type == Http2FrameType.Headers && frame.Header.Has(Http2FrameFlags.EndStream))
                return (data, declared, Decode(frame.Payload)["grpc-status"]);
        }
        return (data, declared, null);
    }

    /// <summary>
    /// One stream's whole response: its first header block, its DATA bytes, and its trailers (null when reset).
    /// Every header block read goes through the connection's decoder (Kestrel's encoder indexes), so use this
    /// reader alone on a connection whose responses are read this way.
    /// </summary>
    public async Task<(Dictionary<string, string> Headers, byte[] Data, Dictionary<string, string>? Trailers)> ReadResponseAsync(int streamId)
    {
        Dictionary<string, string>? headers = null;
        var data = new List<byte>();
        while (await ReadFrameAsync() is { } frame)
        {
            var fields = new List<KeyValuePair<string, string>>();
            if (frame.Header.Type == Http2FrameType.Headers) _decoder.Decode(frame.Payload, fields);
            if (frame.Header.StreamId != streamId) continue;
            if (frame.Header.Type == Http2FrameType.Data) data.AddRange(frame.Payload);
            if (frame.Header.Type == Http2FrameType.RstStream) return (headers ?? [], [.. data], null);
            if (frame.Header.Type != Http2FrameType.Headers) continue;
            var block = fields.GroupBy(f => f.Key).ToDictionary(g => g.Key, g => string.Join(",", g.Select(f => f.Value)));
            if (headers is null && block.ContainsKey(":status"))
            {
                headers = block;
                if (!frame.Header.Has(Http2FrameFlags.EndStream)) continue;
            }
            return (headers!, [.. data], block);
        }
        throw new IOException($"the connection closed before stream {streamId} ended");
    }

    /// <summary>
    /// Reads frames until <paramref name="count"/> streams have ended: each stream's grpc-status, or "RST" and the
    /// error code when it was reset. Every header block goes through the connection's decoder, as in <see cref="ReadResponseAsync"/>.
    /// </summary>
    public async Task<Dictionary<int, string>> ReadEndsAsync(int count)
    {
        var ends = new Dictionary<int, string>();
        while (ends.Count < count && await ReadFrameAsync() is { } frame)
        {
            var fields = new List<KeyValuePair<string, string>>();
            if (frame.Header.Type == Http2FrameType.Headers) _decoder.Decode(frame.Payload, fields);
            if (frame.Header.StreamId == 0 || ends.ContainsKey(frame.Header.StreamId)) continue;
            if (frame.Header.Type == Http2FrameType.RstStream)
                ends[frame.Header.StreamId] = "RST " + (Http2ErrorCode)BinaryPrimitives.ReadUInt32BigEndian(frame.Payload);
            else if (frame.Header.Type == Http2FrameType.Headers && frame.Header.Has(Http2FrameFlags.EndStream))
                ends[frame.Header.StreamId] = fields.FirstOrDefault(f => f.Key == "grpc-status").Value ?? "none";
        }
        return ends;
    }

    /// <summary>A header block of any size: HEADERS, then CONTINUATIONs of at most 16 KiB (the default frame size).</summary>
    public async Task SendHeaderBlockAsync(int streamId, byte[] block, bool endStream)
    {
        const int frame = 16384;
        for (int offset = 0; offset < block.Length || offset == 0; offset += frame)
        {
            int n = Math.Min(frame, block.Length - offset);
            bool last = offset + n == block.Length;
            var flags = (last ? Http2FrameFlags.EndHeaders : Http2FrameFlags.None) |
                        (offset == 0 && endStream ? Http2FrameFlags.EndStream : Http2FrameFlags.None);
            await SendAsync(offset == 0 ? Http2FrameType.Headers : Http2FrameType.Continuation, flags, streamId, block.AsSpan(offset, n));
            if (last) break;
        }
    }

    public Task SendAsync(Http2FrameType type, Http2FrameFlags flags, int streamId, ReadOnlySpan<byte> payload)
    {
        var frame = new byte[Http2FrameHeader.Size + payload.Length];
        new Http2FrameHeader(payload.Length, type, flags, streamId).Write(frame);
        payload.CopyTo(frame.AsSpan(Http2FrameHeader.Size));
        return _socket.SendAsync(frame);
    }

    /// <summary>The next frame, or null once the server closed the connection.</summary>
    public async Task<(Http2FrameHeader Header, byte[] Payload)?> ReadFrameAsync()
    {
        var head = new byte[Http2FrameHeader.Size];
        if (!await FillAsync(head)) return null;
        var header = Http2FrameHeader.Read(head);
        var payload = new byte[header.Length];
        if (!await FillAsync(payload)) return null;
        return (header, payload);
    }

    /// <summary>Frames until one matches, skipping the rest; null if the connection closed first.</summary>
    public async Task<(Http2FrameHeader Header, byte[] Payload)?> ReadUntilAsync(Func<Http2FrameHeader, bool> match)
    {
        while (await ReadFrameAsync() is { } frame)
            if (match(frame.Header)) return frame;
        return null;
    }

    private async Task<bool> FillAsync(byte[] buffer)
    {
        int filled = 0;
        while (filled < buffer.Length)
        {
            int n = await _socket.ReceiveAsync(buffer.AsMemory(filled), SocketFlags.None, _timeout.Token);
            if (n == 0) return false;
            filled += n;
        }
        return true;
    }

    public ValueTask DisposeAsync()
    {
        _socket.Dispose();
        _timeout.Dispose();
        return ValueTask.CompletedTask;
    }

    public static byte[] RequestHeaders(string path, string? timeout = null, params (string Name, string Value)[] metadata) =>
        RequestHeaders(path, "application/grpc", timeout, metadata);

    /// <summary>A request's headers with the content type given (a gRPC client's, or not).</summary>
    public static byte[] RequestHeadersOfType(string path, string contentType) => RequestHeaders(path, contentType, null, []);

    private static byte[] RequestHeaders(string path, string contentType, string? timeout, (string Name, string Value)[] metadata)
    {
        var block = new byte[1024 + metadata.Sum(m => m.Name.Length + m.Value.Length + 16)];
        int pos = 0;
        Assert.True(HpackEncoder.TryEncodeIndexed(HpackStaticTable.MethodPost, block.AsSpan(pos), out int n));
        pos += n;
        Assert.True(HpackEncoder.TryEncodeIndexed(HpackStaticTable.SchemeHttp, block.AsSpan(pos), out n));
        pos += n;
        Assert.True(HpackEncoder.TryEncodeLiteral(HpackStaticTable.Path, path, block.AsSpan(pos), out n));
        pos += n;
        Assert.True(HpackEncoder.TryEncodeLiteral("content-type", contentType, block.AsSpan(pos), out n));
        pos += n;
        if (timeout is not null)
        {
            Assert.True(HpackEncoder.TryEncodeLiteral("grpc-timeout", timeout, block.AsSpan(pos), out n));
            pos += n;
        }
        foreach (var (name, value) in metadata)
        {
            Assert.True(HpackEncoder.TryEncodeLiteral(name, value, block.AsSpan(pos), out n));
            pos += n;
        }
        return block[..pos];
    }

    public static Dictionary<string, string> Decode(byte[] block)
    {
        var fields = new List<KeyValuePair<string, string>>();
        new HpackDecoder(4096).Decode(block, fields);
        return fields.ToDictionary(f => f.Key, f => f.Value);
    }

    public static byte[] GrpcMessage(ulong[] ids, int heads, ulong requestId)
    {
        var q = Random16.Bf16(new Random(1), ids.Length * heads * 576);
        var tensor = new FlashMla.Contracts.V1.Tensor
        {
            Dtype = FlashMla.Contracts.V1.DType.Bf16,
            Data = Google.Protobuf.ByteString.CopyFrom(System.Runtime.InteropServices.MemoryMarshal.AsBytes(q.AsSpan())),
        };
        tensor.Shape.Add([ids.Length, 1, heads, 576]);
        var request = new FlashMla.Contracts.V1.DecodeRequest { RequestId = requestId, SQ = 1, HQ = (uint)heads, Q = tensor };
        request.SequenceIds.Add(ids);
        var body = Google.Protobuf.MessageExtensions.ToByteArray(request);
        var message = new byte[5 + body.Length];
        BinaryPrimitives.WriteUInt32BigEndian(message.AsSpan(1), (uint)body.Length);
        body.CopyTo(message, 5);
        return message;
    }

    public static async Task<ulong[]> SequencesAsync(TestServer server, int count, int length)
    {
        var ids = new ulong[count];
        for (int i = 0; i < count; i++)
        {
            ids[i] = await server.Client.CreateSequenceAsync();
            await server.Client.AppendKvAsync(ids[i], 0, Random16.Bf16(new Random(i), length * 576));
        }
        return ids;
    }

    public static byte[] BigEndian(uint value)
    {
        var bytes = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, value);
        return bytes;
    }
}
