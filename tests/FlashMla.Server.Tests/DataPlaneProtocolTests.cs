using System.Buffers.Binary;
using System.Net.Sockets;
using FlashMla.Http2;

namespace FlashMla.Server.Tests;

/// <summary>
/// The data-plane listener's HTTP/2 edges, driven frame by frame from a raw socket: what a real client would
/// never send, and the connection-level frames a client relies on.
/// </summary>
[Collection(DataPlaneCollection.Name)] // not beside DataPlanePortTests: it reads the data-plane metrics
public sealed class DataPlaneProtocolTests
{
    /// <summary>A bare HTTP/2 client: preface, empty SETTINGS, then whatever the test writes; reads whole frames.</summary>
    private sealed class RawClient : IAsyncDisposable
    {
        private readonly Socket _socket = new(SocketType.Stream, ProtocolType.Tcp);
        private readonly CancellationTokenSource _timeout = new(TimeSpan.FromSeconds(20));

        public Socket Socket => _socket;

        public static async Task<RawClient> ConnectAsync(string address, (Http2Setting, uint)[]? settings = null)
        {
            var client = new RawClient();
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
    }

    private static byte[] RequestHeaders(string path, string? timeout = null, params (string Name, string Value)[] metadata)
    {
        var block = new byte[1024];
        int pos = 0;
        Assert.True(HpackEncoder.TryEncodeIndexed(HpackStaticTable.MethodPost, block.AsSpan(pos), out int n));
        pos += n;
        Assert.True(HpackEncoder.TryEncodeIndexed(HpackStaticTable.SchemeHttp, block.AsSpan(pos), out n));
        pos += n;
        Assert.True(HpackEncoder.TryEncodeLiteral(HpackStaticTable.Path, path, block.AsSpan(pos), out n));
        pos += n;
        Assert.True(HpackEncoder.TryEncodeLiteral("content-type", "application/grpc", block.AsSpan(pos), out n));
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

    private static Dictionary<string, string> Decode(byte[] block)
    {
        var fields = new List<KeyValuePair<string, string>>();
        new HpackDecoder(4096).Decode(block, fields);
        return fields.ToDictionary(f => f.Key, f => f.Value);
    }

    [Fact]
    public async Task Huffman_coded_request_headers_and_binary_metadata_are_decoded_and_the_call_is_served()
    {
        await using var server = await TestServer.StartAsync();
        var ids = await SequencesAsync(server, 1, 5);
        await using var client = await RawClient.ConnectAsync(server.DataPlaneAddress!);
        var block = RequestHeaders("/flashmla.v1.Decoder/DecodeOnce", "10S", ("x-trace-bin", Convert.ToBase64String([0, 1, 2, 254, 255])),
            ("user-agent", "grpc-python/1.51.1 grpc-c/29.0.0 (linux; chttp2)"));
        // The encoder Huffman-codes what that makes shorter: the path and the content type are, as C-core sends them.
        Assert.Equal(0x80, block[3] & 0x80);
        await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, 1, block);
        await client.SendMessageAsync(1, GrpcMessage(ids, 2, 1), endStream: true);
        var (data, declared, status) = await client.ReadStreamAsync(1);
        Assert.Equal("0", status);
        Assert.Equal(declared + 5, (uint)data);
    }

    [Fact]
    public async Task A_malformed_Huffman_string_is_a_compression_error_that_ends_the_connection()
    {
        await using var server = await TestServer.StartAsync();
        await using var client = await RawClient.ConnectAsync(server.DataPlaneAddress!);
        // :method POST, then a literal :path whose Huffman value is 8 bits of padding (RFC 7541, section 5.2).
        await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders | Http2FrameFlags.EndStream, 1, [0x83, 0x04, 0x81, 0xFF]);
        var goAway = await client.ReadUntilAsync(h => h.Type == Http2FrameType.GoAway);
        Assert.NotNull(goAway);
        Assert.Equal((uint)Http2ErrorCode.CompressionError, BinaryPrimitives.ReadUInt32BigEndian(goAway.Value.Payload.AsSpan(4)));
    }

