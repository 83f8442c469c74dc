using FlashMla.Client;
using FlashMla.Contracts.V1;
using Grpc.Core;
using static FlashMla.Server.Tests.Security.TenantServer;

namespace FlashMla.Server.Tests.Security;

/// <summary>
/// What the issue found: a second client could find another's sequences by counting ids, then read, fork, write,
/// truncate and free them. Over real sockets, tenant b now gets NOT_FOUND for every call naming a's sequence, worded
/// as for an id that never existed, on both ports, and a's rows stay as they were, byte for byte.
/// </summary>
[Collection(DataPlaneCollection.Name)]
public sealed class TenantIsolationTests
{
    private static async Task<string> NotFoundMessage(Func<Task> call)
    {
        var error = await Assert.ThrowsAsync<RpcException>(call);
        Assert.Equal(StatusCode.NotFound, error.StatusCode);
        return error.Status.Detail;
    }

    [Fact]
    public async Task Tenant_b_cannot_see_read_fork_append_to_truncate_free_or_decode_over_tenant_a_sequences()
    {
        await using var server = await TenantServer.StartAsync();
        var a = server.Client(TokenA);
        var b = server.Client(TokenB, dataPlane: true);
        var bOnGrpcPort = server.Client(TokenB);
        ulong id = await a.CreateSequenceAsync();
        var layer0 = Random16.Bf16(new Random(1), 130 * 576);
        var layer1 = Random16.Bf16(new Random(2), 7 * 576);
        await a.AppendKvAsync(id, 0, layer0);
        await a.AppendKvAsync(id, 1, layer1);
        ulong own = await b.CreateSequenceAsync();
        await b.AppendKvAsync(own, 0, Random16.Bf16(new Random(3), 5 * 576));

        // An id nobody holds, for the wording of a plain miss.
        ulong missing = id ^ 0x5555_5555_5555_5555;
        string Normalized(string message, ulong named) => message.Replace(named.ToString(System.Globalization.CultureInfo.InvariantCulture), "<id>");
        var step = new DecodeInput(0, [id], 1, 4, Random16.Bf16(new Random(4), 4 * 576), Random16.Bf16(new Random(5), 576));
        var calls = new (string What, Func<ulong, Task> Call)[]
        {
            ("get", s => b.GetSequenceAsync(s)),
            ("read", s => b.ReadKvAsync(s, 0)),
            ("fork", s => b.ForkAsync(s)),
            ("append on the data-plane port", s => b.AppendKvAsync(s, 0, Random16.Bf16(new Random(6), 576))),
            ("append on the gRPC port", s => bOnGrpcPort.AppendKvAsync(s, 0, Random16.Bf16(new Random(6), 576))),
            ("truncate", s => b.TruncateAsync(s, 0)),
            ("free", s => b.FreeAsync(s)),
            ("decode on the data-plane port", async s => (await b.DecodeOnceAsync(step with { SequenceIds = [s] })).Dispose()),
            ("decode on the gRPC port", async s => (await bOnGrpcPort.DecodeOnceAsync(step with { SequenceIds = [s] })).Dispose()),
            ("decode in a stream", async s =>
            {
                await using var stream = b.OpenDecodeStream();
                (await stream.DecodeAsync(step with { SequenceIds = [s] })).Dispose();
            }),
            ("decode with its own sequence", async s => (await b.DecodeOnceAsync(step with
            {
                SequenceIds = [own, s], Q = Random16.Bf16(new Random(7), 2 * 4 * 576), NewKv = Random16.Bf16(new Random(8), 2 * 576),
            })).Dispose()),
        };
        foreach (var (what, call) in calls)
        {
            string refused = await NotFoundMessage(() => call(id));
            string miss = await NotFoundMessage(() => call(missing));
            Assert.True(Normalized(refused, id) == Normalized(miss, missing), $"{what}: '{refused}' against '{miss}'");
        }

        var info = await a.GetSequenceAsync(id);
        Assert.Equal([130u, 7u], info.LayerLengths);
        Assert.Equal(layer0, await a.ReadKvAsync(id, 0));
        Assert.Equal(layer1, await a.ReadKvAsync(id, 1));
        Assert.Equal(5u, (await b.GetSequenceAsync(own)).LayerLengths[0]); // b's own sequence of the refused decode is untouched
        Assert.Equal(1u, (await a.GetStatsAsync()).Sequences);
    }

