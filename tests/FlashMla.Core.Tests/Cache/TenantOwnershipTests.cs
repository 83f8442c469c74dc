using FlashMla.Core.Backends;
using FlashMla.Core.Backends.Cpu;
using FlashMla.Core.Cache;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Tests.Cache;

/// <summary>Sequences belong to the tenant that made them; quotas bound what a tenant holds; ids are random.</summary>
public sealed class TenantOwnershipTests : IDisposable
{
    private readonly CpuBackend _backend = new(new KvPoolGeometry(2, 16), maxThreads: 1);

    public void Dispose() => _backend.Dispose();

    private PagedKvCache NewCache() => new(_backend, new CacheLimits(MaxSequenceLength: 4096, MaxSequences: 64));

    private static ushort[] Rows(int count, int seed)
    {
        var rows = new ushort[count * MlaDims.HeadDimK];
        var random = new Random(seed);
        for (int i = 0; i < rows.Length; i++) rows[i] = (ushort)random.Next(0x3000, 0x4000);
        return rows;
    }

    private static ushort[] ReadAll(PagedKvCache cache, ulong id, int layer, Tenant tenant)
    {
        int length = cache.Get(id, tenant).Lengths[layer];
        var rows = new ushort[length * MlaDims.HeadDimK];
        cache.Read(id, layer, 0, length, rows, tenant);
        return rows;
    }

    [Fact]
    public void Another_tenants_sequence_is_not_found_by_every_operation_and_stays_unchanged()
    {
        var cache = NewCache();
        Tenant a = new("a"), b = new("b");
        ulong id = cache.Create(a);
        cache.Append(id, 0, Rows(70, 1), a);
        cache.Append(id, 1, Rows(3, 2), a);
        var before = (Layer0: ReadAll(cache, id, 0, a), Layer1: ReadAll(cache, id, 1, a));
        long lastUsed = cache.Sequences.Single().LastUsed;
        int used = cache.Allocator.UsedBlocks;
        string missing = CacheException.UnknownSequence(id).Message;

        var refusals = new Action[]
        {
            () => cache.Get(id, b),
            () => cache.Append(id, 0, Rows(1, 3), b),
            () => cache.Fork(id, b),
            () => cache.Truncate(id, 0, b),
            () => cache.Free(id, b),
            () => cache.Read(id, 0, 0, 1, new ushort[MlaDims.HeadDimK], b),
            () => cache.Get(id), // the default tenant is a tenant like any other
        };
        foreach (var refusal in refusals)
        {
            var error = Assert.Throws<CacheException>(refusal);
            Assert.Equal(CacheError.NotFound, error.Error);
            Assert.Equal(missing, error.Message); // word for word what an id that never existed gets
        }

        Assert.Equal(lastUsed, cache.Sequences.Single().LastUsed); // b's calls did not renew its lease
        Assert.Equal(before.Layer0, ReadAll(cache, id, 0, a));
        Assert.Equal(before.Layer1, ReadAll(cache, id, 1, a));
        Assert.Equal([70, 3], cache.Get(id, a).Lengths.ToArray());
        Assert.Equal(used, cache.Allocator.UsedBlocks);
        Assert.Equal((1, 0), (a.Sequences, b.Sequences));
        Assert.Equal((2, 0), (a.BlocksHeld, b.BlocksHeld));
    }

    [Fact]
    public void A_refused_lookup_by_another_tenant_does_not_restart_the_lease()
    {
        var cache = NewCache();
        Tenant a = new("a"), b = new("b");
        ulong id = cache.Create(a);
        long lastUsed = cache.Sequences.Single().LastUsed;
        Thread.Sleep(5);
        Assert.Throws<CacheException>(() => cache.Get(id, b));
        Assert.Equal(lastUsed, cache.Sequences.Single().LastUsed);
        Assert.Equal(1, cache.ReclaimIdle(System.Diagnostics.Stopwatch.GetTimestamp(), leaseTicks: 0));
        Assert.Equal((0, 1L), (a.Sequences, a.ReclaimedSequences));
    }

