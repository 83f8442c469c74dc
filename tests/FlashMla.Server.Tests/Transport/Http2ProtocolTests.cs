using FlashMla.Http2;
using System.Buffers.Binary;
using System.Net;
using FlashMla.Client.Transport;

namespace FlashMla.Server.Tests.Transport;

/// <summary>
/// LargeFrameHttp2Handler against a scripted server: settings, flow control both ways, CONTINUATION, padding,
/// informational responses, PING, and every way a server can end a stream or a connection.
/// </summary>
public sealed class Http2ProtocolTests
{
    private static HttpRequestMessage Post(string address, byte[]? body = null) => new(HttpMethod.Post, address + "/svc/Method")
    {
        Version = HttpVersion.Version20,
        Content = body is null ? null : new ByteArrayContent(body),
    };

    [Fact]
    public async Task The_client_advertises_large_frames_and_windows_then_splits_its_data_by_the_servers_windows()
    {
        using var server = new ScriptedHttp2Server();
        var counters = new Http2TransportCounters();
        using var invoker = new HttpMessageInvoker(new LargeFrameHttp2Handler(new LargeFrameHttp2Options { Counters = counters }));
        var body = Enumerable.Range(0, 40_000).Select(i => (byte)i).ToArray();
        var send = invoker.SendAsync(Post(server.Address, body), default);
        using var connection = await server.AcceptAsync();
        var settings = await connection.HandshakeAsync((Http2Setting.InitialWindowSize, 1000), (Http2Setting.MaxFrameSize, 16384));
        Assert.Equal(0u, settings[Http2Setting.HeaderTableSize]);
        Assert.Equal(0u, settings[Http2Setting.EnablePush]);
        Assert.Equal(1024u * 1024, settings[Http2Setting.MaxFrameSize]);
        Assert.Equal(16u * 1024 * 1024, settings[Http2Setting.InitialWindowSize]);
        var (update, increment) = await connection.ReadFrameAsync(Http2FrameType.WindowUpdate);
        Assert.Equal(0, update.StreamId);
        Assert.Equal(64u * 1024 * 1024 - 65535, BinaryPrimitives.ReadUInt32BigEndian(increment));

        var (headers, _) = await connection.ReadFrameAsync(Http2FrameType.Headers);
        Assert.True(headers.Has(Http2FrameFlags.EndHeaders));
        Assert.False(headers.Has(Http2FrameFlags.EndStream));
        var first = await connection.ReadFrameAsync(Http2FrameType.Data);
        Assert.Equal(1000, first.Header.Length); // the stream window the server allowed, no more
        await connection.WriteAsync(Http2FrameType.WindowUpdate, 0, headers.StreamId, ScriptedConnection.UInt32(1_000_000));
        var received = first.Payload.ToList();
        while (received.Count < body.Length)
        {
            var (data, payload) = await connection.ReadFrameAsync(Http2FrameType.Data);
            Assert.True(data.Length <= 16384, $"a {data.Length}-byte frame above the server's 16384");
            received.AddRange(payload);
        }
        Assert.Equal(body, received);
        // The connection window (65535 until the server raises it) caps the total: 40,000 fits.
        var end = await connection.ReadFrameAsync(Http2FrameType.Data);
        Assert.True(end.Header.Has(Http2FrameFlags.EndStream));
        Assert.Equal(0, end.Header.Length);

        await connection.WriteAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders | Http2FrameFlags.EndStream, headers.StreamId,
            ScriptedConnection.Headers(204));
        using var response = await send;
        Assert.Equal(HttpStatusCode.NoContent, response.StatusCode);
        Assert.Equal(16384, counters.LargestDataFrameSent);
    }

    [Fact]
    public async Task Continuation_padding_informational_responses_pings_and_trailers_are_understood()
    {
        using var server = new ScriptedHttp2Server();
        using var invoker = new HttpMessageInvoker(new LargeFrameHttp2Handler());
        var send = invoker.SendAsync(Post(server.Address), default);
        using var connection = await server.AcceptAsync();
        await connection.HandshakeAsync();
        var (headers, _) = await connection.ReadFrameAsync(Http2FrameType.Headers);
        Assert.True(headers.Has(Http2FrameFlags.EndStream)); // no content: the request ends with its headers
        int id = headers.StreamId;

        await connection.WriteAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, id, ScriptedConnection.Headers(100)); // ignored
        var block = ScriptedConnection.Headers(200, ("content-type", "application/grpc"), ("x-long", new string('h', 300)));
        await connection.WriteAsync(Http2FrameType.Ping, 0, 0, [1, 2, 3, 4, 5, 6, 7, 8]);
        await connection.WriteAsync(Http2FrameType.Headers, Http2FrameFlags.Padded, id, [4, .. block[..10], 0, 0, 0, 0]);
        await connection.WriteAsync(Http2FrameType.Continuation, Http2FrameFlags.EndHeaders, id, block[10..]);
        var pong = await connection.ReadFrameAsync(Http2FrameType.Ping);
        Assert.True(pong.Header.Has(Http2FrameFlags.Ack));
        Assert.Equal(new byte[] { 1, 2, 3, 4, 5, 6, 7, 8 }, pong.Payload);

        using var response = await send;
        Assert.Equal(300, response.Headers.GetValues("x-long").Single().Length);
        Assert.Equal("application/grpc", response.Content.Headers.ContentType?.MediaType);
        await connection.WriteAsync(Http2FrameType.Data, Http2FrameFlags.Padded, id, [3, 10, 20, 30, 0, 0, 0]);
        await connection.WriteAsync(Http2FrameType.Data, 0, id, [40]);
        await connection.WriteAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders | Http2FrameFlags.EndStream, id,
            ScriptedConnection.Fields(("grpc-status", "0")));
        Assert.Equal(new byte[] { 10, 20, 30, 40 }, await response.Content.ReadAsByteArrayAsync());
        Assert.Equal("0", response.TrailingHeaders.GetValues("grpc-status").Single());
    }

    [Fact]
    public async Task Receive_credit_goes_back_only_as_the_application_reads()
    {
        using var server = new ScriptedHttp2Server();
        using var invoker = new HttpMessageInvoker(new LargeFrameHttp2Handler(new LargeFrameHttp2Options { StreamWindowSize = 65535 }));
        var send = invoker.SendAsync(Post(server.Address), default);
        using var connection = await server.AcceptAsync();
        await connection.HandshakeAsync();
        int id = (await connection.ReadFrameAsync(Http2FrameType.Headers)).Header.StreamId;
        await connection.WriteAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, id, ScriptedConnection.Headers(200));
        await connection.WriteAsync(Http2FrameType.Data, 0, id, new byte[65535]); // the whole stream window
        using var response = await send;

        var body = await response.Content.ReadAsStreamAsync();
        var buffer = new byte[65535];
        await body.ReadExactlyAsync(buffer);
        var (update, increment) = await connection.ReadFrameAsync(Http2FrameType.WindowUpdate);
        while (update.StreamId == 0) (update, increment) = await connection.ReadFrameAsync(Http2FrameType.WindowUpdate);
        Assert.Equal(id, update.StreamId);
        Assert.True(BinaryPrimitives.ReadUInt32BigEndian(increment) >= 65535 / 8);

        await connection.WriteAsync(Http2FrameType.Data, 0, id, new byte[10]);
        var overflow = new byte[65535];
        await connection.WriteAsync(Http2FrameType.Data, 0, id, overflow); // beyond what was credited: a stream error
        var (reset, code) = await connection.ReadFrameAsync(Http2FrameType.RstStream);
        Assert.Equal(id, reset.StreamId);
        Assert.Equal((uint)Http2ErrorCode.FlowControlError, BinaryPrimitives.ReadUInt32BigEndian(code));
        var error = await Assert.ThrowsAnyAsync<IOException>(async () =>
        {
            while (await body.ReadAsync(buffer) > 0)
            {
            }
        });
        Assert.Contains("more than the stream's window", error.Message);
    }

    [Fact]
    public async Task A_reset_fails_only_its_stream_and_Huffman_coded_response_headers_are_decoded()
    {
        using var server = new ScriptedHttp2Server();
        using var invoker = new HttpMessageInvoker(new LargeFrameHttp2Handler());
        var first = invoker.SendAsync(Post(server.Address), default);
        using var connection = await server.AcceptAsync();
        await connection.HandshakeAsync();
        int id1 = (await connection.ReadFrameAsync(Http2FrameType.Headers)).Header.StreamId;
        await connection.WriteAsync(Http2FrameType.RstStream, 0, id1, ScriptedConnection.UInt32((uint)Http2ErrorCode.RefusedStream));
        var refused = await Assert.ThrowsAsync<HttpRequestException>(() => first);
        var protocol = Assert.IsType<HttpProtocolException>(refused.InnerException);
        Assert.Equal((long)Http2ErrorCode.RefusedStream, protocol.ErrorCode);
        Assert.Contains("RefusedStream", protocol.Message);

        var second = invoker.SendAsync(Post(server.Address), default); // same connection
        int id2 = (await connection.ReadFrameAsync(Http2FrameType.Headers)).Header.StreamId;
        Assert.Equal(id1 + 2, id2);
        // grpc-message with its value Huffman-coded (H bit set), as grpc-go and gRPC C-core send it.
        const string message = "q must be bf16 [b, s_q, h_q, 576]";
        var code = new byte[HpackHuffman.EncodedLength(message, lowercase: false)];
        HpackHuffman.Encode(message, lowercase: false, code);
        Assert.True(code.Length < 0x7F);
        await connection.WriteAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders | Http2FrameFlags.EndStream, id2,
            [.. ScriptedConnection.Headers(200), 0x00, 0x0C, .. "grpc-message"u8, (byte)(0x80 | code.Length), .. code]);
        using var response = await second;
        Assert.Equal(message, response.Headers.GetValues("grpc-message").Single());

        var third = invoker.SendAsync(Post(server.Address), default);
        int id3 = (await connection.ReadFrameAsync(Http2FrameType.Headers)).Header.StreamId;
        await connection.WriteAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders | Http2FrameFlags.EndStream, id3, ScriptedConnection.Headers(200));
        Assert.Equal(HttpStatusCode.OK, (await third).StatusCode);
    }

    [Fact]
    public async Task GOAWAY_fails_the_unprocessed_streams_lets_the_others_finish_and_new_requests_open_a_new_connection()
    {
        using var server = new ScriptedHttp2Server();
        var counters = new Http2TransportCounters();
        using var invoker = new HttpMessageInvoker(new LargeFrameHttp2Handler(new LargeFrameHttp2Options { Counters = counters }));
        var processed = invoker.SendAsync(Post(server.Address), default);
        using var connection = await server.AcceptAsync();
        await connection.HandshakeAsync();
        int id1 = (await connection.ReadFrameAsync(Http2FrameType.Headers)).Header.StreamId;
        var unprocessed = invoker.SendAsync(Post(server.Address), default);
        int id2 = (await connection.ReadFrameAsync(Http2FrameType.Headers)).Header.StreamId;

        await connection.WriteAsync(Http2FrameType.GoAway, 0, 0, [.. ScriptedConnection.UInt32((uint)id1), .. ScriptedConnection.UInt32(0), .. "bye"u8]);
        var error = await Assert.ThrowsAsync<HttpRequestException>(() => unprocessed);
        Assert.Contains("GOAWAY", error.Message);
        Assert.Contains("may be retried", error.Message);
        await connection.WriteAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders | Http2FrameFlags.EndStream, id1, ScriptedConnection.Headers(200));
        Assert.Equal(HttpStatusCode.OK, (await processed).StatusCode);

        var next = invoker.SendAsync(Post(server.Address), default);
        using var fresh = await server.AcceptAsync(); // not the draining connection
        await fresh.HandshakeAsync();
        int id = (await fresh.ReadFrameAsync(Http2FrameType.Headers)).Header.StreamId;
        Assert.Equal(1, id);
        await fresh.WriteAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders | Http2FrameFlags.EndStream, id, ScriptedConnection.Headers(200));
        Assert.Equal(HttpStatusCode.OK, (await next).StatusCode);
        Assert.Equal(2, counters.ConnectionsOpened);
    }

    public static TheoryData<string, byte[], uint, string> Violations() => new()
    {
        { "DATA on stream 0", [0, 0, 1, 0, 0, 0, 0, 0, 0, 7], (uint)Http2ErrorCode.ProtocolError, "DATA on stream 0" },
        { "PUSH_PROMISE", [0, 0, 4, 5, 4, 0, 0, 0, 1, 0, 0, 0, 2], (uint)Http2ErrorCode.ProtocolError, "PUSH_PROMISE" },
        { "frame above the advertised size", [0x20, 0, 0, 0, 0, 0, 0, 0, 1], (uint)Http2ErrorCode.FrameSizeError, "above the 1048576 advertised" },
        { "PING of 4 bytes", [0, 0, 4, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4], (uint)Http2ErrorCode.FrameSizeError, "expected 8" },
        { "HEADERS on a stream never opened", [0, 0, 1, 1, 4, 0, 0, 0, 9, 0x88], (uint)Http2ErrorCode.ProtocolError, "never opened" },
        { "a dynamic table size update above 0", [0, 0, 2, 1, 4, 0, 0, 0, 1, 0x3F, 0x01], (uint)Http2ErrorCode.CompressionError, "above the 0" },
        { "a Huffman string padded with 8 bits", [0, 0, 3, 1, 4, 0, 0, 0, 1, 0x08, 0x81, 0xFF], (uint)Http2ErrorCode.CompressionError, "padding longer" },
        { "PING inside a header block", [0, 0, 1, 1, 0, 0, 0, 0, 1, 0x88, 0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8],
            (uint)Http2ErrorCode.ProtocolError, "where CONTINUATION of stream 1 was due" },
        { "SETTINGS_MAX_FRAME_SIZE 100", [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 100], (uint)Http2ErrorCode.ProtocolError, "outside 16384" },
    };

    [Theory]
    [MemberData(nameof(Violations))]
    public async Task A_protocol_violation_closes_the_connection_with_GOAWAY_and_fails_its_streams(string what, byte[] frame, uint code, string why)
    {
        using var server = new ScriptedHttp2Server();
        using var invoker = new HttpMessageInvoker(new LargeFrameHttp2Handler());
        var send = invoker.SendAsync(Post(server.Address), default);
        using var connection = await server.AcceptAsync();
        await connection.HandshakeAsync();
        await connection.ReadFrameAsync(Http2FrameType.Headers);
        await connection.WriteRawAsync(frame);
        var (goAway, payload) = await connection.ReadFrameAsync(Http2FrameType.GoAway);
        Assert.Equal(0, goAway.StreamId);
        Assert.Equal(code, BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(4)));
        var error = await Assert.ThrowsAsync<HttpRequestException>(() => send);
        Assert.Contains(why, error.Message + error.InnerException?.Message);
        Assert.NotNull(what);
    }

    [Fact]
    public async Task A_connection_cut_midway_fails_the_read_at_once_and_a_server_that_never_sends_SETTINGS_times_out()
    {
        using var server = new ScriptedHttp2Server();
        using var invoker = new HttpMessageInvoker(new LargeFrameHttp2Handler(new LargeFrameHttp2Options { ConnectTimeout = TimeSpan.FromMilliseconds(500) }));
        var send = invoker.SendAsync(Post(server.Address), default);
        var connection = await server.AcceptAsync();
        await connection.HandshakeAsync();
        int id = (await connection.ReadFrameAsync(Http2FrameType.Headers)).Header.StreamId;
        await connection.WriteAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, id, ScriptedConnection.Headers(200));
        await connection.WriteAsync(Http2FrameType.Data, 0, id, [1, 2, 3]);
        using var response = await send;
        var body = await response.Content.ReadAsStreamAsync();
        var buffer = new byte[16];
        Assert.Equal(3, await body.ReadAsync(buffer));
        connection.Dispose();
        var cut = await Assert.ThrowsAnyAsync<IOException>(async () => await body.ReadAsync(buffer).AsTask().WaitAsync(TimeSpan.FromSeconds(5)));
        Assert.Contains("closed", cut.Message);

        var silent = invoker.SendAsync(Post(server.Address), default);
        using var mute = await server.AcceptAsync(); // reads the preface, answers nothing
        var timeout = await Assert.ThrowsAsync<HttpRequestException>(() => silent);
        Assert.Contains("no HTTP/2 SETTINGS", timeout.Message);
    }
}