    [Fact]
    public async Task Tenant_b_appending_over_the_data_plane_into_tenant_a_sequence_gets_not_found_and_a_rows_stay()
    {
        await using var server = await TenantServer.StartAsync();
        var a = server.Client(TokenA);
        ulong id = await a.CreateSequenceAsync();
        var rows = Random16.Bf16(new Random(1), 70 * 576);
        await a.AppendKvAsync(id, 0, rows);

        // The generated stub on the data-plane port with b's token: the chunk names a's sequence, and then an id nobody holds.
        using var channel = Grpc.Net.Client.GrpcChannel.ForAddress(server.Server.DataPlaneAddress!);
        var ingest = new KvCache.KvCacheClient(channel);
        var asB = new Metadata { { "authorization", "Bearer " + TokenB } };
        async Task AppendAsB(ulong target)
        {
            using var call = ingest.AppendKv(asB);
            await call.RequestStream.WriteAsync(new AppendKvChunk { SequenceId = target, Layer = 0, Kv = TensorBytes.Bf16(Random16.Bf16(new Random(2), 3 * 576), 3, 576) });
            await call.RequestStream.CompleteAsync();
            await call;
        }
        string refused = await NotFoundMessage(() => AppendAsB(id));
        ulong missing = id ^ 0x5555_5555_5555_5555;
        string miss = await NotFoundMessage(() => AppendAsB(missing));
        Assert.Equal(miss.Replace(missing.ToString(System.Globalization.CultureInfo.InvariantCulture), "<id>"),
            refused.Replace(id.ToString(System.Globalization.CultureInfo.InvariantCulture), "<id>"));

        Assert.Equal(rows, await a.ReadKvAsync(id, 0));
        Assert.Equal([70u, 0u], (await a.GetSequenceAsync(id)).LayerLengths);
        Assert.Equal((1u, 2u), ((await a.GetStatsAsync()).Sequences, (await a.GetStatsAsync()).UsedBlocks));
        var b = await server.Client(TokenB).GetStatsAsync();
        Assert.Equal((0u, 0u), (b.Sequences, b.UsedBlocks)); // nothing was reserved for b either
        var scrape = await PrometheusScrape.TakeAsync(server.Server);
        Assert.Equal(2, scrape.Sum("flashmla_dataplane_calls_total", ("method", "/flashmla.v1.KvCache/AppendKv"), ("code", "NotFound")));
    }

    [Fact]
    public async Task Sequence_ids_cannot_be_found_by_counting()
    {
        await using var server = await TenantServer.StartAsync();
        var a = server.Client(TokenA);
        var b = server.Client(TokenB);
        var ids = new List<ulong>();
        for (int i = 0; i < 8; i++) ids.Add(await a.CreateSequenceAsync());
        Assert.All(ids, id => Assert.True(id > 1000));
        for (ulong guess = 1; guess <= 64; guess++) await NotFoundMessage(() => b.GetSequenceAsync(guess));
        Assert.Equal(8u, (await a.GetStatsAsync()).Sequences);
    }

    [Fact]
    public async Task A_fork_belongs_to_the_tenant_of_its_parent()
    {
        await using var server = await TenantServer.StartAsync();
        var a = server.Client(TokenA);
        var b = server.Client(TokenB);
        ulong parent = await a.CreateSequenceAsync();
        await a.AppendKvAsync(parent, 0, Random16.Bf16(new Random(1), 70 * 576));
        var fork = await a.ForkAsync(parent);
        Assert.Equal(70u, (await a.GetSequenceAsync(fork.SequenceId)).LayerLengths[0]);
        await NotFoundMessage(() => b.GetSequenceAsync(fork.SequenceId));
        Assert.Equal(2u, (await a.GetStatsAsync()).Sequences);
    }

    [Fact]
    public async Task Get_stats_shows_a_tenant_its_own_counts_and_the_admin_the_totals()
    {
        await using var server = await TenantServer.StartAsync();
        var a = server.Client(TokenA);
        var b = server.Client(TokenB);
        ulong ida = await a.CreateSequenceAsync();
        await a.AppendKvAsync(ida, 0, Random16.Bf16(new Random(1), 130 * 576));
        for (int i = 0; i < 2; i++)
        {
            ulong idb = await b.CreateSequenceAsync();
            await b.AppendKvAsync(idb, 0, Random16.Bf16(new Random(2), 10 * 576));
        }
        await NotFoundMessage(() => b.DecodeOnceAsync(new DecodeInput(0, [ida], 1, 4, new ushort[4 * 576])));

        var own = await a.GetStatsAsync();
        Assert.Equal((1u, 3u), (own.Sequences, own.UsedBlocks));
        var others = await b.GetStatsAsync();
        Assert.Equal((2u, 2u, 0ul), (others.Sequences, others.UsedBlocks, others.DecodeRequests));
        var totals = await server.Client(TokenOps).GetStatsAsync();
        Assert.Equal((3u, 5u, 64u), (totals.Sequences, totals.UsedBlocks, totals.TotalBlocks));
        Assert.Equal(59u, totals.FreeBlocks);

        var scrape = await PrometheusScrape.TakeAsync(server.Server);
        Assert.Equal(3, scrape.Sum("flashmla_tenant_blocks_held", ("tenant", "a")));
        Assert.Equal(2, scrape.Sum("flashmla_tenant_sequences", ("tenant", "b")));
        Assert.Equal(0, scrape.Sum("flashmla_tenant_sequences", ("tenant", "anonymous")));
    }
}
