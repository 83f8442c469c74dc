using System.Globalization;
using FlashMla.Client;

namespace FlashMla.Server.Tests;

/// <summary>
/// Disposing a client closes every connection it opened (issue 13, items 7 and 8): the server's gRPC port, counted by
/// Kestrel's own meter (kestrel_active_connections), holds after a churn of clients what it held before. The soak found
/// a client of a data-plane address that made a cache call leaving that call's connection open for good: Grpc.Net.Client
/// does not dispose a handler it was given unless told to.
/// </summary>
public sealed class ClientChannelDisposalTests
{
    private const int Clients = 6;

    [Fact]
    public async Task A_data_plane_client_that_made_cache_calls_closes_its_grpc_port_connection_when_disposed()
    {
        await using var server = await TestServer.StartAsync();
        await server.Client.GetStatsAsync(); // the test server's own client keeps one connection open throughout
        double before = await GrpcPortConnectionsAsync(server);

        for (int i = 0; i < Clients; i++)
        {
            using var client = new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { DecodeAddress = server.DataPlaneAddress });
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

        for (int i = 0; i < Clients; i++)
        {
            using var client = new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { DirectDecode = false, Connections = 2 });
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

        for (int i = 0; i < Clients; i++)
        {
            using var channel = FlashMlaClient.CreateChannel(server.GrpcAddress, new FlashMlaClientOptions());
            using var client = new FlashMlaClient(channel);
            await client.GetStatsAsync();
        }

        Assert.Equal(before, await SettledConnectionsAsync(server, before));
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
