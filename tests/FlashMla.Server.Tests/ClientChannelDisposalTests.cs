using FlashMla.Client;
using FlashMla.Server.Tests.Security;
using Grpc.Core;

namespace FlashMla.Server.Tests;

/// <summary>
/// Disposing a client closes every connection it opened (issue 13, items 7 and 8): the server's gRPC and data-plane
/// ports hold after a churn of clients what they held before: nothing, as the kernel's socket table counts them
/// (<see cref="ServerSockets"/>). The soak found a client of a data-plane address that made a cache call leaving that call's
/// connection open for the rest of the run: Grpc.Net.Client does not dispose a handler it was given unless told to.
/// These tests once read kestrel_active_connections and passed with the leak: the Prometheus exporter answers a scrape
/// within 300 ms of the last one with that one's text (ScrapeResponseCacheDurationMilliseconds), and a churn of clients
/// is faster than that, so the count from before the clients read as "closed"; in a full run other test servers'
/// connections were in the count too. Each test now also sees the clients' connections open before it expects them
/// closed, so that a count that cannot see them fails instead of passing. The disposed clients stay reachable until
/// the end, so that only disposal, never a finalizer, can close a connection.
/// </summary>
public sealed class ClientChannelDisposalTests
{
    private const int Clients = 4;

    /// <summary>Long enough for a connection to open or close on a loaded 2-core machine; a leaked one never closes.</summary>
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(20);

    /// <summary>Disposed clients and channels, kept reachable so that no finalizer closes their sockets.</summary>
    private readonly List<IDisposable> _kept = [];

    [Fact]
    public async Task A_data_plane_client_that_made_cache_calls_closes_its_grpc_port_connection_when_disposed()
    {
        await using var server = await TestServer.StartAsync();
        var before = await NothingOpenAsync(server); // the test server's own client makes no call

        for (int i = 0; i < Clients; i++)
        {
            var client = Keep(new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { DecodeAddress = server.DataPlaneAddress }));
            ulong id = await client.CreateSequenceAsync();
            await client.FreeAsync(id);
        }

