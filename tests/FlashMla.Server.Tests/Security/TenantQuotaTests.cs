using FlashMla.Client;
using Grpc.Core;
using static FlashMla.Server.Tests.Security.TenantServer;

namespace FlashMla.Server.Tests.Security;

/// <summary>The token file's quotas over real sockets: RESOURCE_EXHAUSTED past them, and a refused request changes nothing.</summary>
[Collection(DataPlaneCollection.Name)]
public sealed class TenantQuotaTests
{
    private static async Task AssertExhausted(Func<Task> call, string contains)
    {
        var error = await Assert.ThrowsAsync<RpcException>(call);
        Assert.Equal(StatusCode.ResourceExhausted, error.StatusCode);
        Assert.Contains(contains, error.Status.Detail);
    }

    [Fact]
    public async Task A_block_quota_refuses_uploads_forks_and_decodes_whole()
    {
        await using var server = await TenantServer.StartAsync([Tenant("a", [TokenA], maxBlocks: 3), Tenant("b", [TokenB])]);
        var a = server.Client(TokenA, dataPlane: true);
        ulong first = await a.CreateSequenceAsync(), second = await a.CreateSequenceAsync();
        var rows = Random16.Bf16(new Random(1), 64 * 576);
        await a.AppendKvAsync(first, 0, rows);
        await a.AppendKvAsync(second, 0, rows);

        // A block each wanted, one left: the upload of two chunks fails at the second, which appends nothing (the first went in).
        await AssertExhausted(() => a.AppendKvAsync([new KvUpload(first, 0, rows), new KvUpload(second, 0, rows)], rowsPerChunk: 64), "quota of 3");
        Assert.Equal([128u, 0u], (await a.GetSequenceAsync(first)).LayerLengths);
        Assert.Equal([64u, 0u], (await a.GetSequenceAsync(second)).LayerLengths);
        Assert.Equal(3u, (await a.GetStatsAsync()).UsedBlocks);

        // A decode with new rows for both: each needs a block, none left: refused whole, on the data-plane port.
        var step = new DecodeInput(0, [first, second], 1, 4, Random16.Bf16(new Random(2), 2 * 4 * 576), Random16.Bf16(new Random(3), 2 * 576));
        await AssertExhausted(async () => (await a.DecodeOnceAsync(step)).Dispose(), "quota of 3");
        await AssertExhausted(() => a.ForkAsync(second), "quota of 3");
        Assert.Equal(128u, (await a.GetSequenceAsync(first)).LayerLengths[0]);
        Assert.Equal(64u, (await a.GetSequenceAsync(second)).LayerLengths[0]);
        Assert.Equal((2u, 3u), ((await a.GetStatsAsync()).Sequences, (await a.GetStatsAsync()).UsedBlocks));

        // b is not bound by a's quota.
        var b = server.Client(TokenB);
        ulong other = await b.CreateSequenceAsync();
        await b.AppendKvAsync(other, 0, Random16.Bf16(new Random(4), 300 * 576));
        var scrape = await PrometheusScrape.TakeAsync(server.Server);
        Assert.Equal(3, scrape.Sum("flashmla_tenant_quota_refusals_total", ("tenant", "a"), ("quota", "blocks")));
        Assert.Equal(0, scrape.Sum("flashmla_tenant_quota_refusals_total", ("tenant", "b")));
    }

    [Fact]
    public async Task A_sequence_quota_refuses_creates_and_forks()
    {
        await using var server = await TenantServer.StartAsync([Tenant("a", [TokenA], maxSequences: 2)]);
        var a = server.Client(TokenA);
        ulong first = await a.CreateSequenceAsync();
        await a.ForkAsync(first);
        await AssertExhausted(() => a.CreateSequenceAsync(), "maximum of 2 sequences");
        await AssertExhausted(() => a.ForkAsync(first), "maximum of 2 sequences");
        Assert.Equal(2u, (await a.GetStatsAsync()).Sequences);
        await a.FreeAsync(first);
        await a.CreateSequenceAsync();
    }

    [Fact]
    public async Task A_requests_in_flight_quota_refuses_calls_while_others_are_open()
    {
        await using var server = await TenantServer.StartAsync([Tenant("a", [TokenA], maxRequestsInFlight: 1)]);
        var a = server.Client(TokenA);
        ulong id = await a.CreateSequenceAsync();
        // An upload left open holds the tenant's one slot until it completes.
        using var upload = a.Cache.AppendKv();
        await upload.RequestStream.WriteAsync(new Contracts.V1.AppendKvChunk { SequenceId = id, Kv = TensorBytes.Bf16(Random16.Bf16(new Random(1), 576), 1, 576) });
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        RpcException? refused = null;
        while (refused is null && DateTime.UtcNow < deadline)
        {
            try
            {
                await a.GetSequenceAsync(id); // succeeds until the upload's handler has taken the slot
                await Task.Delay(20);
            }
            catch (RpcException ex)
            {
                refused = ex;
            }
        }
        Assert.NotNull(refused);
        Assert.Equal(StatusCode.ResourceExhausted, refused.StatusCode);
        Assert.Contains("maximum of 1 requests in flight", refused.Status.Detail);
        await upload.RequestStream.CompleteAsync();
        Assert.Equal(1ul, (await upload).Rows);
        Assert.Equal(1u, (await a.GetSequenceAsync(id)).LayerLengths[0]);
    }
}