    [Fact]
    public async Task A_ping_is_answered_with_the_same_payload()
    {
        await using var server = await TestServer.StartAsync();
        await using var client = await RawClient.ConnectAsync(server.DataPlaneAddress!);
        var opaque = new byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(opaque, 0x0123_4567_89AB_CDEF);
        await client.SendAsync(Http2FrameType.Ping, Http2FrameFlags.None, 0, opaque);
        var pong = await client.ReadUntilAsync(h => h.Type == Http2FrameType.Ping);
        Assert.NotNull(pong);
        Assert.True(pong.Value.Header.Has(Http2FrameFlags.Ack));
        Assert.Equal(opaque, pong.Value.Payload);
    }

    [Theory]
    [InlineData("data-on-idle-stream")]
    [InlineData("window-update-zero")]
    [InlineData("even-stream")]
    [InlineData("oversized-frame")]
    public async Task Connection_errors_end_with_goaway_naming_the_error(string violation)
    {
        await using var server = await TestServer.StartAsync();
        await using var client = await RawClient.ConnectAsync(server.DataPlaneAddress!);
        Http2ErrorCode expected;
        switch (violation)
        {
            case "data-on-idle-stream":
                await client.SendAsync(Http2FrameType.Data, Http2FrameFlags.None, 5, new byte[10]);
                expected = Http2ErrorCode.ProtocolError;
                break;
            case "window-update-zero":
                await client.SendAsync(Http2FrameType.WindowUpdate, Http2FrameFlags.None, 0, new byte[4]);
                expected = Http2ErrorCode.ProtocolError;
                break;
            case "even-stream":
                await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, 2, RequestHeaders("/flashmla.v1.Decoder/Decode"));
                expected = Http2ErrorCode.ProtocolError;
                break;
            default:
                await client.SendAsync(Http2FrameType.Data, Http2FrameFlags.None, 1, new byte[(1 << 20) + 1]);
                expected = Http2ErrorCode.FrameSizeError;
                break;
        }
        var goAway = await client.ReadUntilAsync(h => h.Type == Http2FrameType.GoAway);
        Assert.NotNull(goAway);
        Assert.Equal((uint)expected, BinaryPrimitives.ReadUInt32BigEndian(goAway.Value.Payload.AsSpan(4)));
        Assert.Null(await client.ReadFrameAsync()); // and the socket closes
    }

    private static byte[] GrpcMessage(ulong[] ids, int heads, ulong requestId)
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

    private static async Task<ulong[]> SequencesAsync(TestServer server, int count, int length)
    {
        var ids = new ulong[count];
        for (int i = 0; i < count; i++)
        {
            ids[i] = await server.Client.CreateSequenceAsync();
            await server.Client.AppendKvAsync(ids[i], 0, Random16.Bf16(new Random(i), length * 576));
        }
        return ids;
    }

    private static byte[] BigEndian(uint value)
    {
        var bytes = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, value);
        return bytes;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_unary_call_with_two_request_messages_is_internal_on_both_ports(bool kestrel)
    {
        await using var server = await TestServer.StartAsync();
        var ids = await SequencesAsync(server, 1, 5);
        await using var client = await RawClient.ConnectAsync(kestrel ? server.GrpcAddress : server.DataPlaneAddress!);
        var one = GrpcMessage(ids, 2, 1);
        await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, 1, RequestHeaders("/flashmla.v1.Decoder/DecodeOnce"));
        await client.SendMessageAsync(1, [.. one, .. one], endStream: true);
        Assert.Equal("13", (await client.ReadStreamAsync(1)).Status);
        Assert.Equal([5u, 0u], (await server.Client.GetSequenceAsync(ids[0])).LayerLengths); // nothing ran
    }

    [Fact]
    public async Task A_deadline_inside_a_response_message_resets_the_stream_rather_than_trailing_a_cut_message()
    {
        await using var server = await TestServer.StartAsync();
        var ids = await SequencesAsync(server, 2, 5);
        await using var client = await RawClient.ConnectAsync(server.DataPlaneAddress!); // the default 64 KiB window, never opened
        await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, 1, RequestHeaders("/flashmla.v1.Decoder/Decode", timeout: "1S"));
        await client.SendMessageAsync(1, GrpcMessage(ids, 64, 1), endStream: false); // out: 128 KiB, twice the window
        var (data, declared, status) = await client.ReadStreamAsync(1);
        Assert.True(declared is not null && data < declared + 5, $"{data} of {declared + 5} bytes");
        Assert.Equal("RST", status);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Shutdown_answers_what_is_in_flight_then_ends_the_stream_with_unavailable_even_after_a_client_goaway(bool goAwayFirst)
    {
        var server = await TestServer.StartAsync(("DrainTimeoutSeconds", 5), ("TotalBlocks", 256), ("CpuThreads", 1));
        try
        {
            var ids = await SequencesAsync(server, 8, 200);
            await using var client = await RawClient.ConnectAsync(server.DataPlaneAddress!, [(Http2Setting.InitialWindowSize, 1u << 30)]);
            await client.SendAsync(Http2FrameType.WindowUpdate, Http2FrameFlags.None, 0, BigEndian(1u << 30));
            await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, 1, RequestHeaders("/flashmla.v1.Decoder/Decode"));
            if (goAwayFirst)
            {
                await client.SendAsync(Http2FrameType.GoAway, Http2FrameFlags.None, 0, new byte[8]);
                await Task.Delay(100);
            }
            await client.SendMessageAsync(1, [.. GrpcMessage(ids, 128, 1), .. GrpcMessage(ids, 128, 2)], endStream: false);
            // Stop once the first response is on its way: that request is in flight, the second may be too.
            var first = await client.ReadUntilAsync(h => h.Type == Http2FrameType.Data && h.StreamId == 1);
            Assert.NotNull(first);
            var clock = System.Diagnostics.Stopwatch.StartNew();
            var stopping = server.StopAsync();
            var (data, _, status) = await client.ReadStreamAsync(1);
            data += first.Value.Header.Length;
            await stopping;
            Assert.Equal("14", status);
            Assert.True(data >= 8 * 128 * 512 * 2, $"the response in flight was dropped: {data} bytes");
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(4), $"shutdown waited out the drain timeout: {clock.Elapsed}");
        }
        finally
        {
            await server.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_client_that_sends_pings_without_reading_is_cut_off_with_enhance_your_calm()
    {
        await using var server = await TestServer.StartAsync();
        await using var client = await RawClient.ConnectAsync(server.DataPlaneAddress!);
        var ping = new byte[Http2FrameHeader.Size + 8];
        new Http2FrameHeader(8, Http2FrameType.Ping, Http2FrameFlags.None, 0).Write(ping);
        var batch = new byte[ping.Length * 4096];
        for (int i = 0; i < 4096; i++) ping.CopyTo(batch, i * ping.Length);
        try
        {
            for (int i = 0; i < 400; i++) await client.Socket.SendAsync(batch); // 27 MB of PINGs, 27 MB of acks owed
        }
        catch (SocketException)
        {
            // The server closed the connection while we were still sending: what this test wants.
        }
        var goAway = await client.ReadUntilAsync(h => h.Type == Http2FrameType.GoAway);
        if (goAway is { } frame)
            Assert.Equal((uint)Http2ErrorCode.EnhanceYourCalm, BinaryPrimitives.ReadUInt32BigEndian(frame.Payload.AsSpan(4)));
        // Either way the connection is gone rather than buffering without bound.
        Assert.Null(await client.ReadFrameAsync());
    }

    [Fact]
    public async Task Send_credit_taken_for_a_frame_never_sent_comes_back()
    {
        var windows = new FlashMla.Server.DataPlane.SendWindows();
        windows.AddStream(1);
        int taken = await windows.TakeAsync(1, 100_000, CancellationToken.None);
        Assert.Equal(Http2Frames.DefaultWindowSize, taken);
        windows.Return(1, taken);
        Assert.Equal(Http2Frames.DefaultWindowSize, await windows.TakeAsync(1, 100_000, CancellationToken.None));
        using var none = new CancellationTokenSource(TimeSpan.FromMilliseconds(100));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await windows.TakeAsync(1, 1, none.Token));
    }
}