        await ExpectOpenThenClosedAsync(server, before, before with { Grpc = before.Grpc + Clients });
    }

    [Fact]
    public async Task A_client_on_grpc_channels_closes_its_connections_when_disposed()
    {
        await using var server = await TestServer.StartAsync();
        var before = await NothingOpenAsync(server);

        for (int i = 0; i < Clients; i++)
        {
            var client = Keep(new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { DirectDecode = false, Connections = 2 }));
            await client.GetStatsAsync(); // on the first channel: the second never connects
        }

        await ExpectOpenThenClosedAsync(server, before, before with { Grpc = before.Grpc + Clients });
    }

    [Fact]
    public async Task Disposing_a_channel_from_CreateChannel_closes_its_connection()
    {
        await using var server = await TestServer.StartAsync();
        var before = await NothingOpenAsync(server);

        for (int i = 0; i < Clients; i++)
        {
            var channel = FlashMlaClient.CreateChannel(server.GrpcAddress, new FlashMlaClientOptions());
            await new FlashMlaClient(channel).GetStatsAsync(); // a client of a given channel leaves the channel to its owner
            Keep(channel);
        }

        await ExpectOpenThenClosedAsync(server, before, before with { Grpc = before.Grpc + Clients });
    }

    /// <summary>The soak's act 7 (dataPlane true): a decode and a cache call refused for the token, each on its own port.</summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_client_refused_for_an_unknown_token_closes_its_connections_when_disposed(bool dataPlane)
    {
        await using var tenants = await TenantServer.StartAsync();
        var server = tenants.Server;
        var before = await NothingOpenAsync(server);

        for (int i = 0; i < Clients; i++)
        {
            var client = Keep(new FlashMlaClient(server.GrpcAddress,
                new FlashMlaClientOptions { BearerToken = "not-a-token-of-this-server", DecodeAddress = dataPlane ? server.DataPlaneAddress : null }));
            var refused = await Assert.ThrowsAsync<RpcException>(() => client.DecodeOnceAsync(new DecodeInput(0, [1UL], 1, 8, Random16.Bf16(new Random(i), 8 * 576))));
            Assert.Equal(StatusCode.Unauthenticated, refused.StatusCode);
            var stats = await Assert.ThrowsAsync<RpcException>(() => client.GetStatsAsync());
            Assert.Equal(StatusCode.Unauthenticated, stats.StatusCode);
        }

        // Without a data-plane address the decode and the cache call share one gRPC-port connection.
        await ExpectOpenThenClosedAsync(server, before,
            new Connections(before.Grpc + Clients, before.DataPlane + (dataPlane ? Clients : 0)));
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(false, true)]
    [InlineData(true, false)]
    [InlineData(true, true)]
    public async Task A_client_disposed_or_cancelled_with_a_stream_request_in_flight_closes_its_connection(bool dataPlane, bool cancelInstead)
    {
        await using var server = await TestServer.StartAsync();
        ulong id;
        using (var owner = new FlashMlaClient(server.GrpcAddress))
        {
            id = await owner.CreateSequenceAsync();
            await owner.AppendKvAsync(id, 0, Random16.Bf16(new Random(1), 64 * 576));
        }
        var before = await NothingOpenAsync(server);
        var open = dataPlane ? before with { DataPlane = before.DataPlane + 1 } : before with { Grpc = before.Grpc + 1 };

        for (int i = 0; i < Clients; i++)
        {
            var client = Keep(new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { DecodeAddress = dataPlane ? server.DataPlaneAddress : null }));
            using var cancel = new CancellationTokenSource();
            var stream = client.OpenDecodeStream(cancel.Token);
            var pending = await stream.SendAsync(new DecodeInput(0, [id], 1, 8, Random16.Bf16(new Random(i), 8 * 576)));
            Assert.Equal(open, await AwaitConnectionsAsync(server, open)); // each client's own stream connection
            if (cancelInstead) cancel.Cancel();
            else client.Dispose(); // the stream is never disposed: its connection just goes away
            try
            {
                (await pending.WaitAsync(Patience)).Dispose();
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
            Assert.Equal(before, await AwaitConnectionsAsync(server, before));
        }
    }

    private T Keep<T>(T disposable) where T : IDisposable
    {
        _kept.Add(disposable);
        return disposable;
    }

    /// <summary>
    /// Sees <paramref name="open"/> (the kept clients' connections, which proves the count can see them),
    /// disposes the kept clients, then sees <paramref name="before"/> again.
    /// </summary>
    private async Task ExpectOpenThenClosedAsync(TestServer server, Connections before, Connections open)
    {
        Assert.Equal(open, await AwaitConnectionsAsync(server, open));
        foreach (var kept in _kept) kept.Dispose();
        Assert.Equal(before, await AwaitConnectionsAsync(server, before));
    }

    /// <summary>
    /// No connection open on either port: the counts the tests expect are then the tested clients' own, and no idle
    /// connection of another client can close (or stay) in the way of them.
    /// </summary>
    private static async Task<Connections> NothingOpenAsync(TestServer server)
    {
        var nothing = new Connections(0, 0);
        Assert.Equal(nothing, await AwaitConnectionsAsync(server, nothing));
        return nothing;
    }

    /// <summary>The open connections once they are <paramref name="expected"/>, or after <see cref="Patience"/>.</summary>
    private static async Task<Connections> AwaitConnectionsAsync(TestServer server, Connections expected)
    {
        var deadline = DateTime.UtcNow + Patience;
        var now = await ConnectionsAsync(server);
        while (now != expected && DateTime.UtcNow < deadline)
        {
            await Task.Delay(100);
            now = await ConnectionsAsync(server);
        }
        return now;
    }

    private static Task<Connections> ConnectionsAsync(TestServer server) =>
        Task.FromResult(new Connections(ServerSockets.Open(new Uri(server.GrpcAddress).Port), ServerSockets.Open(new Uri(server.DataPlaneAddress!).Port)));

    /// <summary>Connections open on the server's gRPC port and data-plane port.</summary>
    private readonly record struct Connections(double Grpc, double DataPlane);
}
