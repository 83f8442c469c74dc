using System.Net;
using FlashMla.Client.Transport;

namespace FlashMla.Http2.Tests;

/// <summary>
/// How a response body's reader is woken: on the thread that read the bytes, with the connection's reader loop
/// moved to another thread first, so the woken code may block without stalling other streams.
/// </summary>
public sealed class ClientReaderHandOffTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(10);

    private static HttpRequestMessage Get(string address) => new(HttpMethod.Post, address + "/svc/Method") { Version = HttpVersion.Version20 };

    [Fact]
    public async Task A_body_reader_whose_continuation_blocks_does_not_stall_another_streams_body()
    {
        using var server = new ScriptedHttp2Server();
        using var invoker = new HttpMessageInvoker(new LargeFrameHttp2Handler());
        var first = invoker.SendAsync(Get(server.Address), default);
        using var connection = await server.AcceptAsync();
        await connection.HandshakeAsync();
        int id1 = (await connection.ReadFrameAsync(Http2FrameType.Headers)).Header.StreamId;
        var second = invoker.SendAsync(Get(server.Address), default);
        int id2 = (await connection.ReadFrameAsync(Http2FrameType.Headers)).Header.StreamId;
        await connection.WriteAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, id1, ScriptedConnection.Headers(200));
        await connection.WriteAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, id2, ScriptedConnection.Headers(200));
        using var response1 = await first;
        using var response2 = await second;
        var body1 = await response1.Content.ReadAsStreamAsync();
        var body2 = await response2.Content.ReadAsStreamAsync();

        // The first body's reader waits; its continuation (inline, where the read completes) blocks until released.
        using var blocking = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        bool onPool = false;
        var buffer1 = new byte[16];
        var blocked = body1.ReadAsync(buffer1).AsTask().ContinueWith(read =>
        {
            onPool = Thread.CurrentThread.IsThreadPoolThread;
            blocking.Set();
            release.Wait(Patience);
            return read.Result;
        }, TaskContinuationOptions.ExecuteSynchronously);
        await connection.WriteAsync(Http2FrameType.Data, 0, id1, [1, 2, 3]);
        Assert.True(blocking.Wait(Patience), "the first body's read never completed");

        // While that code blocks, the connection still reads: the second stream's body arrives and is read.
        await connection.WriteAsync(Http2FrameType.Data, Http2FrameFlags.EndStream, id2, [7, 8]);
        var buffer2 = new byte[16];
        int n2 = await body2.ReadAsync(buffer2).AsTask().WaitAsync(Patience);
        Assert.Equal([7, 8], buffer2[..n2]);
        Assert.Equal(0, await body2.ReadAsync(buffer2).AsTask().WaitAsync(Patience));
        Assert.False(blocked.IsCompleted);

        release.Set();
        Assert.Equal(3, await blocked.WaitAsync(Patience));
        Assert.Equal([1, 2, 3], buffer1[..3]);
        Assert.True(onPool);
    }

    [Fact]
    public async Task A_body_read_that_waits_is_cancelled_by_its_token_and_the_next_read_gets_the_data()
    {
        using var server = new ScriptedHttp2Server();
        using var invoker = new HttpMessageInvoker(new LargeFrameHttp2Handler());
        var send = invoker.SendAsync(Get(server.Address), default);
        using var connection = await server.AcceptAsync();
        await connection.HandshakeAsync();
        int id = (await connection.ReadFrameAsync(Http2FrameType.Headers)).Header.StreamId;
        await connection.WriteAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, id, ScriptedConnection.Headers(200));
        using var response = await send;
        var body = await response.Content.ReadAsStreamAsync();

        using var cancel = new CancellationTokenSource();
        var buffer = new byte[16];
        var waiting = body.ReadAsync(buffer, cancel.Token).AsTask();
        await Task.Delay(50);
        Assert.False(waiting.IsCompleted);
        cancel.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => waiting.WaitAsync(Patience));

        await connection.WriteAsync(Http2FrameType.Data, Http2FrameFlags.EndStream, id, [5, 6, 7]);
        int n = await body.ReadAsync(buffer).AsTask().WaitAsync(Patience);
        Assert.Equal([5, 6, 7], buffer[..n]);
        Assert.Equal(0, await body.ReadAsync(buffer).AsTask().WaitAsync(Patience));
    }

    [Fact]
    public async Task A_reset_wakes_a_waiting_body_reader_with_the_failure_after_the_data_that_came_before_it()
    {
        using var server = new ScriptedHttp2Server();
        using var invoker = new HttpMessageInvoker(new LargeFrameHttp2Handler());
        var send = invoker.SendAsync(Get(server.Address), default);
        using var connection = await server.AcceptAsync();
        await connection.HandshakeAsync();
        int id = (await connection.ReadFrameAsync(Http2FrameType.Headers)).Header.StreamId;
        await connection.WriteAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, id, ScriptedConnection.Headers(200));
        using var response = await send;
        var body = await response.Content.ReadAsStreamAsync();

        await connection.WriteAsync(Http2FrameType.Data, 0, id, [9, 9]);
        await connection.WriteAsync(Http2FrameType.RstStream, 0, id, ScriptedConnection.UInt32((uint)Http2ErrorCode.InternalError));
        var buffer = new byte[16];
        int n = await body.ReadAsync(buffer).AsTask().WaitAsync(Patience);
        Assert.Equal([9, 9], buffer[..n]);
        var failure = await Assert.ThrowsAsync<HttpProtocolException>(() => body.ReadAsync(buffer).AsTask().WaitAsync(Patience));
        Assert.Equal((long)Http2ErrorCode.InternalError, failure.ErrorCode);
    }
}
