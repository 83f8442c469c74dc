using System.Diagnostics;
using System.Runtime.InteropServices;
using FlashMla.Core.Backends;
using FlashMla.Core.Cache;
using FlashMla.Core.Memory;
using FlashMla.Core.Tensors;
using FlashMla.Core.Telemetry;

namespace FlashMla.Core.Scheduling;

/// <summary>
/// Runs one merged batch: reserves cache space request by request (a request that cannot be served fails
/// alone, the others go on), concatenates inputs into reused buffers (a batch of one request reads the
/// request's own bytes), calls the backend once with pooled output buffers, commits the new lengths and
/// hands each request its slice of those buffers (no copy). Nothing allocated per step grows with the
/// tensors. Runs on the scheduler loop only.
/// </summary>
internal sealed class DecodeBatchExecutor(PagedKvCache cache, IAttentionBackend backend, FlashMlaMetrics metrics)
{
    private readonly List<DecodeWork> _accepted = [];
    private readonly List<Sequence> _sequences = [];
    private readonly List<int> _oldBlockCounts = [];
    private readonly List<Sequence> _candidates = [];
    private ushort[] _q = [];
    private ushort[] _kv = [];
    private int[] _slots = [];
    private int[] _seqLens = [];
    private int[] _blockTable = [];

    public long Requests { get; private set; }
    public long Batches { get; private set; }

    /// <summary>Raised when the backend reports a fault that leaves the device unusable.</summary>
    public event Action<BackendFaultException>? StickyFault;

    public void Run(IReadOnlyList<DecodeWork> works)
    {
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
        int qPerSeq = sQ * hQ * MlaDims.HeadDimK, kvPerSeq = sQ * MlaDims.HeadDimK;
        ReadOnlyMemory<ushort> q, kv;
        if (_accepted.Count == 1)
        {
            // The common case (one client's whole step): the backend reads the request's bytes in place.
            q = MemoryCast.Cast<byte, ushort>(first.Q);
            kv = first.HasNewKv ? MemoryCast.Cast<byte, ushort>(first.NewKv) : default;
        }
        else
        {
            int seqIndex = 0;
            foreach (var work in _accepted)
            {
                MemoryMarshal.Cast<byte, ushort>(work.Q.Span).CopyTo(_q.AsSpan(seqIndex * qPerSeq));
                if (work.HasNewKv) MemoryMarshal.Cast<byte, ushort>(work.NewKv.Span).CopyTo(_kv.AsSpan(seqIndex * kvPerSeq));
                seqIndex += work.BatchSize;
            }
            q = _q.AsMemory(0, b * qPerSeq);
            kv = first.HasNewKv ? _kv.AsMemory(0, b * kvPerSeq) : default;
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
        var outputs = new DecodeOutputBuffers(b * outPerSeq, b * lsePerSeq, _accepted.Count);
        var batch = new DecodeBatch
        {
            Layer = layer, BatchSize = b, QueryTokens = sQ, Heads = hQ, SoftmaxScale = first.SoftmaxScale,
            Q = q,
            NewKv = kv,
            NewKvSlots = first.HasNewKv ? _slots.AsMemory(0, b * sQ) : default,
            SeqLens = _seqLens.AsMemory(0, b),
            BlockTable = _blockTable.AsMemory(0, b * stride),
            BlockTableStride = stride,
            Out = outputs.Out,
            Lse = outputs.Lse,
        };

        long computeStart = Stopwatch.GetTimestamp();
        try
        {
            backend.Decode(batch);
        }
        catch (Exception ex)
        {
            for (int i = 0; i < b; i++) cache.ReleaseBeyond(_sequences[i], _oldBlockCounts[i]);
            for (int i = 0; i < _accepted.Count; i++) outputs.Release();
            var error = ex is BackendFaultException fault
                ? new CacheException(fault.IsSticky ? CacheError.Unavailable : CacheError.Internal, "the attention backend failed: " + fault.Message)
                : new CacheException(CacheError.Internal, "the attention backend failed: " + ex.Message);
            foreach (var work in _accepted) work.Fail(error);
            if (ex is BackendFaultException { IsSticky: true } sticky) StickyFault?.Invoke(sticky);
            return;
        }
        double computeUs = Stopwatch.GetElapsedTime(computeStart).TotalMicroseconds;

        if (first.HasNewKv)
            foreach (var s in _sequences) s.LayerLengths[layer] += sQ;

        Batches++;
        Requests += _accepted.Count;
        metrics.DecodeBatches.Add(1);
        metrics.BatchSequences.Record(b);
        metrics.ComputeTime.Record(computeUs / 1e6);
        metrics.DecodeKvTokens.Add(kvTokens);
        metrics.DecodeQueryTokens.Add((long)b * sQ);
        metrics.DecodeBytes.Add(kvTokens * MlaDims.KvRowBytes + (long)b * sQ * hQ * (MlaDims.HeadDimK + MlaDims.HeadDimV) * 2);
        metrics.DecodeFlops.Add(2.0 * sQ * hQ * (MlaDims.HeadDimK + MlaDims.HeadDimV) * kvTokens);
        if (first.HasNewKv) metrics.AppendedRows.Add((long)b * sQ);

        int done = 0;
        foreach (var work in _accepted)
        {
            int n = work.BatchSize;
            var outBytes = outputs.OutBytes(done * outPerSeq * sizeof(ushort), n * outPerSeq * sizeof(ushort));
            var lseBytes = outputs.LseBytes(done * lsePerSeq * sizeof(float), n * lsePerSeq * sizeof(float));
            double queueUs = (computeStart - work.ArrivedAt) * 1e6 / Stopwatch.Frequency;
            metrics.QueueWait.Record(queueUs / 1e6);
            metrics.DecodeRequests.Add(1);
            work.Complete(new DecodeResult(outBytes, lseBytes, new DecodeTimings(queueUs, computeUs, b, _accepted.Count), outputs));
            done += n;
        }
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
        if (merged) Grow(ref _q, b * sQ * hQ * MlaDims.HeadDimK);
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
