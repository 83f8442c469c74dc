using System.Buffers;
using System.Diagnostics;
using System.Runtime.InteropServices;
using FlashMla.Core.Backends;
using FlashMla.Core.Cache;
using FlashMla.Core.Memory;
using FlashMla.Core.Tensors;
using FlashMla.Core.Telemetry;

namespace FlashMla.Core.Scheduling;

/// <summary>
/// Runs merged batches: reserves cache space request by request (a request that cannot be served fails
/// alone, the others go on), hands q to the backend as one segment per request (no gather) and gathers
/// the new rows of a merged batch into a reused buffer, submits the batch to the backend with pooled output buffers and commits the new
/// lengths at once (the backend runs steps in submission order, so the next batch of the same sequence
/// sees this one's rows), and keeps the batch in flight until the backend completes it; then it hands
/// each request its slice of those buffers (no copy). At most <c>maxInFlight</c> batches are in flight:
/// the next one is prepared and started while the device still works on the last. Nothing allocated per
/// step grows with the tensors. Runs on the scheduler loop only.
/// <para>
/// A batch that fails in flight fails with every batch submitted after it (they were built on its
/// appends); all of them are rolled back newest first, which restores the cache exactly because nothing
/// but decode batches runs while batches are in flight (<see cref="Scheduler"/> retires them before any
/// cache command).
/// </para>
/// </summary>
internal sealed class DecodeBatchExecutor(PagedKvCache cache, IAttentionBackend backend, FlashMlaMetrics metrics, ArrayPool<byte> tensorBuffers,
    int maxInFlight)
{
    private readonly List<DecodeWork> _accepted = [];
    private readonly List<Sequence> _sequences = [];
    private readonly List<int> _oldBlockCounts = [];
    private readonly List<Sequence> _candidates = [];
    private readonly Queue<InFlightBatch> _inFlight = new();
    private readonly Stack<InFlightBatch> _spare = new();
    private readonly List<ReadOnlyMemory<ushort>> _qSegments = []; // read by the backend during Submit only
    private ushort[] _kv = [];
    private int[] _slots = [];
    private int[] _seqLens = [];
    private int[] _blockTable = [];

    public long Requests { get; private set; }
    public long Batches { get; private set; }

    /// <summary>Batches submitted and not yet retired.</summary>
    public int InFlight => _inFlight.Count;

    /// <summary>True when a batch can start now without waiting for one in flight (retire completed ones first).</summary>
    public bool HasFreeSlot => _inFlight.Count < maxInFlight;

    /// <summary>Completes when the oldest batch in flight does; null when none is.</summary>
    public Task? OldestCompletion => _inFlight.Count > 0 ? _inFlight.Peek().Submission.Completion : null;

    /// <summary>Raised when the backend reports a fault that leaves the device unusable.</summary>
    public event Action<BackendFaultException>? StickyFault;

    public void Run(IReadOnlyList<DecodeWork> works)
    {
        RetireCompleted();
        // Retire before reserving: a batch that fails in flight rolls back, and this one must see that.
        while (_inFlight.Count >= maxInFlight) RetireOldest();

        _accepted.Clear();
        _sequences.Clear();
        _oldBlockCounts.Clear();
        foreach (var work in works) TryReserve(work);
        if (_accepted.Count == 0) return;

        var first = _accepted[0];
        int layer = first.Layer, sQ = first.QueryTokens, hQ = first.Heads;
        int b = _sequences.Count;
        int stride = 1;
        long kvTokens = 0;
        foreach (var s in _sequences) stride = Math.Max(stride, s.Blocks.Count);

        EnsureBuffers(b, sQ, hQ, stride, first.HasNewKv, merged: _accepted.Count > 1);
        int kvPerSeq = sQ * MlaDims.HeadDimK;
        // q stays where each request's bytes lie, one segment per request (the backend reads or uploads each in
        // place; a gather here cost more than merging saved, measured on the H200 on 2026-12-01). The new rows are
        // small: a merged batch gathers them, a batch of one request reads them in place.
        _qSegments.Clear();
        foreach (var work in _accepted) _qSegments.Add(MemoryCast.Cast<byte, ushort>(work.Q));
        ReadOnlyMemory<ushort> kv = default;
        if (first.HasNewKv && _accepted.Count == 1)
        {
            kv = MemoryCast.Cast<byte, ushort>(first.NewKv);
        }
        else if (first.HasNewKv)
        {
            int seqIndex = 0;
            foreach (var work in _accepted)
            {
                MemoryMarshal.Cast<byte, ushort>(work.NewKv.Span).CopyTo(_kv.AsSpan(seqIndex * kvPerSeq));
                seqIndex += work.BatchSize;
            }
            kv = _kv.AsMemory(0, b * kvPerSeq);
        }
        for (int i = 0; i < b; i++)
        {
            var s = _sequences[i];
            int length = s.LayerLengths[layer];
            if (first.HasNewKv)
            {
                PagedKvCache.SlotsOf(s, length, _slots.AsSpan(i * sQ, sQ));
                length += sQ;
            }
            _seqLens[i] = length;
            kvTokens += length;
            var row = _blockTable.AsSpan(i * stride, stride);
            CollectionsMarshal.AsSpan(s.Blocks).CopyTo(row);
            row[s.Blocks.Count..].Fill(0);
        }

        int outPerSeq = sQ * hQ * MlaDims.HeadDimV, lsePerSeq = sQ * hQ;
        var outputs = new DecodeOutputBuffers(tensorBuffers, b * outPerSeq, b * lsePerSeq, _accepted.Count);
        var batch = new DecodeBatch
        {
            Layer = layer, BatchSize = b, QueryTokens = sQ, Heads = hQ, SoftmaxScale = first.SoftmaxScale,
            Q = new QuerySegments(_qSegments),
            NewKv = kv,
            NewKvSlots = first.HasNewKv ? _slots.AsMemory(0, b * sQ) : default,
            SeqLens = _seqLens.AsMemory(0, b),
            BlockTable = _blockTable.AsMemory(0, b * stride),
            BlockTableStride = stride,
            Out = outputs.Out,
            Lse = outputs.Lse,
        };

        long submitted = Stopwatch.GetTimestamp();
        DecodeSubmission submission;
        try
        {
            submission = backend.Submit(batch);
        }
        catch (Exception ex)
        {
            // Nothing of this batch is in flight: undo its reservations alone.
            for (int i = b - 1; i >= 0; i--) cache.ReleaseBeyond(_sequences[i], _oldBlockCounts[i]);
            for (int i = 0; i < _accepted.Count; i++) outputs.Release();
            var error = ErrorOf(ex);
            foreach (var work in _accepted) work.Fail(error);
            if (ex is BackendFaultException { IsSticky: true } sticky) StickyFault?.Invoke(sticky);
            return;
        }

        if (first.HasNewKv)
            foreach (var s in _sequences) s.LayerLengths[layer] += sQ;

        var entry = _spare.Count > 0 ? _spare.Pop() : new InFlightBatch();
        entry.Works.AddRange(_accepted);
        entry.Sequences.AddRange(_sequences);
        entry.OldBlockCounts.AddRange(_oldBlockCounts);
        entry.Submission = submission;
        entry.Outputs = outputs;
        entry.Layer = layer;
        entry.QueryTokens = sQ;
        entry.Heads = hQ;
        entry.Appended = first.HasNewKv;
        entry.KvTokens = kvTokens;
        entry.SubmittedAt = submitted;
        _inFlight.Enqueue(entry);
        RetireCompleted(); // a synchronous backend has finished already: deliver at once
    }

    /// <summary>Delivers every batch at the head of the queue that has completed; never blocks.</summary>
    public void RetireCompleted()
    {
        while (_inFlight.Count > 0 && _inFlight.Peek().Submission.IsComplete) RetireOldest();
    }

    /// <summary>Waits for and delivers every batch in flight (before a cache command, and at drain).</summary>
    public void RetireAll()
    {
        while (_inFlight.Count > 0) RetireOldest();
    }

    /// <summary>Waits for the oldest batch and delivers it, or fails it and everything after it.</summary>
    private void RetireOldest()
    {
        var entry = _inFlight.Peek();
        try
        {
            entry.Submission.Wait();
        }
        catch (Exception ex)
        {
            FailAllInFlight(ex);
            return;
        }
        _inFlight.Dequeue();
        Deliver(entry);
        Recycle(entry);
    }

    private void Deliver(InFlightBatch entry)
    {
        int b = entry.Sequences.Count, sQ = entry.QueryTokens, hQ = entry.Heads;
        long completedAt = Math.Max(entry.Submission.CompletedAt, entry.SubmittedAt);
        double computeUs = (completedAt - entry.SubmittedAt) * 1e6 / Stopwatch.Frequency;

        Batches++;
        Requests += entry.Works.Count;
        metrics.DecodeBatches.Add(1);
        metrics.BatchSequences.Record(b);
        metrics.ComputeTime.Record(computeUs / 1e6);
        if (entry.Submission.Phases is { } phases) metrics.KernelTime.Record(phases.KernelMicroseconds / 1e6);
        metrics.DecodeKvTokens.Add(entry.KvTokens);
        metrics.DecodeQueryTokens.Add((long)b * sQ);
        metrics.DecodeBytes.Add(entry.KvTokens * backend.Geometry.BytesPerToken + (long)b * sQ * hQ * (MlaDims.HeadDimK + MlaDims.HeadDimV) * 2);
        metrics.DecodeFlops.Add(2.0 * sQ * hQ * (MlaDims.HeadDimK + MlaDims.HeadDimV) * entry.KvTokens);
        if (entry.Appended) metrics.AppendedRows.Add((long)b * sQ);

        int outPerSeq = sQ * hQ * MlaDims.HeadDimV, lsePerSeq = sQ * hQ;
        int done = 0;
        foreach (var work in entry.Works)
        {
            int n = work.BatchSize;
            var outBytes = entry.Outputs!.OutBytes(done * outPerSeq * sizeof(ushort), n * outPerSeq * sizeof(ushort));
            var lseBytes = entry.Outputs.LseBytes(done * lsePerSeq * sizeof(float), n * lsePerSeq * sizeof(float));
            double queueUs = (entry.SubmittedAt - work.ArrivedAt) * 1e6 / Stopwatch.Frequency;
            metrics.QueueWait.Record(queueUs / 1e6);
            metrics.DecodeRequests.Add(1);
            work.Complete(new DecodeResult(outBytes, lseBytes, new DecodeTimings(queueUs, computeUs, b, entry.Works.Count, entry.Submission.Phases), entry.Outputs));
            done += n;
        }
    }

    /// <summary>
    /// The oldest batch failed: it and every later batch in flight fail with its error. Each is waited for
    /// first (the device may still write its outputs), then all are rolled back newest first.
    /// </summary>
    private void FailAllInFlight(Exception first)
    {
        BackendFaultException? sticky = first is BackendFaultException { IsSticky: true } f ? f : null;
        foreach (var entry in _inFlight)
        {
            try
            {
                entry.Submission.Wait();
            }
            catch (BackendFaultException fault) when (fault.IsSticky)
            {
                sticky ??= fault;
            }
            catch (Exception)
            {
                // The first fault is the one reported; later batches fail because of it.
            }
        }
        var failed = _inFlight.ToArray();
        _inFlight.Clear();
        for (int k = failed.Length - 1; k >= 0; k--)
        {
            var entry = failed[k];
            for (int i = entry.Sequences.Count - 1; i >= 0; i--)
            {
                var s = entry.Sequences[i];
                if (entry.Appended) s.LayerLengths[entry.Layer] -= entry.QueryTokens;
                cache.ReleaseBeyond(s, entry.OldBlockCounts[i]);
            }
        }
        var error = ErrorOf(sticky ?? first);
        foreach (var entry in failed)
        {
            foreach (var work in entry.Works)
            {
                entry.Outputs!.Release();
                work.Fail(error);
            }
            Recycle(entry);
        }
        if (sticky is not null) StickyFault?.Invoke(sticky);
    }

    private static CacheException ErrorOf(Exception ex) => ex is BackendFaultException fault
        ? new CacheException(fault.IsSticky ? CacheError.Unavailable : CacheError.Internal, "the attention backend failed: " + fault.Message)
        : new CacheException(CacheError.Internal, "the attention backend failed: " + ex.Message);

    private void Recycle(InFlightBatch entry)
    {
        entry.Works.Clear();
        entry.Sequences.Clear();
        entry.OldBlockCounts.Clear();
        entry.Submission = null!;
        entry.Outputs = null;
        _spare.Push(entry);
    }

    /// <summary>A submitted batch: what delivery needs, and what a rollback undoes.</summary>
    private sealed class InFlightBatch
    {
        public List<DecodeWork> Works { get; } = [];
        public List<Sequence> Sequences { get; } = [];
        public List<int> OldBlockCounts { get; } = [];
        public DecodeSubmission Submission { get; set; } = null!;
        public DecodeOutputBuffers? Outputs { get; set; }
        public int Layer { get; set; }
        public int QueryTokens { get; set; }
        public int Heads { get; set; }
        public bool Appended { get; set; }
        public long KvTokens { get; set; }
        public long SubmittedAt { get; set; }
    }

    /// <summary>Validates one request against the cache and reserves its blocks; on refusal fails it alone.</summary>
    private void TryReserve(DecodeWork work)
    {
        try
        {
            cache.CheckLayer(work.Layer);
            _candidates.Clear();
            int needed = 0;
            for (int i = 0; i < work.BatchSize; i++)
            {
                var s = cache.Get(work.SequenceIds[i]);
                // Query token t sees length - s_q + t + 1 positions (length after the step's append). With new rows that
                // is at least t + 1; without, a layer shorter than s_q leaves its first tokens seeing nothing (out 0,
                // lse -infinity): a request that cannot mean anything, refused before anything is reserved.
                if (!work.HasNewKv && s.LayerLengths[work.Layer] < work.QueryTokens)
                    throw CacheException.Invalid(
                        $"sequence {s.Id} holds {s.LayerLengths[work.Layer]} rows in layer {work.Layer}, fewer than s_q = {work.QueryTokens}: without new rows its query token 0 would see no position");
                _candidates.Add(s);
                if (work.HasNewKv) needed += cache.BlocksNeeded(s, work.Layer, work.QueryTokens);
            }
            cache.RequireFreeBlocks(needed, $"a decode request of {work.BatchSize} sequences");
            foreach (var s in _candidates)
            {
                _oldBlockCounts.Add(s.Blocks.Count);
                if (work.HasNewKv) cache.Reserve(s, work.Layer, work.QueryTokens, cache.BlocksNeeded(s, work.Layer, work.QueryTokens));
                _sequences.Add(s);
            }
            _accepted.Add(work);
        }
        catch (CacheException ex)
        {
            work.Fail(ex);
        }
    }

    private void EnsureBuffers(int b, int sQ, int hQ, int stride, bool hasKv, bool merged)
    {
        if (hasKv)
        {
            if (merged) Grow(ref _kv, b * sQ * MlaDims.HeadDimK);
            Grow(ref _slots, b * sQ);
        }
        Grow(ref _seqLens, b);
        Grow(ref _blockTable, b * stride);
    }

    private static void Grow<T>(ref T[] buffer, int length)
    {
        if (buffer.Length < length) buffer = GC.AllocateUninitializedArray<T>(Math.Max(length, buffer.Length * 2));
    }
}
