using FlashMla.Core.Backends;
using FlashMla.Core.Backends.Cpu;
using FlashMla.Core.Cache;
using FlashMla.Core.Scheduling;
using FlashMla.Core.Telemetry;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Tests.Scheduling;

/// <summary>
/// Computes each batch on a CPU backend inside Submit (appends land in submission order) into private
/// arrays, poisons the batch's outputs, and copies the results in only when <see cref="Complete"/> is called.
/// </summary>
internal sealed class GatedBackend : IAttentionBackend
{
    /// <summary>How long a test waits for something it expects before it fails.</summary>
    public static readonly TimeSpan Patience = TimeSpan.FromSeconds(10);

    private readonly CpuBackend _inner = new(new KvPoolGeometry(2, 64), maxThreads: 1);
    private readonly List<(DecodeBatch Batch, ushort[] Out, float[] Lse, DecodeSubmission Submission)> _submitted = [];

    public string Name => "gated";
    public string DeviceDescription => "test";
    public KvPoolGeometry Geometry => _inner.Geometry;

    public int Submitted
    {
        get { lock (_submitted) return _submitted.Count; }
    }

    /// <summary>Sequences in submission <paramref name="index"/>.</summary>
    public int BatchSizeOf(int index)
    {
        lock (_submitted) return _submitted[index].Batch.BatchSize;
    }

    public void WriteKv(int layer, ReadOnlySpan<int> slots, ReadOnlySpan<ushort> rows) => _inner.WriteKv(layer, slots, rows);
    public void ReadKv(int layer, ReadOnlySpan<int> slots, Span<ushort> rows) => _inner.ReadKv(layer, slots, rows);
    public void CopyBlocks(ReadOnlySpan<BlockCopy> copies) => _inner.CopyBlocks(copies);
    public void Decode(DecodeBatch batch) => Submit(batch).Wait();

    /// <summary>When set, KV writes (SubmitWriteKv) land at once but complete only when <see cref="CompleteWrite"/> says.</summary>
    public bool HoldWrites { get; init; }

    private readonly List<DecodeSubmission> _writes = [];

    public int WritesSubmitted
    {
        get { lock (_writes) return _writes.Count; }
    }

    public DecodeSubmission SubmitWriteKv(int layer, ReadOnlySpan<int> slots, ReadOnlyMemory<ushort> rows)
    {
        _inner.WriteKv(layer, slots, rows.Span);
        var submission = HoldWrites ? new DecodeSubmission() : DecodeSubmission.CompletedNow();
        lock (_writes) _writes.Add(submission);
        return submission;
    }

    /// <summary>Completes KV write <paramref name="index"/>, or fails it.</summary>
    public void CompleteWrite(int index, BackendFaultException? fault = null)
    {
        DecodeSubmission submission;
        lock (_writes) submission = _writes[index];
        if (fault is null) submission.MarkComplete();
        else submission.MarkFailed(fault);
    }

    public DecodeSubmission Submit(DecodeBatch batch)
    {
        var output = new ushort[batch.Out.Length];
        var lse = new float[batch.Lse.Length];
        _inner.Decode(new DecodeBatch
        {
            Layer = batch.Layer, BatchSize = batch.BatchSize, QueryTokens = batch.QueryTokens, Heads = batch.Heads,
            SoftmaxScale = batch.SoftmaxScale, Q = batch.Q, NewKv = batch.NewKv, NewKvSlots = batch.NewKvSlots,
            SeqLens = batch.SeqLens, BlockTable = batch.BlockTable, BlockTableStride = batch.BlockTableStride,
            Out = output, Lse = lse,
        });
        batch.Out.Span.Fill(0x7FC0); // bf16 NaN: a result delivered before completion shows
        batch.Lse.Span.Fill(float.NaN);
        var submission = new DecodeSubmission();
        lock (_submitted) _submitted.Add((batch, output, lse, submission));
        return submission;
    }

    /// <summary>Completes submission <paramref name="index"/> (in submission order), or fails it.</summary>
    public void Complete(int index, BackendFaultException? fault = null, DevicePhases? phases = null)
    {
        (DecodeBatch batch, ushort[] output, float[] lse, DecodeSubmission submission) entry;
        lock (_submitted) entry = _submitted[index];
        if (fault is not null)
        {
            entry.submission.MarkFailed(fault);
            return;
        }
        entry.output.CopyTo(entry.batch.Out.Span);
        entry.lse.CopyTo(entry.batch.Lse.Span);
        entry.submission.MarkComplete(phases);
    }

    /// <summary>Completes whatever is still pending, so a failed test ends instead of draining forever.</summary>
    public void CompleteAllPending()
    {
        lock (_writes)
            foreach (var write in _writes)
                if (!write.IsComplete) write.MarkComplete();
        int count = Submitted;
        for (int i = 0; i < count; i++)
        {
            DecodeSubmission submission;
            lock (_submitted) submission = _submitted[i].Submission;
            if (!submission.IsComplete) Complete(i);
        }
    }

    public async Task WaitForSubmittedAsync(int count)
    {
        var deadline = DateTime.UtcNow + Patience;
        while (Submitted < count)
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"{Submitted} of {count} batches submitted");
            await Task.Delay(2);
        }
    }

    /// <summary>
    /// A scheduler over <paramref name="backend"/> (no lease) with <paramref name="sequences"/> sequences of 8 zero rows in
    /// layer 0 each, for the scheduling tests.
    /// </summary>
    public static async Task<(Scheduler Scheduler, ulong[] Ids)> StartSchedulerAsync(GatedBackend backend, SchedulerOptions options, int sequences)
    {
        var scheduler = new Scheduler(backend, new CacheLimits(4096, 64), options with { SequenceLease = TimeSpan.Zero },
            new FlashMlaMetrics(), System.Buffers.ArrayPool<byte>.Shared);
        var ids = await scheduler.RunAsync(cache =>
        {
            var created = new ulong[sequences];
            for (int i = 0; i < created.Length; i++)
            {
                created[i] = cache.Create();
                cache.Append(created[i], 0, new ushort[8 * MlaDims.HeadDimK]);
            }
            return created;
        });
        return (scheduler, ids);
    }

    public void Dispose() => _inner.Dispose();
}

/// <summary>Disposes the scheduler after completing every pending batch (a failing test must not hang in drain).</summary>
internal sealed class Teardown(Scheduler scheduler, GatedBackend backend) : IAsyncDisposable
{
    public async ValueTask DisposeAsync()
    {
        backend.CompleteAllPending();
        var drain = scheduler.DisposeAsync().AsTask();
        while (!drain.IsCompleted)
        {
            backend.CompleteAllPending(); // batches submitted during the drain
            await Task.WhenAny(drain, Task.Delay(10));
        }
        await drain;
    }
}
