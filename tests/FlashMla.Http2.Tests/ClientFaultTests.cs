using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using FlashMla.Client;
using FlashMla.Client.Transport;
using Grpc.Core;

namespace FlashMla.Http2.Tests;

/// <summary>
/// Every call of <see cref="FlashMlaClient"/> ends, whatever the server does: nothing listening, a socket closed
/// mid-call, a peer that goes silent, a server that never answers. Scripted servers on loopback.
/// </summary>
public sealed class ClientFaultTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    private static DecodeInput Step() => new(0, [1ul], 1, 4, new ushort[4 * 576]);

    private static FlashMlaClient Client(string address, LargeFrameHttp2Options? transport = null) =>
        new(address, new FlashMlaClientOptions { LargeFrames = transport ?? new LargeFrameHttp2Options { KeepAlivePingDelay = Timeout.InfiniteTimeSpan } });

    /// <summary>A loopback address nothing listens on (the port was just bound and released).</summary>
    private static string UnusedAddress()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        int port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return $"http://127.0.0.1:{port}";
    }

    private static async Task<(RpcException Error, TimeSpan Elapsed)> FailureOf(Func<Task> call)
    {
        var watch = Stopwatch.StartNew();
        var error = await Assert.ThrowsAsync<RpcException>(() => call().WaitAsync(Bound));
        return (error, watch.Elapsed);
    }

    [Fact]
    public async Task With_nothing_listening_DecodeOnce_and_a_stream_send_fail_unavailable_at_once()
    {
        using var client = Client(UnusedAddress());
        var (once, _) = await FailureOf(() => client.DecodeOnceAsync(Step()));
        Assert.Equal(StatusCode.Unavailable, once.StatusCode);
        await using var stream = client.OpenDecodeStream();
        var (send, elapsed) = await FailureOf(() => stream.SendAsync(Step()));
        Assert.Equal(StatusCode.Unavailable, send.StatusCode);
        Assert.True(elapsed < TimeSpan.FromSeconds(3), $"refused connect took {elapsed}");
    }

    [Fact]
    public async Task A_server_that_accepts_but_never_sends_SETTINGS_fails_calls_unavailable_within_the_connect_timeout()
    {
        using var server = new ScriptedHttp2Server();
        using var client = Client(server.Address, new LargeFrameHttp2Options { ConnectTimeout = TimeSpan.FromSeconds(1), KeepAlivePingDelay = Timeout.InfiniteTimeSpan });
        var once = FailureOf(() => client.DecodeOnceAsync(Step()));
        using var silent = await server.AcceptAsync(); // reads the preface, answers nothing
        var (error, elapsed) = await once;
        Assert.Equal(StatusCode.Unavailable, error.StatusCode);
        Assert.Contains("SETTINGS", error.Status.Detail);
        Assert.InRange(elapsed, TimeSpan.FromSeconds(0.9), TimeSpan.FromSeconds(5));

        await using var stream = client.OpenDecodeStream();
        var send = FailureOf(() => stream.SendAsync(Step()));
        using var again = await server.AcceptAsync();
        (error, elapsed) = await send;
        Assert.Equal(StatusCode.Unavailable, error.StatusCode);
        Assert.InRange(elapsed, TimeSpan.FromSeconds(0.9), TimeSpan.FromSeconds(5));
    }

    [Fact]
    public async Task Every_pending_call_fails_unavailable_when_the_server_closes_the_socket_mid_call()
    {
        using var server = new ScriptedHttp2Server();
        using var client = Client(server.Address);
        var unary = new[] { client.DecodeOnceAsync(Step()), client.DecodeOnceAsync(Step()) };
        var connection = await server.AcceptAsync();
        await connection.HandshakeAsync();
        await using var stream = client.OpenDecodeStream();
        var sent = await stream.SendAsync(Step()).WaitAsync(Bound); // written: the request is now pending on the server
        var streamed = stream.SendAsync(Step()).Unwrap();
        for (int opened = 0; opened < 3;)
            if ((await connection.ReadFrameAsync()).Header.Type == Http2FrameType.Headers) opened++;
        connection.Dispose(); // the socket closes with three calls and two stream requests unanswered

        foreach (var call in new Task[] { unary[0], unary[1], sent, streamed })
        {
            var (error, _) = await FailureOf(() => call);
            Assert.Equal(StatusCode.Unavailable, error.StatusCode);
        }
    }

    [Fact]
    public async Task Keep_alive_pings_find_a_server_gone_silent_and_fail_its_calls_unavailable()
    {
        using var server = new ScriptedHttp2Server();
        var keepAlive = new LargeFrameHttp2Options { KeepAlivePingDelay = TimeSpan.FromMilliseconds(300), KeepAlivePingTimeout = TimeSpan.FromMilliseconds(500) };
        using var client = Client(server.Address, keepAlive);
        var once = FailureOf(() => client.DecodeOnceAsync(Step()));
        using var connection = await server.AcceptAsync();
        await connection.HandshakeAsync(); // then silence: no SETTINGS ack, no PING ack, no response; the socket stays open
        var (ping, _) = await connection.ReadFrameAsync(Http2FrameType.Ping);
        Assert.False(ping.Has(Http2FrameFlags.Ack));
        var (error, elapsed) = await once;
        Assert.Equal(StatusCode.Unavailable, error.StatusCode);
        Assert.Contains("PING", error.Status.Detail);
        Assert.InRange(elapsed, TimeSpan.FromMilliseconds(700), TimeSpan.FromSeconds(5));
    }

    [Fact]
    public async Task Keep_alive_leaves_a_connection_whose_server_acks_its_pings_open()
    {
        using var server = new ScriptedHttp2Server();
        var keepAlive = new LargeFrameHttp2Options { KeepAlivePingDelay = TimeSpan.FromMilliseconds(200), KeepAlivePingTimeout = TimeSpan.FromMilliseconds(300) };
        using var client = Client(server.Address, keepAlive);
        var once = client.DecodeOnceAsync(Step());
        using var connection = await server.AcceptAsync();
        await connection.HandshakeAsync();
        for (int i = 0; i < 5; i++) // well past delay + timeout, with every PING answered
        {
            var (_, opaque) = await connection.ReadFrameAsync(Http2FrameType.Ping);
            await connection.WriteAsync(Http2FrameType.Ping, Http2FrameFlags.Ack, 0, opaque);
        }
        Assert.False(once.IsCompleted);
        connection.Dispose();
        var (error, _) = await FailureOf(() => once);
        Assert.Equal(StatusCode.Unavailable, error.StatusCode);
    }

    [Fact]
    public async Task A_deadline_ends_a_call_and_a_stream_the_server_never_answers()
    {
        using var server = new ScriptedHttp2Server();
        using var client = Client(server.Address);
        var once = FailureOf(() => client.DecodeOnceAsync(Step(), deadline: DateTime.UtcNow.AddMilliseconds(500)));
        using var connection = await server.AcceptAsync();
        await connection.HandshakeAsync();
        var (error, elapsed) = await once;
        Assert.Equal(StatusCode.DeadlineExceeded, error.StatusCode);
        Assert.InRange(elapsed, TimeSpan.FromMilliseconds(400), TimeSpan.FromSeconds(5));

        await using var stream = client.OpenDecodeStream(deadline: DateTime.UtcNow.AddMilliseconds(500));
        var response = await stream.SendAsync(Step()).WaitAsync(Bound);
        (error, elapsed) = await FailureOf(() => response);
        Assert.Equal(StatusCode.DeadlineExceeded, error.StatusCode);
        Assert.True(elapsed < TimeSpan.FromSeconds(5), $"{elapsed}");
    }

    /// <summary>Reads one request to its END_STREAM on <paramref name="connection"/>: its stream id and its body.</summary>
    private static async Task<(int StreamId, byte[] Body)> ReadRequestAsync(ScriptedConnection connection)
    {
        int id = (await connection.ReadFrameAsync(Http2FrameType.Headers)).Header.StreamId;
        var body = new List<byte>();
        while (true)
        {
            var (header, payload) = await connection.ReadFrameAsync(Http2FrameType.Data);
            body.AddRange(payload);
            if (header.Has(Http2FrameFlags.EndStream)) return (id, [.. body]);
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_unary_call_refused_by_GOAWAY_before_it_was_processed_goes_again_on_a_new_connection_when_asked(bool retry)
    {
        using var server = new ScriptedHttp2Server();
        using var client = new FlashMlaClient(server.Address, new FlashMlaClientOptions
        {
            RetryNotProcessed = retry,
            LargeFrames = new LargeFrameHttp2Options { KeepAlivePingDelay = Timeout.InfiniteTimeSpan },
        });
        var once = FailureOf(() => client.DecodeOnceAsync(Step()));
        using var draining = await server.AcceptAsync();
        await draining.HandshakeAsync();
        var (first, sent) = await ReadRequestAsync(draining);
        // The server drains: it processed nothing above stream 0, so the call's stream was never seen.
        await draining.WriteAsync(Http2FrameType.GoAway, 0, 0, [.. ScriptedConnection.UInt32(0), .. ScriptedConnection.UInt32(0)]);
        if (!retry)
        {
            var (refused, _) = await once;
            Assert.Equal(StatusCode.Unavailable, refused.StatusCode);
            Assert.Contains("GOAWAY", refused.Status.Detail);
            return;
        }
        using var fresh = await server.AcceptAsync();
        await fresh.HandshakeAsync();
        var (second, resent) = await ReadRequestAsync(fresh);
        Assert.Equal(1, first);
        Assert.Equal(1, second); // a new connection's first stream
        Assert.Equal(sent, resent); // the same request, whole
        await fresh.WriteAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders | Http2FrameFlags.EndStream, second,
            ScriptedConnection.Headers(200, ("content-type", "application/grpc"), ("grpc-status", "5"), ("grpc-message", "answered by the second server")));
        var (error, _) = await once;
        Assert.Equal(StatusCode.NotFound, error.StatusCode); // the second server's answer, not the refusal
        Assert.Equal("answered by the second server", error.Status.Detail);
    }
}
