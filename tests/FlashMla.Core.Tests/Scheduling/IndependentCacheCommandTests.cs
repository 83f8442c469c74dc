using FlashMla.Core.Cache;
using FlashMla.Core.Scheduling;
using FlashMla.Core.Telemetry;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Tests.Scheduling;

/// <summary>
/// One request must not stall every client: a call's KV is bounded, cache commands wait only for work on what they
/// touch, and a request cancelled before it started is never computed. The gated backend holds batches in flight.
/// </summary>
public sealed class IndependentCacheCommandTests
{
    private const int Heads = 4, Rows = 8;
    private static readonly TimeSpan Patience = GatedBackend.Patience;
    private static readonly TimeSpan Moment = TimeSpan.FromMilliseconds(150);

    private static Task<(Scheduler Scheduler, ulong[] Ids)> StartAsync(GatedBackend backend, SchedulerOptions options, int sequences) =>
        GatedBackend.StartSchedulerAsync(backend, options, sequences);

    private static Task<DecodeResult> Post(Scheduler scheduler, ulong[] ids, CancellationToken cancellationToken = default) =>
        scheduler.DecodeAsync(DecodeWork.Create(DecodeShape.Create(scheduler.Options, 0, ids, 1, Heads, 0),
            DecodeDataPlaneTests.Query(ids.Length, Heads, (int)ids[0]), ReadOnlyMemory<byte>.Empty), cancellationToken);

    [Fact]
    public async Task A_batch_closes_before_it_passes_the_kv_token_limit()
    {
        using var backend = new GatedBackend();
        // Each request attends over 8 positions; 20 per call takes two of them, not three.
        var (scheduler, ids) = await StartAsync(backend, new SchedulerOptions { MaxKvTokensPerCall = 20, MaxDecodeBatchesInFlight = 2 }, 3);
        await using var _ = new Teardown(scheduler, backend);

        using var release = new ManualResetEventSlim();
        var blocker = scheduler.RunAsync(_ => release.Wait(Patience)); // the three queue together behind it
        var tasks = ids.Select(id => Post(scheduler, [id])).ToArray();
        await Task.Delay(50);
        release.Set();
        Assert.True(await blocker.WaitAsync(Patience));

        await backend.WaitForSubmittedAsync(2);
        Assert.Equal(2, backend.BatchSizeOf(0));
        Assert.Equal(1, backend.BatchSizeOf(1));
        backend.CompleteAllPending();
        int[] requests = await Task.WhenAll(tasks.Select(async t => (await t.WaitAsync(Patience)).Timings.BatchRequests));
        Assert.Equal(new[] { 2, 2, 1 }, requests);
    }

    [Fact]
    public async Task A_request_past_the_kv_token_limit_is_refused_before_it_runs()
    {
        using var backend = new GatedBackend();
        var (scheduler, ids) = await StartAsync(backend, new SchedulerOptions { MaxKvTokensPerCall = 12 }, 2);
        await using var _ = new Teardown(scheduler, backend);

        var error = await Assert.ThrowsAsync<CacheException>(() => Post(scheduler, ids).WaitAsync(Patience));
        Assert.Equal(CacheError.ResourceExhausted, error.Error);
        Assert.Contains("16 KV tokens", error.Message);
        Assert.Contains("MaxKvTokensPerCall", error.Message);
        Assert.Equal(0, backend.Submitted);
        // Within the limit, the same sequences still decode.
        var alone = Post(scheduler, [ids[0]]);
        await backend.WaitForSubmittedAsync(1);
        backend.Complete(0);
        Assert.Equal(1, (await alone.WaitAsync(Patience)).Timings.BatchSequences);
    }

