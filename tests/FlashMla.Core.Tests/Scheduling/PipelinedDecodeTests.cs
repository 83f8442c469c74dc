using System.Runtime.InteropServices;
using FlashMla.Core.Backends;
using FlashMla.Core.Backends.Cpu;
using FlashMla.Core.Cache;
using FlashMla.Core.Scheduling;
using FlashMla.Core.Telemetry;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Tests.Scheduling;

/// <summary>
/// The scheduler with decode batches in flight: a backend that starts each batch when submitted (in
/// submission order, as a GPU stream does) but completes it only when the test says so, checked against
/// the same requests on a plain synchronous CPU backend.
/// </summary>
public sealed class PipelinedDecodeTests
{
    private const int Prefill = 64;
    private static readonly TimeSpan Patience = GatedBackend.Patience;

    /// <summary>A step of one request: which sequences, h_q, and seeds for its q and new rows.</summary>
    private sealed record StepSpec(int[] Sequences, int Heads, int Seed);

    private static ushort[] Values(int count, int seed)
    {
        var random = new Random(seed);
        var values = new ushort[count];
        for (int i = 0; i < values.Length; i++) values[i] = Bf16.FromFloat((float)(random.NextDouble() - 0.5));
        return values;
    }

    private static byte[] Bytes(int count, int seed) => MemoryMarshal.AsBytes(Values(count, seed).AsSpan()).ToArray();

    private static async Task<(Scheduler Scheduler, ulong[] Ids)> StartAsync(IAttentionBackend backend, int sequences, int maxInFlight = 2)
    {
        var scheduler = new Scheduler(backend, new CacheLimits(4096, 64),
            new SchedulerOptions { BatchWindow = TimeSpan.Zero, SequenceLease = TimeSpan.Zero, MaxDecodeBatchesInFlight = maxInFlight },
            new FlashMlaMetrics(), System.Buffers.ArrayPool<byte>.Shared);
        var ids = await scheduler.RunAsync(cache =>
        {
            var created = new ulong[sequences];
            for (int i = 0; i < created.Length; i++)
            {
                created[i] = cache.Create();
                cache.Append(created[i], 0, Values(Prefill * MlaDims.HeadDimK, 100 + i));
            }
            return created;
        });
        return (scheduler, ids);
    }

    private static Task<DecodeResult> Post(Scheduler scheduler, ulong[] ids, StepSpec step) => Posted(scheduler, ids, step).Posting;

    /// <summary>Posts a step; its work's <see cref="DecodeWork.Completion"/> is what the scheduler completes (the handler's await resumes later).</summary>
    private static (DecodeWork Work, Task<DecodeResult> Posting) Posted(Scheduler scheduler, ulong[] ids, StepSpec step)
    {
        int b = step.Sequences.Length;
        var named = step.Sequences.Select(i => ids[i]).ToArray();
        var work = DecodeWork.Create(DecodeShape.Create(scheduler.Options, 0, named, 1, (ulong)step.Heads, 0),
            Bytes(b * step.Heads * MlaDims.HeadDimK, step.Seed), Bytes(b * MlaDims.HeadDimK, step.Seed + 1));
        return (work, scheduler.DecodeAsync(work));
    }

    /// <summary>The same steps, one after another, on a synchronous CPU backend: (out, lse) bytes of each.</summary>
    private static async Task<List<(byte[] Out, byte[] Lse)>> ReferenceAsync(int sequences, params StepSpec[] steps)
    {
        using var backend = new CpuBackend(new KvPoolGeometry(2, 64), maxThreads: 1);
        var (scheduler, ids) = await StartAsync(backend, sequences, maxInFlight: 1);
        await using var _ = scheduler;
        var results = new List<(byte[], byte[])>();
        foreach (var step in steps)
        {
            var r = await Post(scheduler, ids, step);
            results.Add((r.Out.ToArray(), r.Lse.ToArray()));
            r.Release();
        }
        return results;
    }

    private static void AssertSame((byte[] Out, byte[] Lse) expected, DecodeResult actual)
    {
        Assert.Equal(expected.Out, actual.Out.ToArray());
        Assert.Equal(expected.Lse, actual.Lse.ToArray());
    }

    [Fact]
    public async Task Two_batches_are_in_flight_at_once_a_third_waits_and_each_request_gets_its_own_result()
    {
        StepSpec a = new([0, 1], 4, 1), b = new([2, 3], 8, 3), c = new([4], 4, 5);
        var expected = await ReferenceAsync(5, a, b, c);
        using var backend = new GatedBackend();
        var (scheduler, ids) = await StartAsync(backend, 5);
        await using var _ = new Teardown(scheduler, backend);

        var ta = Post(scheduler, ids, a);
        await backend.WaitForSubmittedAsync(1);
        var tb = Post(scheduler, ids, b);
        await backend.WaitForSubmittedAsync(2); // b started while a is still in flight
        var tc = Post(scheduler, ids, c);
        await Task.Delay(100);
        Assert.Equal(2, backend.Submitted); // c waits for a slot
        Assert.False(ta.IsCompleted || tb.IsCompleted || tc.IsCompleted);

        backend.Complete(0);
        AssertSame(expected[0], await ta.WaitAsync(Patience));
        await backend.WaitForSubmittedAsync(3); // a's retirement let c start
        Assert.False(tb.IsCompleted);
        backend.Complete(1);
        backend.Complete(2);
        AssertSame(expected[1], await tb.WaitAsync(Patience));
        AssertSame(expected[2], await tc.WaitAsync(Patience));
        Assert.Equal(2, (await tb).Timings.BatchSequences);
    }

