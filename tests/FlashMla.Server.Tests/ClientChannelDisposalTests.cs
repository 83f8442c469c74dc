using System.Globalization;
using FlashMla.Client;
using FlashMla.Server.Tests.Security;
using Grpc.Core;

namespace FlashMla.Server.Tests;

/// <summary>
/// Disposing a client closes every connection it opened (issue 13, items 7 and 8): the server's gRPC port, counted by
/// Kestrel's own meter (kestrel_active_connections), holds after a churn of clients what it held before. The soak found
/// a client of a data-plane address that made a cache call leaving that call's connection open for the rest of the run:
/// Grpc.Net.Client does not dispose a handler it was given unless told to. The tests keep every
/// disposed client reachable until the end, so that only disposal, never a finalizer, can close a connection. (In this
/// process the connections closed without the fix as well, for a reason not found; the soak's act 7 shows the leak.)
/// </summary>
public sealed class ClientChannelDisposalTests
{
    private const int Clients = 6;

    /// <summary>Disposed clients and channels, kept reachable so that no finalizer closes their sockets.</summary>
    private readonly List<object> _kept = [];

    [Fact]
    public async Task A_data_plane_client_that_made_cache_calls_closes_its_grpc_port_connection_when_disposed()
    {
        await using var server = await TestServer.StartAsync();
        await server.Client.GetStatsAsync(); // the test server's own client keeps one connection open throughout
        double before = await GrpcPortConnectionsAsync(server);
        Assert.True(before >= 1, $"the scrape counts the connection of the test server's own client ({before})");

        for (int i = 0; i < Clients; i++)
        {
            using var client = Keep(new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { DecodeAddress = server.DataPlaneAddress }));
            ulong id = await client.CreateSequenceAsync();
            await client.FreeAsync(id);
        }

        Assert.Equal(before, await SettledConnectionsAsync(server, before));
    }

    [Fact]
    public async Task A_client_on_grpc_channels_closes_its_connections_when_disposed()
    {
        await using var server = await TestServer.StartAsync();
        await server.Client.GetStatsAsync();
        double before = await GrpcPortConnectionsAsync(server);
        Assert.True(before >= 1, $"the scrape counts the connection of the test server's own client ({before})");

        for (int i = 0; i < Clients; i++)
        {
            using var client = Keep(new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { DirectDecode = false, Connections = 2 }));
            await client.GetStatsAsync();
        }

        Assert.Equal(before, await SettledConnectionsAsync(server, before));
    }

    [Fact]
    public async Task Disposing_a_channel_from_CreateChannel_closes_its_connection()
    {
        await using var server = await TestServer.StartAsync();
        await server.Client.GetStatsAsync();
        double before = await GrpcPortConnectionsAsync(server);
        Assert.True(before >= 1, $"the scrape counts the connection of the test server's own client ({before})");

        for (int i = 0; i < Clients; i++)
        {
            using var channel = Keep(FlashMlaClient.CreateChannel(server.GrpcAddress, new FlashMlaClientOptions()));
            using var client = new FlashMlaClient(channel);
            await client.GetStatsAsync();
        }

        Assert.Equal(before, await SettledConnectionsAsync(server, before));
    }

    [Theory]
    [InlineData(true, true)]
    [InlineData(true, false)]
    [InlineData(false, true)]
    [InlineData(false, false)]
    public async Task A_client_refused_for_an_unknown_token_closes_its_connections_when_disposed(bool dataPlane, bool decodeFirst)
    {
        await using var tenants = await TenantServer.StartAsync();
        var server = tenants.Server;
        double before = await GrpcPortConnectionsAsync(server); // 0: the tenant server's own client has made no call

        for (int i = 0; i < Clients; i++)
        {
            using var client = Keep(new FlashMlaClient(server.GrpcAddress,
                new FlashMlaClientOptions { BearerToken = "not-a-token-of-this-server", DecodeAddress = dataPlane ? server.DataPlaneAddress : null }));
            var q = Random16.Bf16(new Random(i), 8 * 576);
            if (decodeFirst)
            {
                var refused = await Assert.ThrowsAsync<RpcException>(() => client.DecodeOnceAsync(new DecodeInput(0, [1UL], 1, 8, q)));
                Assert.Equal(StatusCode.Unauthenticated, refused.StatusCode);
            }
            var stats = await Assert.ThrowsAsync<RpcException>(() => client.GetStatsAsync());
            Assert.Equal(StatusCode.Unauthenticated, stats.StatusCode);
        }

        Assert.Equal(before, await SettledConnectionsAsync(server, before));
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(false, true)]
    [InlineData(true, false)]
    [InlineData(true, true)]
    public async Task A_client_disposed_or_cancelled_with_a_stream_request_in_flight_closes_its_connection(bool dataPlane, bool cancelInstead)
    {
        await using var server = await TestServer.StartAsync();
        ulong id = await server.Client.CreateSequenceAsync();
        await server.Client.AppendKvAsync(id, 0, Random16.Bf16(new Random(1), 64 * 576));
        double before = await GrpcPortConnectionsAsync(server);
        Assert.True(before >= 1, $"the scrape counts the connection of the test server's own client ({before})");

        for (int i = 0; i < Clients; i++)
        {
            var client = Keep(new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { DecodeAddress = dataPlane ? server.DataPlaneAddress : null }));
            using var cancel = new CancellationTokenSource();
            var stream = client.OpenDecodeStream(cancel.Token);
            var pending = await stream.SendAsync(new DecodeInput(0, [id], 1, 8, Random16.Bf16(new Random(i), 8 * 576)));
            if (cancelInstead) cancel.Cancel();
            else client.Dispose(); // the stream is never disposed: its connection just goes away
            try
            {
                (await pending.WaitAsync(TimeSpan.FromSeconds(10))).Dispose();
            }
            catch (RpcException)
            {
                // UNAVAILABLE or CANCELLED: either way the call ended
            }
            if (cancelInstead)
            {
                await stream.DisposeAsync();
                client.Dispose();
            }
        }

        Assert.Equal(before, await SettledConnectionsAsync(server, before));
    }

    private T Keep<T>(T disposable) where T : class
    {
        _kept.Add(disposable);
        return disposable;
    }

    /// <summary>The open connections once they are back at <paramref name="expected"/>, or after 10 s (a leaked one never closes).</summary>
    private static async Task<double> SettledConnectionsAsync(TestServer server, double expected)
    {
        double now = await GrpcPortConnectionsAsync(server);
        for (int i = 0; i < 100 && now != expected; i++)
        {
            await Task.Delay(100);
            now = await GrpcPortConnectionsAsync(server);
        }
        return now;
    }

    private static async Task<double> GrpcPortConnectionsAsync(TestServer server) =>
        (await PrometheusScrape.TakeAsync(server)).Sum("kestrel_active_connections",
            ("server_port", new Uri(server.GrpcAddress).Port.ToString(CultureInfo.InvariantCulture)));
}
