using System.Buffers.Binary;
using System.Diagnostics;
using System.Net.Sockets;
using FlashMla.Http2;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace FlashMla.Server.Tests;

/// <summary>
/// Connections closed for what their client does not do (KeepAliveTimeoutSeconds, RequestHeadersTimeoutSeconds,
/// MinRequestBodyDataRate): idle ones with GOAWAY(NO_ERROR), slow ones with GOAWAY(ENHANCE_YOUR_CALM), on the
/// data-plane port; Kestrel's port gets the same limits.
/// </summary>
public sealed class ConnectionTimeoutTests
{
    [Fact]
    public async Task An_idle_connection_is_closed_with_goaway_after_the_keep_alive_timeout_though_it_pings()
    {
        await using var server = await TestServer.StartAsync(("KeepAliveTimeoutSeconds", 1));
        await using var client = await RawHttp2Client.ConnectAsync(server.DataPlaneAddress!);
        var clock = Stopwatch.StartNew();
        using var pinging = new CancellationTokenSource();
        var pings = Task.Run(async () =>
        {
            try
            {
                while (!pinging.IsCancellationRequested)
                {
                    await client.SendAsync(Http2FrameType.Ping, Http2FrameFlags.None, 0, new byte[8]);
                    await Task.Delay(200, pinging.Token);
                }
            }
            catch (Exception ex) when (ex is SocketException or OperationCanceledException or ObjectDisposedException)
            {
            }
        });
        var goAway = await client.ReadUntilAsync(h => h.Type == Http2FrameType.GoAway);
        pinging.Cancel();
        await pings;
        Assert.NotNull(goAway);
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(goAway.Value.Payload.AsSpan(4))); // NO_ERROR
        Assert.True(clock.Elapsed >= TimeSpan.FromSeconds(0.9), $"closed after {clock.Elapsed}, before the timeout");
        Assert.True(await ClosedAsync(client), "the connection stayed open after its GOAWAY");
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(5), $"closed only after {clock.Elapsed}");
    }

    [Fact]
    public async Task A_connection_with_an_open_stream_is_not_idle()
    {
        await using var server = await TestServer.StartAsync(("KeepAliveTimeoutSeconds", 1));
        await using var client = await RawHttp2Client.ConnectAsync(server.DataPlaneAddress!);
        await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, 1, RawHttp2Client.RequestHeaders("/flashmla.v1.Decoder/Decode"));
        await Task.Delay(2500);
        await client.SendAsync(Http2FrameType.Ping, Http2FrameFlags.None, 0, [1, 2, 3, 4, 5, 6, 7, 8]);
        var next = await client.ReadUntilAsync(h => h.Type is Http2FrameType.GoAway || (h.Type == Http2FrameType.Ping && h.Has(Http2FrameFlags.Ack)));
        Assert.Equal(Http2FrameType.Ping, next?.Header.Type);
    }

    [Fact]
    public async Task A_client_that_never_sends_its_preface_is_closed_after_the_headers_timeout()
    {
        await using var server = await TestServer.StartAsync(("RequestHeadersTimeoutSeconds", 1));
        using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync("127.0.0.1", new Uri(server.DataPlaneAddress!).Port);
        await socket.SendAsync(Http2Frames.Preface[..10].ToArray()); // half a preface, then silence
        var clock = Stopwatch.StartNew();
        var buffer = new byte[4096];
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        try
        {
            while (await socket.ReceiveAsync(buffer, SocketFlags.None, timeout.Token) > 0)
            {
            }
        }
        catch (SocketException)
        {
            // Reset: closed as well.
        }
        Assert.InRange(clock.Elapsed, TimeSpan.FromSeconds(0.5), TimeSpan.FromSeconds(4));
    }

    [Fact]
    public async Task A_header_block_left_unfinished_is_cut_off_with_enhance_your_calm_after_the_headers_timeout()
    {
        await using var server = await TestServer.StartAsync(("RequestHeadersTimeoutSeconds", 1));
        await using var client = await RawHttp2Client.ConnectAsync(server.DataPlaneAddress!);
        var block = RawHttp2Client.RequestHeaders("/flashmla.v1.Decoder/Decode");
        // HEADERS without END_HEADERS: the CONTINUATION with the rest never comes.
        await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.None, 1, block.AsSpan(0, block.Length / 2));
        var clock = Stopwatch.StartNew();
        var goAway = await client.ReadUntilAsync(h => h.Type == Http2FrameType.GoAway);
        Assert.NotNull(goAway);
        Assert.Equal((uint)Http2ErrorCode.EnhanceYourCalm, BinaryPrimitives.ReadUInt32BigEndian(goAway.Value.Payload.AsSpan(4)));
        Assert.InRange(clock.Elapsed, TimeSpan.FromSeconds(0.5), TimeSpan.FromSeconds(4));
        Assert.True(await ClosedAsync(client));
    }

    [Fact]
    public async Task A_request_message_trickled_below_the_minimum_rate_is_cut_off_after_the_grace_period()
    {
        await using var server = await TestServer.StartAsync(("MinRequestBodyDataRate", 240), ("MinRequestBodyDataRateGraceSeconds", 1.5));
        var ids = await RawHttp2Client.SequencesAsync(server, 1, 10);
        await using var client = await RawHttp2Client.ConnectAsync(server.DataPlaneAddress!);
        await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, 1, RawHttp2Client.RequestHeaders("/flashmla.v1.Decoder/Decode"));
        var message = RawHttp2Client.GrpcMessage(ids, 16, 1);
        var clock = Stopwatch.StartNew();
        // 10 bytes every 100 ms: 100 bytes/s, in DATA frames each whole (the message is what stays unfinished).
        var trickle = Task.Run(async () =>
        {
            try
            {
                for (int offset = 0; offset < message.Length; offset += 10)
                {
                    await client.SendAsync(Http2FrameType.Data, Http2FrameFlags.None, 1, message.AsSpan(offset, Math.Min(10, message.Length - offset)));
                    await Task.Delay(100);
                }
            }
            catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
            {
            }
        });
        var goAway = await client.ReadUntilAsync(h => h.Type == Http2FrameType.GoAway);
        Assert.NotNull(goAway);
        Assert.Equal((uint)Http2ErrorCode.EnhanceYourCalm, BinaryPrimitives.ReadUInt32BigEndian(goAway.Value.Payload.AsSpan(4)));
        Assert.InRange(clock.Elapsed, TimeSpan.FromSeconds(1.5), TimeSpan.FromSeconds(6));
        Assert.True(await ClosedAsync(client));
        await trickle;
    }

    [Fact]
    public void Kestrels_port_gets_the_same_limits()
    {
        var app = FlashMla.Server.Hosting.FlashMlaServerApp.Build(["--FlashMla:Backend=cpu", "--FlashMla:TotalBlocks=8", "--FlashMla:KeepAliveTimeoutSeconds=17",
            "--FlashMla:RequestHeadersTimeoutSeconds=0", "--FlashMla:MinRequestBodyDataRate=500", "--FlashMla:MinRequestBodyDataRateGraceSeconds=3"]);
        var limits = app.Services.GetRequiredService<IOptions<KestrelServerOptions>>().Value.Limits;
        Assert.Equal(TimeSpan.FromSeconds(17), limits.KeepAliveTimeout);
        Assert.Equal(TimeSpan.MaxValue, limits.RequestHeadersTimeout); // Kestrel stores "never" as MaxValue
        Assert.Equal(500, limits.MinRequestBodyDataRate!.BytesPerSecond);
        Assert.Equal(TimeSpan.FromSeconds(3), limits.MinRequestBodyDataRate.GracePeriod);
    }

    [Fact]
    public async Task An_idle_connection_to_kestrels_port_is_closed_after_the_keep_alive_timeout()
    {
        await using var server = await TestServer.StartAsync(("KeepAliveTimeoutSeconds", 1));
        await using var client = await RawHttp2Client.ConnectAsync(server.GrpcAddress);
        var clock = Stopwatch.StartNew();
        Assert.True(await ClosedAsync(client));
        Assert.InRange(clock.Elapsed, TimeSpan.FromSeconds(0.9), TimeSpan.FromSeconds(5));
    }

    /// <summary>Reads until the server closes the connection (true), or the client's 20 s run out (false).</summary>
    private static async Task<bool> ClosedAsync(RawHttp2Client client)
    {
        try
        {
            while (await client.ReadFrameAsync() is not null)
            {
            }
            return true;
        }
        catch (SocketException)
        {
            return true; // reset: closed too
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }
}