    [Fact]
    public async Task Cache_commands_on_other_sequences_run_while_a_decode_is_in_flight()
    {
        using var backend = new GatedBackend();
        var (scheduler, ids) = await StartAsync(backend, new SchedulerOptions { MaxDecodeBatchesInFlight = 1 }, 2);
        await using var _ = new Teardown(scheduler, backend);

        var decode = Post(scheduler, [ids[0]]);
        await backend.WaitForSubmittedAsync(1); // in flight, and held there

        var stats = await scheduler.GetStatsAsync().WaitAsync(Patience);
        Assert.Equal(2, stats.Sequences);
        ulong created = await scheduler.RunAsync(CacheAccess.Metadata, cache => cache.Create()).WaitAsync(Patience);
        await scheduler.RunAsync(CacheAccess.Sequence(created), cache =>
        {
            cache.Append(created, 0, new ushort[3 * MlaDims.HeadDimK]);
            return true;
        }).WaitAsync(Patience);
        Assert.Equal(0, await scheduler.RunAsync(CacheAccess.Sequence(ids[1]), cache => cache.Truncate(ids[1], Rows)).WaitAsync(Patience));
        Assert.True(await scheduler.RunAsync(CacheAccess.Sequence(created), cache => cache.Free(created)).WaitAsync(Patience) > 0);
        Assert.False(decode.IsCompleted);

        backend.Complete(0);
        Assert.Equal(1, (await decode.WaitAsync(Patience)).Timings.BatchSequences);
    }

    [Fact]
    public async Task A_command_on_a_sequence_in_flight_waits_for_it_and_later_decodes_of_it_wait_for_the_command()
    {
        using var backend = new GatedBackend();
        var (scheduler, ids) = await StartAsync(backend, new SchedulerOptions { MaxDecodeBatchesInFlight = 2 }, 2);
        await using var _ = new Teardown(scheduler, backend);

        var first = Post(scheduler, [ids[0]]);
        await backend.WaitForSubmittedAsync(1);
        var append = scheduler.RunAsync(CacheAccess.Sequence(ids[0]), cache =>
        {
            cache.Append(ids[0], 0, new ushort[2 * MlaDims.HeadDimK]);
            return cache.Get(ids[0]).Lengths[0];
        });
        var later = Post(scheduler, [ids[0]]); // a slot is free, but it must come after the append
        var other = Post(scheduler, [ids[1]]); // another sequence passes both by
        await backend.WaitForSubmittedAsync(2);
        await Task.Delay(Moment);
        Assert.False(append.IsCompleted);
        Assert.Equal(2, backend.Submitted);

        backend.Complete(0);
        Assert.Equal(Rows + 2, await append.WaitAsync(Patience));
        await backend.WaitForSubmittedAsync(3);
        backend.CompleteAllPending();
        await Task.WhenAll(first, later, other).WaitAsync(Patience);
        Assert.Equal(3, (await scheduler.GetStatsAsync()).DecodeBatches);
    }

    [Fact]
    public async Task A_queued_decode_cancelled_before_it_starts_fails_at_once_and_is_never_computed()
    {
        using var backend = new GatedBackend();
        var (scheduler, ids) = await StartAsync(backend, new SchedulerOptions { MaxDecodeBatchesInFlight = 1 }, 2);
        await using var _ = new Teardown(scheduler, backend);

        var running = Post(scheduler, [ids[0]]);
        await backend.WaitForSubmittedAsync(1);
        using var cancel = new CancellationTokenSource();
        var queued = Post(scheduler, [ids[1]], cancel.Token);
        await Task.Delay(50);
        cancel.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => queued.WaitAsync(TimeSpan.FromSeconds(2)));
        Assert.False(running.IsCompleted); // it failed while the batch ahead of it still ran

        backend.Complete(0);
        await running.WaitAsync(Patience);
        await Task.Delay(Moment);
        Assert.Equal(1, backend.Submitted);
        var stats = await scheduler.GetStatsAsync();
        Assert.Equal(1, stats.DecodeRequests);
    }

    [Fact]
    public async Task A_queued_cache_command_cancelled_before_it_runs_never_runs()
    {
        using var backend = new GatedBackend();
        var (scheduler, ids) = await StartAsync(backend, new SchedulerOptions { MaxDecodeBatchesInFlight = 1 }, 1);
        await using var _ = new Teardown(scheduler, backend);

        var running = Post(scheduler, [ids[0]]);
        await backend.WaitForSubmittedAsync(1);
        using var cancel = new CancellationTokenSource();
        bool ran = false;
        var free = scheduler.RunAsync(CacheAccess.Sequence(ids[0]), cache =>
        {
            ran = true;
            return cache.Free(ids[0]);
        }, cancel.Token);
        await Task.Delay(50);
        cancel.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => free.WaitAsync(TimeSpan.FromSeconds(2)));

        backend.Complete(0);
        await running.WaitAsync(Patience);
        Assert.Equal(1, (await scheduler.GetStatsAsync()).Sequences);
        Assert.False(ran);
    }
}
