using System.Buffers.Binary;
using System.Net.Sockets;
using FlashMla.Http2;
using FlashMla.Server.DataPlane;

namespace FlashMla.Server.Tests;

/// <summary>
/// The data-plane listener's HTTP/2 edges, driven frame by frame from a raw socket: what a real client would
/// never send, and the connection-level frames a client relies on.
/// </summary>
[Collection(DataPlaneCollection.Name)] // not beside DataPlanePortTests: it reads the data-plane metrics
public sealed class DataPlaneProtocolTests
{
    [Fact]
    public async Task Huffman_coded_request_headers_and_binary_metadata_are_decoded_and_the_call_is_served()
    {
        await using var server = await TestServer.StartAsync();
        var ids = await RawHttp2Client.SequencesAsync(server, 1, 5);
        await using var client = await RawHttp2Client.ConnectAsync(server.DataPlaneAddress!);
        var block = RawHttp2Client.RequestHeaders("/flashmla.v1.Decoder/DecodeOnce", "10S", ("x-trace-bin", Convert.ToBase64String([0, 1, 2, 254, 255])),
            ("user-agent", "grpc-python/1.51.1 grpc-c/29.0.0 (linux; chttp2)"));
        // The encoder Huffman-codes what that makes shorter: the path and the content type are, as C-core sends them.
        Assert.Equal(0x80, block[3] & 0x80);
        await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, 1, block);
        await client.SendMessageAsync(1, RawHttp2Client.GrpcMessage(ids, 2, 1), endStream: true);
        var (data, declared, status) = await client.ReadStreamAsync(1);
        Assert.Equal("0", status);
        Assert.Equal(declared + 5, (uint)data);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_request_that_is_not_gRPC_gets_415_as_on_Kestrels_port_and_gRPC_subtypes_are_served(bool dataPlane)
    {
        await using var server = await TestServer.StartAsync();
        var ids = await RawHttp2Client.SequencesAsync(server, 1, 5);
        await using var client = await RawHttp2Client.ConnectAsync(dataPlane ? server.DataPlaneAddress! : server.GrpcAddress);
        await client.SendAsync(Http2FrameType.WindowUpdate, Http2FrameFlags.None, 0, RawHttp2Client.BigEndian(1u << 24));
        string[] contentTypes = ["application/json", "text/plain", "application/grpc+proto", "application/grpc; charset=utf-8"];
        var ends = new List<(string Status, string? GrpcStatus)>();
        for (int i = 0; i < contentTypes.Length; i++)
        {
            int stream = 2 * i + 1;
            await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, stream,
                RawHttp2Client.RequestHeadersOfType("/flashmla.v1.Decoder/DecodeOnce", contentTypes[i]));
            await client.SendMessageAsync(stream, RawHttp2Client.GrpcMessage(ids, 2, 1), endStream: true);
            var (headers, _, trailers) = await client.ReadResponseAsync(stream);
            ends.Add((headers[":status"], trailers?.GetValueOrDefault("grpc-status")));
        }
        // An HTTP client reading a gRPC error's 200 would take it for success (gRPC's PROTOCOL-HTTP2: "SHOULD respond with 415").
        Assert.Equal([("415", "13"), ("415", "13"), ("200", "0"), ("200", "0")], ends);
    }

    [Fact]
    public async Task A_malformed_Huffman_string_is_a_compression_error_that_ends_the_connection()
    {
        await using var server = await TestServer.StartAsync();
        await using var client = await RawHttp2Client.ConnectAsync(server.DataPlaneAddress!);
        // :method POST, then a literal :path whose Huffman value is 8 bits of padding (RFC 7541, section 5.2).
        await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders | Http2FrameFlags.EndStream, 1, [0x83, 0x04, 0x81, 0xFF]);
        var goAway = await client.ReadUntilAsync(h => h.Type == Http2FrameType.GoAway);
        Assert.NotNull(goAway);
        Assert.Equal((uint)Http2ErrorCode.CompressionError, BinaryPrimitives.ReadUInt32BigEndian(goAway.Value.Payload.AsSpan(4)));
    }

    [Fact]
    public async Task Stream_level_violations_reset_only_their_stream_and_the_connection_goes_on()
    {
        await using var server = await TestServer.StartAsync();
        var ids = await RawHttp2Client.SequencesAsync(server, 1, 5);
        var big = await RawHttp2Client.SequencesAsync(server, 8, 400);
        await using var client = await RawHttp2Client.ConnectAsync(server.DataPlaneAddress!, [(Http2Setting.InitialWindowSize, 1u << 30)]);
        await client.SendAsync(Http2FrameType.WindowUpdate, Http2FrameFlags.None, 0, RawHttp2Client.BigEndian(1u << 30));
        // Stream 1: a second HEADERS without END_STREAM (trailers must end the stream).
        await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, 1, RawHttp2Client.RequestHeaders("/flashmla.v1.Decoder/Decode"));
        await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, 1, RawHttp2Client.RequestHeaders("/flashmla.v1.Decoder/Decode"));
        var reset1 = await client.ReadUntilAsync(h => h.Type == Http2FrameType.RstStream && h.StreamId == 1);
        Assert.Equal((uint)Http2ErrorCode.ProtocolError, BinaryPrimitives.ReadUInt32BigEndian(reset1!.Value.Payload));
        // Stream 3: DATA after its END_STREAM, in the same write as the message, so the call (a large step) is still open.
        await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, 3, RawHttp2Client.RequestHeaders("/flashmla.v1.Decoder/Decode"));
        var message = RawHttp2Client.GrpcMessage(big, 64, 1); // 590 KB: one frame
        var frames = new byte[2 * Http2FrameHeader.Size + message.Length + 5];
        new Http2FrameHeader(message.Length, Http2FrameType.Data, Http2FrameFlags.EndStream, 3).Write(frames);
        message.CopyTo(frames, Http2FrameHeader.Size);
        new Http2FrameHeader(5, Http2FrameType.Data, Http2FrameFlags.None, 3).Write(frames.AsSpan(Http2FrameHeader.Size + message.Length));
        await client.Socket.SendAsync(frames);
        var reset3 = await client.ReadUntilAsync(h => h.Type == Http2FrameType.RstStream && h.StreamId == 3);
        Assert.Equal((uint)Http2ErrorCode.StreamClosed, BinaryPrimitives.ReadUInt32BigEndian(reset3!.Value.Payload));
        // Stream 5 is served on the same connection.
        await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, 5, RawHttp2Client.RequestHeaders("/flashmla.v1.Decoder/DecodeOnce"));
        await client.SendMessageAsync(5, RawHttp2Client.GrpcMessage(ids, 2, 1), endStream: true);
        Assert.Equal("0", (await client.ReadStreamAsync(5)).Status);
    }

    [Fact]
    public async Task A_ping_is_answered_with_the_same_payload()
    {
        await using var server = await TestServer.StartAsync();
        await using var client = await RawHttp2Client.ConnectAsync(server.DataPlaneAddress!);
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
        await using var client = await RawHttp2Client.ConnectAsync(server.DataPlaneAddress!);
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
                await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, 2, RawHttp2Client.RequestHeaders("/flashmla.v1.Decoder/Decode"));
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

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_unary_call_with_two_request_messages_is_internal_on_both_ports(bool kestrel)
    {
        await using var server = await TestServer.StartAsync();
        var ids = await RawHttp2Client.SequencesAsync(server, 1, 5);
        await using var client = await RawHttp2Client.ConnectAsync(kestrel ? server.GrpcAddress : server.DataPlaneAddress!);
        var one = RawHttp2Client.GrpcMessage(ids, 2, 1);
        await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, 1, RawHttp2Client.RequestHeaders("/flashmla.v1.Decoder/DecodeOnce"));
        await client.SendMessageAsync(1, [.. one, .. one], endStream: true);
        Assert.Equal("13", (await client.ReadStreamAsync(1)).Status);
        Assert.Equal([5u, 0u], (await server.Client.GetSequenceAsync(ids[0])).LayerLengths); // nothing ran
    }

    [Fact]
    public async Task A_deadline_inside_a_response_message_resets_the_stream_rather_than_trailing_a_cut_message()
    {
        await using var server = await TestServer.StartAsync();
        var ids = await RawHttp2Client.SequencesAsync(server, 2, 5);
        await using var client = await RawHttp2Client.ConnectAsync(server.DataPlaneAddress!); // the default 64 KiB window, never opened
        await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, 1, RawHttp2Client.RequestHeaders("/flashmla.v1.Decoder/Decode", timeout: "1S"));
        await client.SendMessageAsync(1, RawHttp2Client.GrpcMessage(ids, 64, 1), endStream: false); // out: 128 KiB, twice the window
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
            var ids = await RawHttp2Client.SequencesAsync(server, 8, 200);
            await using var client = await RawHttp2Client.ConnectAsync(server.DataPlaneAddress!, [(Http2Setting.InitialWindowSize, 1u << 30)]);
            await client.SendAsync(Http2FrameType.WindowUpdate, Http2FrameFlags.None, 0, RawHttp2Client.BigEndian(1u << 30));
            await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, 1, RawHttp2Client.RequestHeaders("/flashmla.v1.Decoder/Decode"));
            if (goAwayFirst)
            {
                await client.SendAsync(Http2FrameType.GoAway, Http2FrameFlags.None, 0, new byte[8]);
                await Task.Delay(100);
            }
            await client.SendMessageAsync(1, [.. RawHttp2Client.GrpcMessage(ids, 128, 1), .. RawHttp2Client.GrpcMessage(ids, 128, 2)], endStream: false);
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
        await using var client = await RawHttp2Client.ConnectAsync(server.DataPlaneAddress!);
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
    public async Task A_client_resetting_streams_in_a_loop_gets_goaway_enhance_your_calm_after_a_bounded_number()
    {
        await using var server = await TestServer.StartAsync();
        await using var client = await RawHttp2Client.ConnectAsync(server.DataPlaneAddress!);
        var block = RawHttp2Client.RequestHeaders("/flashmla.v1.Decoder/Decode");
        var cancel = RawHttp2Client.BigEndian((uint)Http2ErrorCode.Cancel);
        var goAway = Task.Run(() => client.ReadUntilAsync(h => h.Type == Http2FrameType.GoAway));
        const int Attempts = 50_000; // the loop stops by itself, whatever the server does
        int sent = 0;
        try
        {
            for (; sent < Attempts && !goAway.IsCompleted; sent++)
            {
                int id = 2 * sent + 1;
                await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, id, block);
                await client.SendAsync(Http2FrameType.RstStream, Http2FrameFlags.None, id, cancel);
            }
        }
        catch (SocketException)
        {
            // The server closed the connection while we were still sending.
        }
        var frame = await goAway.WaitAsync(TimeSpan.FromSeconds(20));
        Assert.NotNull(frame);
        Assert.Equal((uint)Http2ErrorCode.EnhanceYourCalm, BinaryPrimitives.ReadUInt32BigEndian(frame.Value.Payload.AsSpan(4)));
        // The last stream the server took before it gave up: the burst, and what the refill added while the loop ran.
        int processed = (int)(BinaryPrimitives.ReadUInt32BigEndian(frame.Value.Payload) + 1) / 2;
        Assert.InRange(processed, StreamResetBudget.Burst, 2 * StreamResetBudget.Burst);
        Assert.True(sent < Attempts, "the server never cut the connection off");
    }

    [Fact]
    public async Task A_client_that_cancels_every_other_call_is_never_cut_off()
    {
        // 128 streams open at a time, reset ones included: the most MaxStreamsPerConnection allows.
        await using var server = await TestServer.StartAsync(("MaxStreamsPerConnection", DataPlaneConnection.MaxConcurrentStreams));
        var ids = await RawHttp2Client.SequencesAsync(server, 1, 5);
        await using var client = await RawHttp2Client.ConnectAsync(server.DataPlaneAddress!);
        var block = RawHttp2Client.RequestHeaders("/flashmla.v1.Decoder/DecodeOnce");
        var message = RawHttp2Client.GrpcMessage(ids, 2, 1);
        var cancel = RawHttp2Client.BigEndian((uint)Http2ErrorCode.Cancel);
        await client.SendAsync(Http2FrameType.WindowUpdate, Http2FrameFlags.None, 0, RawHttp2Client.BigEndian(int.MaxValue - 65535)); // room for every response
        // Well past the burst of resets, each reset paid for by a call the client let finish; 64 of each in flight at a time.
        const int Round = 64;
        int rounds = 3 * StreamResetBudget.Burst / 2 / Round, id = 1;
        for (int round = 0; round < rounds; round++)
        {
            var answered = new HashSet<int>();
            for (int i = 0; i < Round; i++, id += 4)
            {
                await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, id, block);
                await client.SendMessageAsync(id, message, endStream: true);
                answered.Add(id);
                await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, id + 2, block);
                await client.SendAsync(Http2FrameType.RstStream, Http2FrameFlags.None, id + 2, cancel);
            }
            while (answered.Count > 0)
            {
                var frame = await client.ReadUntilAsync(h => h.Type is Http2FrameType.GoAway or Http2FrameType.RstStream ||
                    (h.Type == Http2FrameType.Headers && h.Has(Http2FrameFlags.EndStream)));
                Assert.NotNull(frame);
                Assert.True(frame.Value.Header.Type == Http2FrameType.Headers, $"round {round}: {frame.Value.Header.Type} on stream {frame.Value.Header.StreamId}");
                Assert.True(answered.Remove(frame.Value.Header.StreamId), $"trailers on stream {frame.Value.Header.StreamId}, which the client reset");
                Assert.Equal("0", RawHttp2Client.Decode(frame.Value.Payload)["grpc-status"]);
            }
        }
        // Still open: a PING is answered, and no GOAWAY came before its ack.
        await client.SendAsync(Http2FrameType.Ping, Http2FrameFlags.None, 0, new byte[8]);
        var next = await client.ReadUntilAsync(h => h.Type is Http2FrameType.GoAway || (h.Type == Http2FrameType.Ping && h.Has(Http2FrameFlags.Ack)));
        Assert.NotNull(next);
        Assert.Equal(Http2FrameType.Ping, next.Value.Header.Type);
    }
}
