using System.Buffers;
using System.Runtime.InteropServices;
using FlashMla.Core.Backends;
using FlashMla.Core.Backends.Cpu;
using FlashMla.Core.Cache;
using FlashMla.Core.Scheduling;
using FlashMla.Core.Telemetry;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Tests.Scheduling;

/// <summary>
/// Decode requests and KV ingest chunks find only their own tenant's sequences, decodes merge across tenants without
/// mixing, and both obey the tenant's quotas.
/// </summary>
public sealed class TenantDecodeTests : IAsyncDisposable
{
    private readonly CpuBackend _backend = new(new KvPoolGeometry(1, 16), maxThreads: 1);
    private readonly Scheduler _scheduler;

    public TenantDecodeTests()
    {
        _scheduler = new Scheduler(_backend, new CacheLimits(4096, 64),
            new SchedulerOptions { BatchWindow = TimeSpan.FromMilliseconds(50), SequenceLease = TimeSpan.Zero }, new FlashMlaMetrics(),
            ArrayPool<byte>.Shared);
    }

    public async ValueTask DisposeAsync()
    {
        await _scheduler.DisposeAsync();
        _backend.Dispose();
    }

    private Task<ulong> CreateWithRows(Tenant tenant, int rows, int seed) => _scheduler.RunAsync(cache =>
    {
        ulong id = cache.Create(tenant);
        cache.Append(id, 0, RowsOf(rows, seed), tenant);
        return id;
    });

    private static ushort[] RowsOf(int rows, int seed)
    {
        var values = new ushort[rows * MlaDims.HeadDimK];
        var random = new Random(seed);
        for (int i = 0; i < values.Length; i++) values[i] = Bf16.FromFloat((float)(random.NextDouble() - 0.5));
        return values;
    }

    /// <summary>One AppendKv chunk through the scheduler (the path both ports' AppendKv take), as <paramref name="tenant"/>.</summary>
    private Task<int> Ingest(Tenant tenant, ulong id, int rows, int seed) =>
        _scheduler.AppendAsync(KvAppendWork.Create(id, 0, MemoryMarshal.AsBytes(RowsOf(rows, seed).AsSpan()).ToArray(), tenant));

    private Task<ushort[]> ReadAll(Tenant tenant, ulong id) => _scheduler.RunAsync(CacheAccess.Sequence(id), cache =>
    {
        int length = cache.Get(id, tenant).Lengths[0];
        var rows = new ushort[length * MlaDims.HeadDimK];
        cache.Read(id, 0, 0, length, rows, tenant);
        return rows;
    });

    private Task<DecodeResult> Step(Tenant tenant, ulong[] ids, byte[] q, bool newRows = false) =>
        _scheduler.DecodeAsync(DecodeWork.Create(DecodeShape.Create(_scheduler.Options, 0, ids, 1, 4, 0), q,
            newRows ? new byte[ids.Length * MlaDims.KvRowBytes] : ReadOnlyMemory<byte>.Empty, tenant));

    private Task<int> LengthOf(Tenant tenant, ulong id) => _scheduler.RunAsync(cache => cache.Get(id, tenant).Lengths[0]);

    [Fact]
    public async Task Two_tenants_requests_share_a_batch_and_each_gets_what_it_would_alone()
    {
        Tenant a = new("a"), b = new("b");
        ulong ida = await CreateWithRows(a, 40, 1), idb = await CreateWithRows(b, 90, 2);
        byte[] qa = DecodeDataPlaneTests.Query(1, 4, 3), qb = DecodeDataPlaneTests.Query(1, 4, 4);

        var merged = await Task.WhenAll(Step(a, [ida], qa), Step(b, [idb], qb));
        Assert.All(merged, r => Assert.Equal(2, r.Timings.BatchRequests));
        var alone = new[] { await Step(a, [ida], qa), await Step(b, [idb], qb) };
        for (int k = 0; k < 2; k++)
        {
            Assert.Equal(1, alone[k].Timings.BatchRequests);
            Assert.Equal(alone[k].Out.ToArray(), merged[k].Out.ToArray());
            Assert.Equal(alone[k].Lse.ToArray(), merged[k].Lse.ToArray());
            Assert.Equal(4 * 512 * 2, merged[k].Out.Length); // its own rows only
            alone[k].Release();
            merged[k].Release();
        }
        // Counted on the loop when it retires each batch (the results may have gone out before, from the completion).
        var (sa, sb) = (await _scheduler.GetStatsAsync(a), await _scheduler.GetStatsAsync(b));
        Assert.Equal((2L, 2L), (sa.DecodeRequests, sa.DecodeBatches));
        Assert.Equal((2L, 2L), (sb.DecodeRequests, sb.DecodeBatches));
    }

