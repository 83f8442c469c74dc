using System.Net;
using FlashMla.Client.Transport;

namespace FlashMla.Http2.Tests;

/// <summary>
/// A server that answers before the request body is all sent, then resets the stream with NO_ERROR (RFC 9113,
/// section 8.1; what the data-plane port, Kestrel, grpc-go and grpcio servers do for a call refused from its headers):
/// the client's response is the complete one, with its trailers, and the body's writes still to come end quietly
/// without another DATA frame on the wire. A reset that comes before the response is complete stays an error.
/// </summary>
public sealed class EarlyResponseTests
{
    private const int Window = 1000;

    /// <summary>A request body written piece by piece; records whether a write failed.</summary>
    private sealed class PiecewiseContent(int pieces, int pieceBytes) : HttpContent
    {
        public TaskCompletionSource<Exception?> Finished { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        protected override async Task SerializeToStreamAsync(Stream stream, TransportContext? context)
        {
            try
            {
                for (int i = 0; i < pieces; i++) await stream.WriteAsync(new byte[pieceBytes]);
                Finished.TrySetResult(null);
            }
            catch (Exception ex)
            {
                Finished.TrySetResult(ex);
                throw;
            }
        }

        protected override bool TryComputeLength(out long length)
        {
            length = 0;
            return false;
        }
    }

    private static HttpRequestMessage Post(string address, HttpContent? content) =>
        new(HttpMethod.Post, address + "/svc/Method") { Version = HttpVersion.Version20, Content = content };

    [Fact]
    public async Task A_complete_response_then_RST_STREAM_NO_ERROR_is_the_calls_answer_and_the_rest_of_the_body_ends_quietly()
    {
        using var server = new ScriptedHttp2Server();
        using var invoker = new HttpMessageInvoker(new LargeFrameHttp2Handler());
        var body = new PiecewiseContent(pieces: 64, pieceBytes: 4096); // 256 KiB against a 1000-byte stream window
        var send = invoker.SendAsync(Post(server.Address, body), default);
        using var connection = await server.AcceptAsync();
        await connection.HandshakeAsync((Http2Setting.InitialWindowSize, Window));
        var (headers, _) = await connection.ReadFrameAsync(Http2FrameType.Headers);
        int id = headers.StreamId;
        var (first, _) = await connection.ReadFrameAsync(Http2FrameType.Data);
        Assert.Equal(Window, first.Length); // the client is now waiting for credit

        // A trailers-only answer (HTTP 200, grpc-status in the headers), then "stop sending".
        await connection.WriteAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders | Http2FrameFlags.EndStream, id,
            ScriptedConnection.Headers(200, ("content-type", "application/grpc"), ("grpc-status", "16"), ("grpc-message", "refused")));
        await connection.WriteAsync(Http2FrameType.RstStream, 0, id, ScriptedConnection.UInt32((uint)Http2ErrorCode.NoError));

        using var response = await send.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("16", Assert.Single(response.Headers.GetValues("grpc-status")));
        Assert.Empty(await response.Content.ReadAsByteArrayAsync());
        Assert.Null(await body.Finished.Task.WaitAsync(TimeSpan.FromSeconds(30))); // every write returned, none threw

        // The connection goes on: the next request's HEADERS is the next frame of substance, with no DATA of the
        // abandoned stream (nor its END_STREAM) before it.
        var next = invoker.SendAsync(Post(server.Address, null), default);
        while (true)
        {
            var (frame, _) = await connection.ReadFrameAsync();
            if (frame.Type == Http2FrameType.Headers)
            {
                Assert.NotEqual(id, frame.StreamId);
                await connection.WriteAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders | Http2FrameFlags.EndStream, frame.StreamId,
                    ScriptedConnection.Headers(204));
                break;
            }
            Assert.False(frame.Type == Http2FrameType.Data && frame.StreamId == id, "DATA of the abandoned stream after its reset");
        }
        using var second = await next.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(HttpStatusCode.NoContent, second.StatusCode);
    }

    [Fact]
    public async Task RST_STREAM_NO_ERROR_before_the_response_ends_fails_the_call()
    {
        using var server = new ScriptedHttp2Server();
        using var invoker = new HttpMessageInvoker(new LargeFrameHttp2Handler());
        var body = new PiecewiseContent(pieces: 64, pieceBytes: 4096);
        var send = invoker.SendAsync(Post(server.Address, body), default);
        using var connection = await server.AcceptAsync();
        await connection.HandshakeAsync((Http2Setting.InitialWindowSize, Window));
        var (headers, _) = await connection.ReadFrameAsync(Http2FrameType.Headers);
        // Response headers without END_STREAM, then the reset: the response is not complete, so NO_ERROR is no answer.
        await connection.WriteAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, headers.StreamId,
            ScriptedConnection.Headers(200, ("content-type", "application/grpc")));
        await connection.WriteAsync(Http2FrameType.RstStream, 0, headers.StreamId, ScriptedConnection.UInt32((uint)Http2ErrorCode.NoError));
        using var response = await send.WaitAsync(TimeSpan.FromSeconds(30));
        var failure = await Assert.ThrowsAnyAsync<Exception>(() => response.Content.ReadAsByteArrayAsync().WaitAsync(TimeSpan.FromSeconds(30)));
        Assert.Contains("reset HTTP/2 stream", failure.ToString()); // HttpContent wraps it: the reset is the inner exception
        Assert.NotNull(await body.Finished.Task.WaitAsync(TimeSpan.FromSeconds(30))); // the body's write failed: the stream is gone
    }
}