    [Fact]
    public async Task The_device_phases_a_backend_measured_reach_every_request_of_the_batch()
    {
        StepSpec a = new([0, 1], 4, 61);
        using var backend = new GatedBackend();
        var (scheduler, ids) = await StartAsync(backend, 2);
        await using var _ = new Teardown(scheduler, backend);
        var task = Post(scheduler, ids, a);
        await backend.WaitForSubmittedAsync(1);
        var phases = new DevicePhases(UploadMicroseconds: 12.5, KernelMicroseconds: 280, DownloadMicroseconds: 31);
        backend.Complete(0, phases: phases);
        var result = await task.WaitAsync(Patience);
        Assert.Equal(phases, result.Timings.Device);
        Assert.True(result.Timings.ComputeMicroseconds > 0);

        // A backend that measures nothing (the CPU backend) leaves them unset.
        var unmeasured = Post(scheduler, ids, a with { Seed = 62 });
        await backend.WaitForSubmittedAsync(2);
        backend.Complete(1);
        Assert.Null((await unmeasured.WaitAsync(Patience)).Timings.Device);
    }

    [Fact]
    public async Task Consecutive_steps_of_one_sequence_in_flight_together_append_in_order_and_deliver_in_order()
    {
        StepSpec first = new([0], 4, 11), second = new([0, 1], 4, 21);
        var expected = await ReferenceAsync(2, first, second);
        using var backend = new GatedBackend();
        var (scheduler, ids) = await StartAsync(backend, 2);
        await using var _ = new Teardown(scheduler, backend);

        var t1 = Post(scheduler, ids, first);
        var t2 = Post(scheduler, ids, second);
        await backend.WaitForSubmittedAsync(2); // one sequence never appears twice in a batch: two batches
        backend.Complete(1);
        await Task.Delay(50);
        Assert.False(t2.IsCompleted); // delivered in submission order only
        backend.Complete(0);
        AssertSame(expected[0], await t1.WaitAsync(Patience));
        AssertSame(expected[1], await t2.WaitAsync(Patience)); // saw the first step's row: lengths committed at submit

        var (lengths, rows) = await scheduler.RunAsync(cache =>
        {
            var kv = new ushort[2 * MlaDims.HeadDimK];
            cache.Read(ids[0], 0, Prefill, 2, kv);
            return (cache.Get(ids[0]).Lengths[0], kv);
        });
        Assert.Equal(Prefill + 2, lengths);
        Assert.Equal(Values(MlaDims.HeadDimK, first.Seed + 1), rows[..MlaDims.HeadDimK]);
        Assert.Equal(Values(MlaDims.HeadDimK, second.Seed + 1), rows[MlaDims.HeadDimK..]);
    }

    [Fact]
    public async Task A_fault_in_flight_fails_that_batch_and_the_later_ones_and_rolls_both_back()
    {
        StepSpec failing = new([0], 4, 31), later = new([0, 1], 4, 41), retry = new([0, 1], 4, 51);
        var expected = await ReferenceAsync(2, retry);
        using var backend = new GatedBackend();
        var (scheduler, ids) = await StartAsync(backend, 2);
        await using var _ = new Teardown(scheduler, backend);
        var before = await scheduler.GetStatsAsync();

        var t1 = Post(scheduler, ids, failing);
        var t2 = Post(scheduler, ids, later);
        await backend.WaitForSubmittedAsync(2);
        backend.Complete(0, new BackendFaultException("launch failed", isSticky: false));
        await Task.Delay(50);
        // The later batch may still write its outputs: nothing is failed (and no buffer given back) before it ends.
        Assert.False(t1.IsCompleted || t2.IsCompleted);
        backend.Complete(1);
        var e1 = await Assert.ThrowsAsync<CacheException>(() => t1.WaitAsync(Patience));
        var e2 = await Assert.ThrowsAsync<CacheException>(() => t2.WaitAsync(Patience));
        Assert.Equal(CacheError.Internal, e1.Error);
        Assert.Equal(CacheError.Internal, e2.Error);
        Assert.Contains("launch failed", e2.Message);

        var after = await scheduler.GetStatsAsync();
        Assert.Equal(before.FreeBlocks, after.FreeBlocks); // the blocks reserved past 64 rows went back
        int[] lengths = await scheduler.RunAsync(cache => ids.Select(id => cache.Get(id).Lengths[0]).ToArray());
        Assert.Equal(new[] { Prefill, Prefill }, lengths);
        Assert.True(scheduler.IsServing);

        var t3 = Post(scheduler, ids, retry);
        await backend.WaitForSubmittedAsync(3);
        backend.Complete(2);
        AssertSame(expected[0], await t3.WaitAsync(Patience)); // as if the failed steps never happened
    }

