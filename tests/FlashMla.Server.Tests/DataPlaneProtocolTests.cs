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
        private readonly CancellationTokenSource _timeout = new(TimeSpan.FromSeconds(10));

        public static async Task<RawClient> ConnectAsync(string address)
        {
            var client = new RawClient();
            await client._socket.ConnectAsync("127.0.0.1", new Uri(address).Port);
            var hello = new byte[Http2Frames.Preface.Length + Http2FrameHeader.Size];
            Http2Frames.Preface.CopyTo(hello);
            Http2Frames.WriteSettings(hello.AsSpan(Http2Frames.Preface.Length), []);
            await client._socket.SendAsync(hello);
            return client;
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

    private static byte[] RequestHeaders(string path, bool huffmanPath = false)
    {
        var block = new byte[256];
        int pos = 0;
        Assert.True(HpackEncoder.TryEncodeIndexed(HpackStaticTable.MethodPost, block.AsSpan(pos), out int n));
        pos += n;
        Assert.True(HpackEncoder.TryEncodeIndexed(HpackStaticTable.SchemeHttp, block.AsSpan(pos), out n));
        pos += n;
        if (huffmanPath)
        {
            // A literal :path whose value has the Huffman bit set (RFC 7541, section 5.2): 3 bytes of code.
            block[pos++] = HpackStaticTable.Path;
            block[pos++] = 0x80 | 3;
            block[pos++] = 0x61;
            block[pos++] = 0x09;
            block[pos++] = 0x1F;
        }
        else
        {
            Assert.True(HpackEncoder.TryEncodeLiteral(HpackStaticTable.Path, path, block.AsSpan(pos), out n));
            pos += n;
        }
        Assert.True(HpackEncoder.TryEncodeLiteral("content-type", "application/grpc", block.AsSpan(pos), out n));
        pos += n;
        return block[..pos];
    }

    private static Dictionary<string, string> Decode(byte[] block)
    {
        var fields = new List<KeyValuePair<string, string>>();
        Assert.Null(new HpackDecoder(4096).Decode(block, fields));
        return fields.ToDictionary(f => f.Key, f => f.Value);
    }

    [Fact]
    public async Task A_huffman_coded_request_header_gets_internal_saying_so_and_the_connection_goes_on()
    {
        await using var server = await TestServer.StartAsync();
        await using var client = await RawClient.ConnectAsync(server.DataPlaneAddress!);
        await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders | Http2FrameFlags.EndStream, 1, RequestHeaders("", huffmanPath: true));
        var reply = await client.ReadUntilAsync(h => h.Type == Http2FrameType.Headers && h.StreamId == 1);
        Assert.NotNull(reply);
        Assert.True(reply.Value.Header.Has(Http2FrameFlags.EndStream)); // trailers-only
        var fields = Decode(reply.Value.Payload);
        Assert.Equal("200", fields[":status"]);
        Assert.Equal("13", fields["grpc-status"]);
        Assert.Contains("Huffman", Uri.UnescapeDataString(fields["grpc-message"]));

        // The connection still serves: an unknown method on stream 3 gets UNIMPLEMENTED.
        await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders | Http2FrameFlags.EndStream, 3, RequestHeaders("/flashmla.v1.KvCache/GetStats"));
        var second = await client.ReadUntilAsync(h => h.Type == Http2FrameType.Headers && h.StreamId == 3);
        Assert.Equal("12", Decode(second!.Value.Payload)["grpc-status"]);
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
}