    [Fact]
    public void A_fork_belongs_to_its_parents_tenant_and_shared_blocks_count_once()
    {
        var cache = NewCache();
        Tenant a = new("a"), b = new("b");
        ulong parent = cache.Create(a);
        cache.Append(parent, 0, Rows(130, 1), a);
        cache.Append(parent, 1, Rows(130, 2), a);
        Assert.Equal(3, a.BlocksHeld);

        var (child, shared, copied) = cache.Fork(parent, a);
        Assert.Equal((2, 1), (shared, copied));
        Assert.Same(a, cache.Get(child, a).Owner);
        Assert.Throws<CacheException>(() => cache.Get(child, b));
        Assert.Equal(4, a.BlocksHeld); // the two shared blocks once, the partial one twice
        Assert.Equal(cache.Allocator.UsedBlocks, a.BlocksHeld);

        cache.Truncate(child, 10, a); // writes into a shared block now need a private copy
        cache.Append(child, 0, Rows(1, 3), a);
        Assert.Equal(cache.Allocator.UsedBlocks, a.BlocksHeld);

        cache.Free(parent, a);
        cache.Free(child, a);
        Assert.Equal((0, 0, 0), (a.BlocksHeld, a.Sequences, cache.Allocator.UsedBlocks));
    }

    [Fact]
    public void A_block_quota_refuses_a_write_whole_and_leaves_other_tenants_alone()
    {
        var cache = NewCache();
        Tenant a = new("a", new TenantQuota(MaxBlocks: 2)), b = new("b");
        ulong id = cache.Create(a);
        cache.Append(id, 0, Rows(100, 1), a);
        var rows = ReadAll(cache, id, 0, a);

        var error = Assert.Throws<CacheException>(() => cache.Append(id, 0, Rows(40, 2), a));
        Assert.Equal(CacheError.ResourceExhausted, error.Error);
        Assert.Contains("quota of 2", error.Message);
        Assert.Equal(100, cache.Get(id, a).Lengths[0]);
        Assert.Equal(rows, ReadAll(cache, id, 0, a));
        Assert.Equal(2, a.BlocksHeld);
        Assert.Equal(2, cache.Allocator.UsedBlocks);
        Assert.Equal(1, a.QuotaRefusals(TenantQuotaKind.Blocks));
        Assert.Equal(1, a.RejectedNoSpace);

        // A fork that would copy the partial block passes the quota too: refused, no sequence made.
        Assert.Equal(CacheError.ResourceExhausted, Assert.Throws<CacheException>(() => cache.Fork(id, a)).Error);
        Assert.Equal(1, a.Sequences);

        ulong other = cache.Create(b);
        cache.Append(other, 0, Rows(300, 3), b);
        Assert.Equal(5, b.BlocksHeld);
        cache.Append(id, 0, Rows(28, 4), a); // what is left of the last block needs nothing new
        Assert.Equal(128, cache.Get(id, a).Lengths[0]);
    }

    [Fact]
    public void On_an_fp8_cache_quotas_count_64_token_blocks_and_stored_rows_are_the_owners_only()
    {
        using var backend = new CpuBackend(new KvPoolGeometry(2, 16, KvDtype.Fp8), maxThreads: 1);
        var cache = new PagedKvCache(backend, new CacheLimits(MaxSequenceLength: 4096, MaxSequences: 64));
        Tenant a = new("a", new TenantQuota(MaxBlocks: 2)), b = new("b");
        ulong id = cache.Create(a);
        var raw = new byte[100 * Fp8KvFormat.TokenBytes];
        new Random(5).NextBytes(raw);
        cache.AppendStored(id, 0, raw, a);
        cache.Append(id, 0, Rows(20, 6), a);
        Assert.Equal(2, a.BlocksHeld); // 120 tokens: two blocks of 64, whatever the bytes a token

        var error = Assert.Throws<CacheException>(() => cache.AppendStored(id, 0, new byte[9 * Fp8KvFormat.TokenBytes], a));
        Assert.Equal(CacheError.ResourceExhausted, error.Error);
        Assert.Contains("quota of 2", error.Message);
        Assert.Equal(120, cache.Get(id, a).Lengths[0]);
        cache.AppendStored(id, 0, new byte[8 * Fp8KvFormat.TokenBytes], a); // the rest of the second block
        Assert.Equal(128, cache.Get(id, a).Lengths[0]);

        var stored = new byte[100 * Fp8KvFormat.TokenBytes];
        cache.ReadStored(id, 0, 0, 100, stored, a);
        Assert.Equal(raw, stored);
        Assert.Equal(CacheError.NotFound, Assert.Throws<CacheException>(() => cache.ReadStored(id, 0, 0, 1, new byte[Fp8KvFormat.TokenBytes], b)).Error);
        Assert.Equal(CacheError.NotFound, Assert.Throws<CacheException>(() => cache.AppendStored(id, 0, new byte[Fp8KvFormat.TokenBytes], b)).Error);
        Assert.Equal(128, cache.Get(id, a).Lengths[0]);
    }