    [Fact]
    public async Task A_decode_naming_another_tenants_sequence_is_not_found_and_changes_nothing()
    {
        Tenant a = new("a"), b = new("b");
        ulong ida = await CreateWithRows(a, 40, 1), idb = await CreateWithRows(b, 10, 2);
        var q = DecodeDataPlaneTests.Query(2, 4, 3);

        var error = await Assert.ThrowsAsync<CacheException>(() => Step(b, [idb, ida], q, newRows: true));
        Assert.Equal(CacheError.NotFound, error.Error);
        Assert.Equal(CacheException.UnknownSequence(ida).Message, error.Message);
        Assert.Equal(40, await LengthOf(a, ida));
        Assert.Equal(10, await LengthOf(b, idb)); // b's own sequence of the refused request is untouched too
        Assert.Equal(0L, (await _scheduler.GetStatsAsync(a)).DecodeRequests);
    }

    [Fact]
    public async Task A_chunk_naming_another_tenants_sequence_is_not_found_and_changes_nothing()
    {
        Tenant a = new("a"), b = new("b");
        ulong ida = await CreateWithRows(a, 40, 1);
        var before = await ReadAll(a, ida);

        var error = await Assert.ThrowsAsync<CacheException>(() => Ingest(b, ida, 30, 2));
        Assert.Equal(CacheError.NotFound, error.Error);
        Assert.Equal(CacheException.UnknownSequence(ida).Message, error.Message);
        Assert.Equal(before, await ReadAll(a, ida));
        Assert.Equal((1, 0), (a.BlocksHeld, b.BlocksHeld)); // nothing was reserved, for either tenant

        Assert.Equal(30, await Ingest(a, ida, 30, 3)); // its owner's chunk lands
        Assert.Equal(70, await LengthOf(a, ida));
        Assert.Equal(2, a.BlocksHeld);
    }

    [Fact]
    public async Task A_chunk_past_the_block_quota_is_refused_and_changes_nothing()
    {
        var a = new Tenant("a", new TenantQuota(MaxBlocks: 2));
        ulong id = await CreateWithRows(a, 64, 1);

        // 65 rows more need 2 blocks, 1 is left under the quota.
        var error = await Assert.ThrowsAsync<CacheException>(() => Ingest(a, id, 65, 2));
        Assert.Equal(CacheError.ResourceExhausted, error.Error);
        Assert.Contains("quota of 2", error.Message);
        Assert.Equal((64, 1), (await LengthOf(a, id), a.BlocksHeld));
        Assert.Equal(1, a.QuotaRefusals(TenantQuotaKind.Blocks));

        Assert.Equal(64, await Ingest(a, id, 64, 3));
        Assert.Equal((128, 2), (await LengthOf(a, id), a.BlocksHeld));
    }

    [Fact]
    public async Task A_decode_past_the_block_quota_is_refused_whole()
    {
        var a = new Tenant("a", new TenantQuota(MaxBlocks: 3));
        ulong first = await CreateWithRows(a, 64, 1), second = await CreateWithRows(a, 64, 2);
        Assert.Equal(2, a.BlocksHeld);
        var q = DecodeDataPlaneTests.Query(2, 4, 3);

        // Each sequence needs a new block for its new row: 2 more, 1 left under the quota.
        var error = await Assert.ThrowsAsync<CacheException>(() => Step(a, [first, second], q, newRows: true));
        Assert.Equal(CacheError.ResourceExhausted, error.Error);
        Assert.Equal((64, 64), (await LengthOf(a, first), await LengthOf(a, second)));
        Assert.Equal(2, a.BlocksHeld);

        var one = await Step(a, [first], DecodeDataPlaneTests.Query(1, 4, 4), newRows: true);
        one.Release();
        Assert.Equal(65, await LengthOf(a, first));
        Assert.Equal(3, a.BlocksHeld);
    }

    [Fact]
    public async Task Stats_show_a_tenant_its_own_counts_and_an_admin_the_totals()
    {
        var a = new Tenant("a", new TenantQuota(MaxBlocks: 10));
        var b = new Tenant("b");
        var admin = new Tenant("ops", isAdmin: true);
        await CreateWithRows(a, 70, 1);
        await CreateWithRows(b, 10, 2);
        await CreateWithRows(b, 10, 3);

        var own = await _scheduler.GetStatsAsync(a);
        Assert.Equal((10, 8, 2, 1), (own.TotalBlocks, own.FreeBlocks, own.UsedBlocks, own.Sequences));
        var others = await _scheduler.GetStatsAsync(b);
        Assert.Equal((16, 12, 2, 2), (others.TotalBlocks, others.FreeBlocks, others.UsedBlocks, others.Sequences));
        var totals = await _scheduler.GetStatsAsync(admin);
        Assert.Equal((16, 12, 4, 3), (totals.TotalBlocks, totals.FreeBlocks, totals.UsedBlocks, totals.Sequences));
    }
}
