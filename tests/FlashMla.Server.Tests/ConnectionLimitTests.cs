using System.Net.Sockets;
using FlashMla.Client;
using FlashMla.Server.DataPlane;
using Grpc.Core;
using Microsoft.Extensions.DependencyInjection;

namespace FlashMla.Server.Tests;

/// <summary>
/// MaxConnectionsPerPort (issue 13, item 3): each port holds at most that many open connections, whatever their
/// clients do or do not send (idle, abandoned or slow ones each pin about 1 MiB of socket buffers); a connection past
/// it is closed as it is accepted, its calls fail UNAVAILABLE, and a connection opened after one closed is served.
/// </summary>
// Alone (the non-parallel data-plane collection): it holds sockets open for seconds and counts the listener's own.
[Collection(DataPlaneCollection.Name)]
public sealed class ConnectionLimitTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    [Fact]
    public async Task The_data_plane_port_closes_a_connection_past_the_limit_and_serves_one_after_a_close()
    {
        await using var server = await TestServer.StartAsync(("MaxConnectionsPerPort", 2));
        var listener = server.Services.GetRequiredService<DataPlaneListener>();
        ulong id = await server.Client.CreateSequenceAsync();
        await server.Client.AppendKvAsync(id, 0, Random16.Bf16(new Random(1), 8 * 576));
        var q = Random16.Bf16(new Random(2), 16 * 576);
        var port = new Uri(server.DataPlaneAddress!).Port;

        // Two connections that send nothing at all fill the port.
        using var first = await ConnectAsync(port);
        using var second = await ConnectAsync(port);
        await WaitForAsync(() => listener.OpenConnections == 2, "two idle connections counted open");

        using (var client = new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { DecodeAddress = server.DataPlaneAddress }))
        {
            var refused = await Assert.ThrowsAsync<RpcException>(() => client.DecodeOnceAsync(new DecodeInput(0, [id], 1, 16, q)));
            Assert.Equal(StatusCode.Unavailable, refused.StatusCode);
        }
        Assert.True(listener.RefusedConnections >= 1, "the refusal is counted");
        Assert.True((await PrometheusScrape.TakeAsync(server)).Sum("flashmla_dataplane_connections_refused_total") >= 1,
            "the refusal is in flashmla_dataplane_connections_refused_total");
        Assert.Equal(2, listener.OpenConnections);

        first.Dispose();
        await WaitForAsync(() => listener.OpenConnections == 1, "the closed connection counted closed");
        using (var client = new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { DecodeAddress = server.DataPlaneAddress }))
        using (var output = await client.DecodeOnceAsync(new DecodeInput(0, [id], 1, 16, q)))
            Assert.Equal(16, output.Lse.Length);
    }

    [Fact]
    public async Task The_grpc_port_closes_a_connection_past_the_limit_and_serves_one_after_a_close()
    {
        await using var server = await TestServer.StartAsync(("MaxConnectionsPerPort", 2));
        await server.Client.GetStatsAsync(); // the test server's own client: one connection
        var port = new Uri(server.GrpcAddress).Port;
        using var idle = await ConnectAsync(port); // and one that sends nothing: the port is full

        await WaitForAsync(async () =>
        {
            using var client = new FlashMlaClient(server.GrpcAddress);
            try
            {
                await client.GetStatsAsync();
                return false; // the idle socket was not counted yet
            }
            catch (RpcException ex) when (ex.StatusCode == StatusCode.Unavailable)
            {
                return true;
            }
        }, "a third connection refused");
        await server.Client.GetStatsAsync(); // the connections within the limit are served on
        Assert.True((await PrometheusScrape.TakeAsync(server)).Sum("kestrel_rejected_connections_total") >= 1,
            "the refusal is in Kestrel's kestrel_rejected_connections_total");

        idle.Dispose();
        await WaitForAsync(async () =>
        {
            using var client = new FlashMlaClient(server.GrpcAddress);
            try
            {
                await client.GetStatsAsync();
                return true;
            }
            catch (RpcException ex) when (ex.StatusCode == StatusCode.Unavailable)
            {
                return false; // the closed socket not yet counted closed
            }
        }, "a connection after one closed served");
    }

    [Fact]
    public void A_negative_limit_is_refused_at_start_up()
    {
        var options = new Hosting.FlashMlaOptions { MaxConnectionsPerPort = -1 };
        Assert.Contains(options.Validate(), p => p.Contains("MaxConnectionsPerPort", StringComparison.Ordinal));
    }

    private static async Task<Socket> ConnectAsync(int port)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(System.Net.IPAddress.Loopback, port);
        return socket;
    }

    private static Task WaitForAsync(Func<bool> condition, string what) => WaitForAsync(() => Task.FromResult(condition()), what);

    private static async Task WaitForAsync(Func<Task<bool>> condition, string what)
    {
        var deadline = DateTime.UtcNow + Patience;
        while (!await condition())
        {
            Assert.True(DateTime.UtcNow < deadline, $"not within {Patience.TotalSeconds} s: {what}");
            await Task.Delay(50);
        }
    }
}