    [Fact]
    public async Task A_sticky_fault_in_flight_stops_serving()
    {
        using var backend = new GatedBackend();
        var (scheduler, ids) = await StartAsync(backend, 1);
        await using var _ = new Teardown(scheduler, backend);

        var t1 = Post(scheduler, ids, new StepSpec([0], 4, 61));
        await backend.WaitForSubmittedAsync(1);
        backend.Complete(0, new BackendFaultException("CUDA_ERROR_ILLEGAL_ADDRESS", isSticky: true));
        var error = await Assert.ThrowsAsync<CacheException>(() => t1.WaitAsync(Patience));
        Assert.Equal(CacheError.Unavailable, error.Error);
        Assert.False(scheduler.IsServing);
        Assert.Contains("CUDA_ERROR_ILLEGAL_ADDRESS", scheduler.FaultReason);
    }

    [Fact]
    public async Task Drain_and_cache_commands_wait_for_the_batches_in_flight()
    {
        StepSpec a = new([0], 4, 71), b = new([0], 4, 81);
        var expected = await ReferenceAsync(1, a, b);
        using var backend = new GatedBackend();
        var (scheduler, ids) = await StartAsync(backend, 1);
        await using var _ = new Teardown(scheduler, backend);

        var ta = Post(scheduler, ids, a);
        await backend.WaitForSubmittedAsync(1);
        var length = scheduler.RunAsync(cache => cache.Get(ids[0]).Lengths[0]);
        await Task.Delay(50);
        Assert.False(length.IsCompleted);
        backend.Complete(0);
        Assert.Equal(Prefill + 1, await length.WaitAsync(Patience));
        AssertSame(expected[0], await ta);

        var tb = Post(scheduler, ids, b);
        await backend.WaitForSubmittedAsync(2);
        var drain = scheduler.DrainAsync();
        await Task.Delay(50);
        Assert.False(drain.IsCompleted);
        Assert.False(tb.IsCompleted);
        backend.Complete(1);
        await drain.WaitAsync(Patience);
        AssertSame(expected[1], await tb);
    }

    [Fact]
    public async Task A_request_has_its_result_the_moment_its_batch_completes_without_waiting_for_the_loop()
    {
        StepSpec a = new([0, 1], 4, 91), b = new([2], 8, 93);
        var expected = await ReferenceAsync(3, a, b);
        using var backend = new GatedBackend();
        var (scheduler, ids) = await StartAsync(backend, 3);
        await using var _ = new Teardown(scheduler, backend);

        var (wa, ta) = Posted(scheduler, ids, a);
        var (wb, tb) = Posted(scheduler, ids, b); // another h_q: a batch of its own
        await backend.WaitForSubmittedAsync(2);
        backend.Complete(0);
        // Handed out inside the backend's completion, before it returned: no wake-up of the loop in between.
        Assert.True(wa.Completion.IsCompletedSuccessfully);
        Assert.False(wb.Completion.IsCompleted);
        backend.Complete(1);
        Assert.True(wb.Completion.IsCompletedSuccessfully);
        AssertSame(expected[0], await ta);
        AssertSame(expected[1], await tb);
    }

    [Fact]
    public async Task A_batch_that_completes_before_an_earlier_one_waits_for_it_and_fails_with_it_then_early_delivery_resumes()
    {
        StepSpec failing = new([0], 4, 95), later = new([1], 8, 96), next = new([1], 8, 97); // two h_q: two batches
        var expected = await ReferenceAsync(2, next);
        using var backend = new GatedBackend();
        var (scheduler, ids) = await StartAsync(backend, 2);
        await using var _ = new Teardown(scheduler, backend);

        var t1 = Post(scheduler, ids, failing);
        var t2 = Post(scheduler, ids, later);
        await backend.WaitForSubmittedAsync(2);
        backend.Complete(1); // out of order: the first batch is still running
        await Task.Delay(50);
        Assert.False(t2.IsCompleted);
        backend.Complete(0, new BackendFaultException("launch failed", isSticky: false));
        await Assert.ThrowsAsync<CacheException>(() => t1.WaitAsync(Patience));
        await Assert.ThrowsAsync<CacheException>(() => t2.WaitAsync(Patience)); // built on the failed batch's appends

        var (w3, t3) = Posted(scheduler, ids, next);
        await backend.WaitForSubmittedAsync(3);
        backend.Complete(2);
        Assert.True(w3.Completion.IsCompletedSuccessfully);
        AssertSame(expected[0], await t3);
    }
}