    [Fact]
    public void A_sequence_quota_refuses_creates_and_forks_until_one_is_freed()
    {
        var cache = NewCache();
        var a = new Tenant("a", new TenantQuota(MaxSequences: 2));
        ulong first = cache.Create(a);
        cache.Fork(first, a);
        Assert.Equal(CacheError.ResourceExhausted, Assert.Throws<CacheException>(() => cache.Create(a)).Error);
        Assert.Equal(CacheError.ResourceExhausted, Assert.Throws<CacheException>(() => cache.Fork(first, a)).Error);
        Assert.Equal(2, cache.SequenceCount);
        Assert.Equal(2, a.QuotaRefusals(TenantQuotaKind.Sequences));
        cache.Free(first, a);
        cache.Create(a);
        Assert.Equal(2, a.Sequences);
        cache.Create(new Tenant("b")); // the quota is a's alone
    }

    [Fact]
    public void A_quota_lowered_by_a_reload_takes_effect_on_the_next_request()
    {
        var cache = NewCache();
        var a = new Tenant("a");
        ulong id = cache.Create(a);
        cache.Append(id, 0, Rows(64, 1), a);
        a.Quota = new TenantQuota(MaxBlocks: 1);
        Assert.Equal(CacheError.ResourceExhausted, Assert.Throws<CacheException>(() => cache.Append(id, 0, Rows(1, 2), a)).Error);
        a.Quota = TenantQuota.Unlimited;
        cache.Append(id, 0, Rows(1, 2), a);
        Assert.Equal(2, a.BlocksHeld);
    }

    [Fact]
    public void Requests_in_flight_past_the_quota_are_refused_until_one_ends()
    {
        var a = new Tenant("a", new TenantQuota(MaxRequestsInFlight: 2));
        a.EnterRequest();
        a.EnterRequest();
        var error = Assert.Throws<CacheException>(a.EnterRequest);
        Assert.Equal(CacheError.ResourceExhausted, error.Error);
        Assert.Equal(2, a.RequestsInFlight);
        a.ExitRequest();
        a.EnterRequest();
        Assert.Equal(2, a.RequestsInFlight);
        Assert.Equal(1, a.QuotaRefusals(TenantQuotaKind.RequestsInFlight));
    }

    [Fact]
    public void Sequence_ids_skip_zero_and_live_ids()
    {
        var candidates = new Queue<ulong>([0, 7, 7, 0, 9, 7, 11]);
        var cache = new PagedKvCache(_backend, new CacheLimits(4096, 64), candidates.Dequeue);
        Assert.Equal(7ul, cache.Create());
        Assert.Equal(9ul, cache.Create()); // 7 is live, 0 is never an id
        cache.Free(7);
        Assert.Equal(7ul, cache.Fork(9).Id); // a freed id may come again, a live one never
        Assert.Equal(11ul, cache.Create());
    }

    [Fact]
    public void Sequence_ids_are_random_64_bit_numbers()
    {
        var cache = new PagedKvCache(_backend, new CacheLimits(4096, 1000));
        var ids = Enumerable.Range(0, 1000).Select(_ => cache.Create()).ToList();
        Assert.Equal(ids.Count, ids.Distinct().Count());
        Assert.DoesNotContain(0ul, ids);
        // Counting up from 1 (what a second client used to find others' sequences by) would stay below 1001; random
        // ids land above 2^32 all but about once in four billion draws each.
        Assert.True(ids.Count(id => id > uint.MaxValue) >= 990);
        Assert.True(ids.Zip(ids.Skip(1)).Count(p => p.Second == p.First + 1) == 0);
    }
}
