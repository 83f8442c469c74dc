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
/// sees this one's rows), and keeps the batch in flight until the backend completes it. Each request gets its slice
/// of those buffers (no copy) the moment the outputs are in host memory, on the thread the backend completes on,
/// when every batch before it has been delivered (else, and on failure, the loop does it when it retires the
/// batch); the loop retires batches in order (counts, metrics, rollback). At most <c>maxInFlight</c> batches are in flight:
/// the next one is prepared and started while the device still works on the last. Nothing allocated per
/// step grows with the tensors. Runs on the scheduler loop, except the early hand-out of results
/// (<see cref="TryDeliverEarly"/>), which reads a batch the loop no longer changes until it retires it.
/// <para>
/// A batch that fails in flight fails with every batch submitted after it (they were built on its
/// appends); all of them are rolled back newest first, which restores the cache exactly because no cache
/// command touches a sequence while a batch on it is in flight (<see cref="Scheduler"/> holds such a command
/// back until every batch on the sequence has finished: <see cref="SequenceActivity"/>). Every request, however
/// it ends, leaves the activity it entered when the loop took it.
/// </para>
/// </summary>
internal sealed class DecodeBatchExecutor(PagedKvCache cache, IAttentionBackend backend, FlashMlaMetrics metrics, ArrayPool<byte> tensorBuffers,
    int maxInFlight, long maxKvTokensPerCall, SequenceActivity activity)
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
    private long _submitted;        // batches submitted so far (the loop's count)
    private long _deliveredThrough; // every batch up to this number has handed its requests their results

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

    /// <summary>The refusal of a request whose KV alone passes the limit of one backend call.</summary>
    public static CacheException KvTokensRefusal(long tokens, long limit) => new(CacheError.ResourceExhausted,
        $"the request attends over {tokens} KV tokens, more than one backend call takes ({limit}, MaxKvTokensPerCall); send fewer or shorter sequences per request");

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
            foreach (var work in _accepted) Finish(work, error);
            if (ex is BackendFaultException { IsSticky: true } sticky) StickyFault?.Invoke(sticky);
            return;
        }

        if (first.HasNewKv)
            foreach (var s in _sequences) s.LayerLengths[layer] += sQ;

        var entry = _spare.Count > 0 ? _spare.Pop() : new InFlightBatch(this);
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
        entry.Number = ++_submitted;
        _inFlight.Enqueue(entry);
        // Results go out from the completion itself: no wake-up of this loop stands between the outputs and the responses.
        submission.OnOutputsReady(entry.DeliverEarly);
        RetireCompleted(); // a synchronous backend has finished already: count it at once
    }

    /// <summary>Delivers every batch at the head of the queue that has completed; never blocks.</summary>
    public void RetireCompleted()
    {
        while (_inFlight.Count > 0 && _inFlight.Peek().Submission.IsComplete) RetireOldest();
    }

    /// <summary>Waits for and delivers every batch in flight (at drain: the loop itself never waits on a batch).</summary>
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
        if (!entry.Delivered) DeliverResults(entry);
        Deliver(entry);
        Recycle(entry);
    }

    /// <summary>The batch's counts and metrics, on the loop, once it is retired (its requests have their results by then).</summary>
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
        // The sequences are free of the batch once the loop retires it, and its requests count for their tenants then
        // (activity and the tenants' counters are the loop's, so not on the completion thread that may have handed
        // out the results already).
        foreach (var work in entry.Works)
        {
            activity.Leave(work.SequenceIds);
            CountForTenant(work.Tenant ?? cache.DefaultTenant);
        }
    }

    /// <summary>One more decode request served for <paramref name="tenant"/>, and one more batch the first time this batch counts for it.</summary>
    private void CountForTenant(Tenant tenant)
    {
        tenant.DecodeRequests++;
        if (tenant.LastBatchCounted == Batches) return;
        tenant.LastBatchCounted = Batches;
        tenant.DecodeBatches++;
    }

    /// <summary>
    /// Hands each request of a completed batch its slices of the outputs, in order after every earlier batch: from
    /// <see cref="InFlightBatch.DeliverEarly"/> on the backend's completion thread, or from the loop when that could not.
    /// </summary>
    private void DeliverResults(InFlightBatch entry)
    {
        int b = entry.Sequences.Count, sQ = entry.QueryTokens, hQ = entry.Heads;
        long completedAt = Math.Max(entry.Submission.CompletedAt, entry.SubmittedAt);
        double computeUs = (completedAt - entry.SubmittedAt) * 1e6 / Stopwatch.Frequency;
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
            work.Complete(new DecodeResult(outBytes, lseBytes, new DecodeTimings(queueUs, computeUs, b, entry.Works.Count, entry.Submission.Phases, work.ArrivedAt, completedAt), entry.Outputs));
            done += n;
        }
        entry.Delivered = true;
        Volatile.Write(ref _deliveredThrough, entry.Number);
    }

    /// <summary>
    /// On the backend's completion thread: delivers the batch's results now when every batch before it has delivered
    /// (a batch after a failed one must fail with it, which only the loop decides). Never throws: what it cannot do,
    /// the loop does when it retires the batch.
    /// </summary>
    private void TryDeliverEarly(InFlightBatch entry)
    {
        if (Volatile.Read(ref _deliveredThrough) != entry.Number - 1) return;
        try
        {
            DeliverResults(entry);
        }
        catch (Exception)
        {
            // Left to the loop: the requests not completed yet are completed when it retires the batch.
            entry.Delivered = false;
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
        Volatile.Write(ref _deliveredThrough, failed[^1].Number); // nothing is in flight now: the next batch may deliver early
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
                Finish(work, error);
            }
            Recycle(entry);
        }
        if (sticky is not null) StickyFault?.Invoke(sticky);
    }

    /// <summary>A request ends without a result: its caller gets <paramref name="error"/>, its sequences are free of it.</summary>
    private void Finish(DecodeWork work, Exception error)
    {
        work.Fail(error);
        activity.Leave(work.SequenceIds);
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
        entry.Delivered = false;
        _spare.Push(entry);
    }

    /// <summary>A submitted batch: what delivery needs, and what a rollback undoes.</summary>
    private sealed class InFlightBatch
    {
        public InFlightBatch(DecodeBatchExecutor executor) => DeliverEarly = () => executor.TryDeliverEarly(this);

        /// <summary>The action the backend runs when the outputs are in host memory (made once per entry: entries are reused).</summary>
        public Action DeliverEarly { get; }

        /// <summary>Order of submission, from 1.</summary>
        public long Number { get; set; }

        /// <summary>Its requests have their results (early, or by the loop).</summary>
        public bool Delivered { get; set; }

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
        if (!work.TryStart())
        {
            activity.Leave(work.SequenceIds); // cancelled while queued: never computed
            return;
        }
        try
        {
            cache.CheckLayer(work.Layer);
            _candidates.Clear();
            int needed = 0;
            var tenant = work.Tenant ?? cache.DefaultTenant;
            long kvTokens = 0;
            for (int i = 0; i < work.BatchSize; i++)
            {
                var s = cache.Get(work.SequenceIds[i], tenant);
                // Query token t sees length - s_q + t + 1 positions (length after the step's append). With new rows that
                // is at least t + 1; without, a layer shorter than s_q leaves its first tokens seeing nothing (out 0,
                // lse -infinity): a request that cannot mean anything, refused before anything is reserved.
                if (!work.HasNewKv && s.LayerLengths[work.Layer] < work.QueryTokens)
                    throw CacheException.Invalid(
                        $"sequence {s.Id} holds {s.LayerLengths[work.Layer]} rows in layer {work.Layer}, fewer than s_q = {work.QueryTokens}: without new rows its query token 0 would see no position");
                _candidates.Add(s);
                kvTokens += s.LayerLengths[work.Layer] + (work.HasNewKv ? work.QueryTokens : 0);
                if (work.HasNewKv) needed += cache.BlocksNeeded(s, work.Layer, work.QueryTokens);
            }
            if (kvTokens > maxKvTokensPerCall) throw KvTokensRefusal(kvTokens, maxKvTokensPerCall);
            cache.RequireBlocks(tenant, needed, $"a decode request of {work.BatchSize} sequences");
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
            Finish(work, ex);
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
