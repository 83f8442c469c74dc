using FlashMla.Core.Cache;
using FlashMla.Core.Scheduling;
using FlashMla.Core.Telemetry;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Tests.Scheduling;

/// <summary>
/// Continuous batching (window 0, the default): a request that finds a slot free starts at once; requests
/// that arrive while every slot is busy merge into the next batch, which starts when a slot frees.
/// </summary>
public sealed class ContinuousBatchingTests
{
    private const int Heads = 4;
    private static readonly TimeSpan Patience = GatedBackend.Patience;

    private static Task<(Scheduler Scheduler, ulong[] Ids)> StartAsync(GatedBackend backend, SchedulerOptions options, int sequences) =>
        GatedBackend.StartSchedulerAsync(backend, options, sequences);

    /// <summary>One decode step without new rows over the named sequences, layer 0, s_q 1.</summary>
    private static Task<DecodeResult> Post(Scheduler scheduler, params ulong[] ids) =>
        scheduler.DecodeAsync(DecodeWork.Create(DecodeShape.Create(scheduler.Options, 0, ids, 1, Heads, 0),
            DecodeDataPlaneTests.Query(ids.Length, Heads, (int)ids[0]), ReadOnlyMemory<byte>.Empty));

    [Fact]
    public void The_default_window_is_zero_continuous_batching()
    {
        Assert.Equal(TimeSpan.Zero, new SchedulerOptions().BatchWindow);
    }

    [Fact]
    public async Task A_lone_request_on_an_idle_scheduler_starts_without_waiting_for_a_window()
    {
        var window = TimeSpan.FromMilliseconds(400);
        using var held = new GatedBackend();
        var (windowed, heldIds) = await StartAsync(held, new SchedulerOptions { BatchWindow = window }, 1);
        await using (new Teardown(windowed, held))
        {
            var waited = Post(windowed, heldIds[0]);
            await held.WaitForSubmittedAsync(1);
            held.Complete(0);
            // The option still does what it says: a lone request is held the whole window with a slot free.
            Assert.True((await waited.WaitAsync(Patience)).Timings.QueueMicroseconds >= window.TotalMicroseconds);
        }

        using var backend = new GatedBackend();
        var (scheduler, ids) = await StartAsync(backend, new SchedulerOptions(), 1);
        await using var _ = new Teardown(scheduler, backend);
        var task = Post(scheduler, ids[0]);
        await backend.WaitForSubmittedAsync(1);
        backend.Complete(0);
        var timings = (await task.WaitAsync(Patience)).Timings;
        Assert.Equal(1, timings.BatchRequests);
        // Far below the window above: it was submitted as soon as the loop saw it (generous for a loaded CI machine).
        Assert.True(timings.QueueMicroseconds < window.TotalMicroseconds / 4, $"queued {timings.QueueMicroseconds} us");
    }

    [Fact]
    public async Task Requests_arriving_while_every_slot_is_busy_merge_into_the_next_batch()
    {
        using var backend = new GatedBackend();
        var (scheduler, ids) = await StartAsync(backend, new SchedulerOptions { MaxDecodeBatchesInFlight = 2 }, 5);
        await using var _ = new Teardown(scheduler, backend);

        var first = Post(scheduler, ids[0]);
        await backend.WaitForSubmittedAsync(1);
        var second = Post(scheduler, ids[1]);
        await backend.WaitForSubmittedAsync(2); // a free slot: started at once, alone
        var waiting = new[] { Post(scheduler, ids[2]), Post(scheduler, ids[3]), Post(scheduler, ids[4]) };
        await Task.Delay(100);
        Assert.Equal(2, backend.Submitted); // both slots busy: nothing more starts

        backend.Complete(0);
        await backend.WaitForSubmittedAsync(3); // the first slot to free takes all three at once
        await Task.Delay(50);
        Assert.Equal(3, backend.Submitted);
        Assert.Equal(3, backend.BatchSizeOf(2));
        backend.Complete(1);
        backend.Complete(2);
        Assert.Equal(1, (await first.WaitAsync(Patience)).Timings.BatchRequests);
        Assert.Equal(1, (await second.WaitAsync(Patience)).Timings.BatchRequests);
        foreach (var task in waiting)
        {
            var timings = (await task.WaitAsync(Patience)).Timings;
            Assert.Equal(3, timings.BatchRequests);
            Assert.Equal(3, timings.BatchSequences);
        }
    }

    [Fact]
    public async Task Requests_queued_together_merge_even_with_a_slot_free()
    {
        using var backend = new GatedBackend();
        var (scheduler, ids) = await StartAsync(backend, new SchedulerOptions(), 3);
        await using var _ = new Teardown(scheduler, backend);

        // Hold the loop in a cache command while three requests queue behind it.
        using var release = new ManualResetEventSlim();
        var blocker = scheduler.RunAsync(_ => release.Wait(Patience));
        var tasks = ids.Select(id => Post(scheduler, id)).ToArray();
        await Task.Delay(50);
        release.Set();
        Assert.True(await blocker.WaitAsync(Patience));

        await backend.WaitForSubmittedAsync(1);
        await Task.Delay(50);
        Assert.Equal(1, backend.Submitted);
        Assert.Equal(3, backend.BatchSizeOf(0));
        backend.Complete(0);
        foreach (var task in tasks) Assert.Equal(3, (await task.WaitAsync(Patience)).Timings.BatchRequests);
    }

    [Fact]
    public async Task A_full_batch_starts_at_once_even_inside_a_long_window()
    {
        using var backend = new GatedBackend();
        var (scheduler, ids) = await StartAsync(backend,
            new SchedulerOptions { BatchWindow = TimeSpan.FromMinutes(1), MaxBatchSequences = 2 }, 2);
        await using var _ = new Teardown(scheduler, backend);

        var tasks = new[] { Post(scheduler, ids[0]), Post(scheduler, ids[1]) };
        await backend.WaitForSubmittedAsync(1); // fails after 10 s: long before the minute's window ends
        Assert.Equal(2, backend.BatchSizeOf(0));
        backend.Complete(0);
        foreach (var task in tasks) Assert.Equal(2, (await task.WaitAsync(Patience)).Timings.BatchSequences);
    }
}
