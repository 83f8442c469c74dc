using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Backends.Cpu;

/// <summary>
/// The MLA decode math on the CPU, in the GPU kernel's loop order: a work item is up to
/// <see cref="MaxRowsPerItem"/> query rows (<c>row = t * h_q + h</c>) of one sequence; it walks the
/// sequence's pages in order, converts each page to fp32 once (an fp8 page is dequantized to bf16 exactly as
/// <see cref="Fp8KvFormat.DequantizeRow"/> does, then widened), scores every row against it, keeps
/// an online softmax per row (running max and sum, fp32) and accumulates <c>O += P V</c>.
/// Workers pull items from a shared counter, longest sequences first, so long and short sequences balance out.
/// The caller has validated everything: this class trusts its pointers.
/// </summary>
internal sealed unsafe class CpuDecodeKernel
{
    /// <summary>Rows per work item at most: the GPU kernel's CTA also takes 64 rows.</summary>
    public const int MaxRowsPerItem = 64;

    /// <summary>Fewest rows per item when a sequence is split: fewer would convert each page too often.</summary>
    private const int MinRowsPerSplitItem = 16;

    private const int Dk = MlaDims.HeadDimK;
    private const int Dv = MlaDims.HeadDimV;
    private const int Page = MlaDims.BlockSize;

    private readonly WorkerScratch?[] _scratch;
    private readonly Action<int> _runWorker;
    private int[] _sequenceOrder = [];
    private int[] _sequenceOrderKeys = [];

    // The current call; set by Run, read by the workers.
    private byte* _pool;
    private KvDtype _dtype;
    private long _pageBytes;
    private ushort** _qBySequence; // where each sequence's q rows start (q comes in segments)
    private ushort* _out;
    private float* _lse;
    private int* _seqLens;
    private int* _blockTable;
    private int _blockTableStride;
    private int _queryTokens;
    private int _heads;
    private float _scale;
    private int _rowsPerItem;
    private int _itemsPerSequence;
    private int _items;
    private int _nextItem;

    static CpuDecodeKernel()
    {
        // The vector loops have no tails: 576 and 512 are multiples of 64, every Vector<ushort> width up to 512 bits.
        if (Dk % Vector<ushort>.Count != 0 || Dv % (2 * Vector<float>.Count) != 0)
            throw new PlatformNotSupportedException($"CpuBackend needs a SIMD width that divides 512 and 576 (Vector<float>.Count = {Vector<float>.Count})");
    }

    public CpuDecodeKernel(int maxThreads)
    {
        _scratch = new WorkerScratch?[maxThreads];
        _runWorker = RunWorker;
    }

    /// <summary>One decode over a validated batch; returns when every output row is written.</summary>
    public void Run(HostKvPool pool, KvDtype dtype, DecodeBatch batch, ushort** qBySequence, ushort* output, float* lse, int* seqLens, int* blockTable)
    {
        int rowsPerSequence = batch.QueryTokens * batch.Heads;
        int threads = _scratch.Length;

        // Split sequences into row groups only as far as needed to give every thread a few items.
        int itemsWanted = Math.Max(1, (4 * threads + batch.BatchSize - 1) / batch.BatchSize);
        int rowsPerItem = (rowsPerSequence + itemsWanted - 1) / itemsWanted;
        rowsPerItem = Math.Clamp(rowsPerItem, Math.Min(MinRowsPerSplitItem, rowsPerSequence), MaxRowsPerItem);

        _pool = pool.Row(0);
        _dtype = dtype;
        _pageBytes = dtype.PageBytes();
        _qBySequence = qBySequence;
        _out = output;
        _lse = lse;
        _seqLens = seqLens;
        _blockTable = blockTable;
        _blockTableStride = batch.BlockTableStride;
        _queryTokens = batch.QueryTokens;
        _heads = batch.Heads;
        _scale = batch.SoftmaxScale;
        _rowsPerItem = rowsPerItem;
        _itemsPerSequence = (rowsPerSequence + rowsPerItem - 1) / rowsPerItem;
        _items = batch.BatchSize * _itemsPerSequence;
        _nextItem = 0;
        OrderLongestFirst(seqLens, batch.BatchSize);

        int workers = Math.Min(threads, _items);
        try
        {
            if (workers == 1) RunWorker(0);
            else Parallel.For(0, workers, new ParallelOptions { MaxDegreeOfParallelism = workers }, _runWorker);
        }
        finally
        {
            _pool = null;
            _qBySequence = null;
            _out = null;
            _lse = null;
            _seqLens = _blockTable = null;
        }
    }

    /// <summary>Sorts the sequences by length, longest first, into reused arrays: a long sequence taken last would leave the other threads idle.</summary>
    private void OrderLongestFirst(int* seqLens, int batchSize)
    {
        if (_sequenceOrder.Length < batchSize)
        {
            _sequenceOrder = new int[batchSize];
            _sequenceOrderKeys = new int[batchSize];
        }
        for (int i = 0; i < batchSize; i++)
        {
            _sequenceOrder[i] = i;
            _sequenceOrderKeys[i] = -seqLens[i];
        }
        Array.Sort(_sequenceOrderKeys, _sequenceOrder, 0, batchSize);
    }

    private void RunWorker(int worker)
    {
        var scratch = _scratch[worker] ??= new WorkerScratch();
        int rowsPerSequence = _queryTokens * _heads;
        int item;
        while ((item = Interlocked.Increment(ref _nextItem) - 1) < _items)
        {
            int sequence = _sequenceOrder[item / _itemsPerSequence];
            int rowStart = item % _itemsPerSequence * _rowsPerItem;
            int rowCount = Math.Min(_rowsPerItem, rowsPerSequence - rowStart);
            RunItem(scratch, sequence, rowStart, rowCount);
        }
    }

    private void RunItem(WorkerScratch s, int sequence, int rowStart, int rowCount)
    {
        int length = _seqLens[sequence];
        long firstRow = (long)sequence * _queryTokens * _heads + rowStart; // row index into out
        int lastToken = (rowStart + rowCount - 1) / _heads;
        int positionsNeeded = length - _queryTokens + lastToken + 1; // the last row sees the most

        for (int r = 0; r < rowCount; r++)
        {
            int token = (rowStart + r) / _heads;
            s.Visible[r] = length - _queryTokens + token + 1;
            s.RowMax[r] = float.NegativeInfinity;
            s.RowSum[r] = 0f;
            ToFloat(_qBySequence[sequence] + (long)(rowStart + r) * Dk, s.Q + r * Dk, Dk);
        }
        new Span<float>(s.Acc, rowCount * Dv).Clear();

        int* blocks = _blockTable + (long)sequence * _blockTableStride;
        for (int pageStart = 0; pageStart < positionsNeeded; pageStart += Page)
        {
            int pageTokens = Math.Min(Page, positionsNeeded - pageStart);
            byte* page = _pool + blocks[pageStart / Page] * _pageBytes;
            if (_dtype == KvDtype.Fp8) DequantizeToFloat(page, s.Kv, pageTokens);
            else ToFloat((ushort*)page, s.Kv, pageTokens * Dk);

            int r4 = 0;
            for (; r4 + 4 <= rowCount; r4 += 4) Scores4Rows(s.Q + r4 * Dk, s.Kv, pageTokens, _scale, s.P + r4 * Page);
            for (; r4 < rowCount; r4++) Scores1Row(s.Q + r4 * Dk, s.Kv, pageTokens, _scale, s.P + r4 * Page);

            for (int r = 0; r < rowCount; r++)
                SoftmaxPage(s, r, Math.Min(pageTokens, s.Visible[r] - pageStart), pageTokens);

            r4 = 0;
            for (; r4 + 4 <= rowCount; r4 += 4) AccumulateV4(s, r4, pageTokens);
            for (; r4 < rowCount; r4++) AccumulateV1(s, r4, pageTokens);
        }

        for (int r = 0; r < rowCount; r++)
        {
            long row = firstRow + r;
            ushort* o = _out + row * Dv;
            int token = (rowStart + r) / _heads, head = (rowStart + r) % _heads;
            float* lse = _lse + ((long)sequence * _heads + head) * _queryTokens + token;
            float sum = s.RowSum[r];
            if (sum > 0f)
            {
                float inv = 1f / sum;
                float* acc = s.Acc + r * Dv;
                for (int c = 0; c < Dv; c++) o[c] = Bf16.FromFloat(acc[c] * inv);
                *lse = s.RowMax[r] + MathF.Log(sum);
            }
            else
            {
                new Span<ushort>(o, Dv).Clear(); // a row that sees no position
                *lse = float.NegativeInfinity;
            }
        }
    }

    /// <summary>
    /// Folds the scores of row <paramref name="r"/> for the first <paramref name="visible"/> tokens of the
    /// page into the row's running max and sum, and turns <c>P[r]</c> into the weights (relative to
    /// the new max) for all <paramref name="pageTokens"/> tokens, 0 where masked.
    /// </summary>
    private void SoftmaxPage(WorkerScratch s, int r, int visible, int pageTokens)
    {
        float* p = s.P + r * Page;
        if (visible <= 0)
        {
            s.Correction[r] = 1f;
            new Span<float>(p, pageTokens).Clear();
            return;
        }

        float pageMax = p[0];
        for (int j = 1; j < visible; j++) pageMax = MathF.Max(pageMax, p[j]);
        float oldMax = s.RowMax[r];
        float newMax = MathF.Max(oldMax, pageMax);
        // Whole vectors up to the padded end: P has 64 entries per row and 64 is a multiple of the width;
        // entries past `visible` get exp of whatever they held, then 0 up to the page's end.
        int vc = Vector<float>.Count;
        var max = new Vector<float>(newMax);
        for (int j = 0; j < visible; j += vc) Vector.Exp(Vector.Load(p + j) - max).Store(p + j);
        for (int j = visible; j < pageTokens; j++) p[j] = 0f;
        float sum = 0f;
        for (int j = 0; j < visible; j++) sum += p[j];
        float correction = MathF.Exp(oldMax - newMax); // 0 on the first visible page: exp(-inf)
        s.Correction[r] = correction;
        s.RowSum[r] = s.RowSum[r] * correction + sum;
        s.RowMax[r] = newMax;
    }

    /// <summary>
    /// <c>scores[r * 64 + j] = (q[r] . kv[j]) * scale</c> for four query rows and <c>j &lt; count</c>, two KV rows
    /// at a time: eight independent FMA chains, enough to cover the FMA latency, and each KV load
    /// (from L2: a page is larger than L1) feeds four rows. Every dot product is one accumulator
    /// summed in column order, the same in every blocking, so results do not depend on the split.
    /// </summary>
    private static void Scores4Rows(float* q, float* kv, int count, float scale, float* scores)
    {
        int vc = Vector<float>.Count;
        float* q0 = q, q1 = q0 + Dk, q2 = q1 + Dk, q3 = q2 + Dk;
        float* s0 = scores, s1 = s0 + Page, s2 = s1 + Page, s3 = s2 + Page;
        int j = 0;
        for (; j + 2 <= count; j += 2)
        {
            float* k0 = kv + j * Dk, k1 = k0 + Dk;
            Vector<float> a00 = default, a01 = default, a10 = default, a11 = default;
            Vector<float> a20 = default, a21 = default, a30 = default, a31 = default;
            for (int c = 0; c < Dk; c += vc)
            {
                var x0 = Vector.Load(k0 + c);
                var x1 = Vector.Load(k1 + c);
                var y = Vector.Load(q0 + c);
                a00 = Vector.FusedMultiplyAdd(y, x0, a00);
                a01 = Vector.FusedMultiplyAdd(y, x1, a01);
                y = Vector.Load(q1 + c);
                a10 = Vector.FusedMultiplyAdd(y, x0, a10);
                a11 = Vector.FusedMultiplyAdd(y, x1, a11);
                y = Vector.Load(q2 + c);
                a20 = Vector.FusedMultiplyAdd(y, x0, a20);
                a21 = Vector.FusedMultiplyAdd(y, x1, a21);
                y = Vector.Load(q3 + c);
                a30 = Vector.FusedMultiplyAdd(y, x0, a30);
                a31 = Vector.FusedMultiplyAdd(y, x1, a31);
            }
            s0[j] = Vector.Sum(a00) * scale; s0[j + 1] = Vector.Sum(a01) * scale;
            s1[j] = Vector.Sum(a10) * scale; s1[j + 1] = Vector.Sum(a11) * scale;
            s2[j] = Vector.Sum(a20) * scale; s2[j + 1] = Vector.Sum(a21) * scale;
            s3[j] = Vector.Sum(a30) * scale; s3[j + 1] = Vector.Sum(a31) * scale;
        }
        if (j < count)
        {
            float* k = kv + j * Dk;
            Vector<float> a0 = default, a1 = default, a2 = default, a3 = default;
            for (int c = 0; c < Dk; c += vc)
            {
                var x = Vector.Load(k + c);
                a0 = Vector.FusedMultiplyAdd(Vector.Load(q0 + c), x, a0);
                a1 = Vector.FusedMultiplyAdd(Vector.Load(q1 + c), x, a1);
                a2 = Vector.FusedMultiplyAdd(Vector.Load(q2 + c), x, a2);
                a3 = Vector.FusedMultiplyAdd(Vector.Load(q3 + c), x, a3);
            }
            s0[j] = Vector.Sum(a0) * scale;
            s1[j] = Vector.Sum(a1) * scale;
            s2[j] = Vector.Sum(a2) * scale;
            s3[j] = Vector.Sum(a3) * scale;
        }
    }

    /// <summary>The one-row form of <see cref="Scores4Rows"/>, four KV rows per pass over q, for the rows left over.</summary>
    private static void Scores1Row(float* q, float* kv, int count, float scale, float* scores)
    {
        int vc = Vector<float>.Count;
        int j = 0;
        for (; j + 4 <= count; j += 4)
        {
            float* k0 = kv + j * Dk, k1 = k0 + Dk, k2 = k1 + Dk, k3 = k2 + Dk;
            Vector<float> a0 = default, a1 = default, a2 = default, a3 = default;
            for (int c = 0; c < Dk; c += vc)
            {
                var qv = Vector.Load(q + c);
                a0 = Vector.FusedMultiplyAdd(qv, Vector.Load(k0 + c), a0);
                a1 = Vector.FusedMultiplyAdd(qv, Vector.Load(k1 + c), a1);
                a2 = Vector.FusedMultiplyAdd(qv, Vector.Load(k2 + c), a2);
                a3 = Vector.FusedMultiplyAdd(qv, Vector.Load(k3 + c), a3);
            }
            scores[j] = Vector.Sum(a0) * scale;
            scores[j + 1] = Vector.Sum(a1) * scale;
            scores[j + 2] = Vector.Sum(a2) * scale;
            scores[j + 3] = Vector.Sum(a3) * scale;
        }
        for (; j < count; j++)
        {
            float* k = kv + j * Dk;
            Vector<float> a = default;
            for (int c = 0; c < Dk; c += vc) a = Vector.FusedMultiplyAdd(Vector.Load(q + c), Vector.Load(k + c), a);
            scores[j] = Vector.Sum(a) * scale;
        }
    }

    /// <summary>
    /// <c>O[r] = O[r] * correction[r] + P[r] V</c> for four rows and two column vectors at a time: eight
    /// independent FMA chains, each V load shared by four rows.
    /// </summary>
    private static void AccumulateV4(WorkerScratch s, int r, int tokens)
    {
        int vc = Vector<float>.Count;
        float* o0 = s.Acc + r * Dv, o1 = o0 + Dv, o2 = o1 + Dv, o3 = o2 + Dv;
        float* p0 = s.P + r * Page, p1 = p0 + Page, p2 = p1 + Page, p3 = p2 + Page;
        var c0 = new Vector<float>(s.Correction[r]);
        var c1 = new Vector<float>(s.Correction[r + 1]);
        var c2 = new Vector<float>(s.Correction[r + 2]);
        var c3 = new Vector<float>(s.Correction[r + 3]);
        for (int c = 0; c < Dv; c += 2 * vc)
        {
            int d = c + vc;
            Vector<float> a0 = Vector.Load(o0 + c) * c0, b0 = Vector.Load(o0 + d) * c0;
            Vector<float> a1 = Vector.Load(o1 + c) * c1, b1 = Vector.Load(o1 + d) * c1;
            Vector<float> a2 = Vector.Load(o2 + c) * c2, b2 = Vector.Load(o2 + d) * c2;
            Vector<float> a3 = Vector.Load(o3 + c) * c3, b3 = Vector.Load(o3 + d) * c3;
            float* v = s.Kv + c;
            for (int j = 0; j < tokens; j++, v += Dk)
            {
                var va = Vector.Load(v);
                var vb = Vector.Load(v + vc);
                var w = new Vector<float>(p0[j]);
                a0 = Vector.FusedMultiplyAdd(va, w, a0);
                b0 = Vector.FusedMultiplyAdd(vb, w, b0);
                w = new Vector<float>(p1[j]);
                a1 = Vector.FusedMultiplyAdd(va, w, a1);
                b1 = Vector.FusedMultiplyAdd(vb, w, b1);
                w = new Vector<float>(p2[j]);
                a2 = Vector.FusedMultiplyAdd(va, w, a2);
                b2 = Vector.FusedMultiplyAdd(vb, w, b2);
                w = new Vector<float>(p3[j]);
                a3 = Vector.FusedMultiplyAdd(va, w, a3);
                b3 = Vector.FusedMultiplyAdd(vb, w, b3);
            }
            a0.Store(o0 + c); b0.Store(o0 + d);
            a1.Store(o1 + c); b1.Store(o1 + d);
            a2.Store(o2 + c); b2.Store(o2 + d);
            a3.Store(o3 + c); b3.Store(o3 + d);
        }
    }

    /// <summary>The one-row form of <see cref="AccumulateV4"/>, for the rows left over.</summary>
    private static void AccumulateV1(WorkerScratch s, int r, int tokens)
    {
        int vc = Vector<float>.Count;
        float* o = s.Acc + r * Dv;
        float* p = s.P + r * Page;
        var correction = new Vector<float>(s.Correction[r]);
        for (int c = 0; c < Dv; c += vc)
        {
            var a = Vector.Load(o + c) * correction;
            float* v = s.Kv + c;
            for (int j = 0; j < tokens; j++, v += Dk)
                a = Vector.FusedMultiplyAdd(Vector.Load(v), new Vector<float>(p[j]), a);
            a.Store(o + c);
        }
    }

    /// <summary>bf16 to fp32: the bf16 bits are the upper half of the float. <paramref name="count"/> is a multiple of the vector width.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void ToFloat(ushort* source, float* destination, int count)
    {
        int vu = Vector<ushort>.Count, vf = Vector<float>.Count;
        for (int i = 0; i < count; i += vu)
        {
            Vector.Widen(Vector.Load(source + i), out Vector<uint> low, out Vector<uint> high);
            Vector.AsVectorSingle(Vector.ShiftLeft(low, 16)).Store(destination + i);
            Vector.AsVectorSingle(Vector.ShiftLeft(high, 16)).Store(destination + i + vf);
        }
    }

    /// <summary>
    /// <paramref name="tokens"/> fp8 rows (<see cref="Fp8KvFormat"/>) to fp32 rows of 576: each latent value is
    /// bf16(float(e4m3) * scale), as <see cref="Fp8KvFormat.DequantizeRow"/> computes it, so the CPU backend attends
    /// over exactly the cache that the reference sees dequantized; the rope values are bf16 already.
    /// </summary>
    private static void DequantizeToFloat(byte* rows, float* destination, int tokens)
    {
        for (int t = 0; t < tokens; t++)
        {
            byte* row = rows + (long)t * Fp8KvFormat.TokenBytes;
            float* d = destination + (long)t * Dk;
            float* scales = (float*)(row + Fp8KvFormat.ScalesOffset); // little-endian host, 4-byte aligned (656 = 4 * 164)
            for (int tile = 0; tile < Fp8KvFormat.Tiles; tile++)
            {
                float scale = scales[tile];
                for (int i = tile * Fp8KvFormat.TileValues, end = i + Fp8KvFormat.TileValues; i < end; i++)
                    d[i] = Bf16.ToFloat(Bf16.FromFloat(E4m3.ToFloat(row[i]) * scale));
            }
            ToFloat((ushort*)(row + Fp8KvFormat.RopeOffset), d + Dv, Fp8KvFormat.RopeValues);
        }
    }

    /// <summary>One worker's fp32 buffers, on the pinned object heap so raw pointers stay valid; reused every call.</summary>
    private sealed class WorkerScratch
    {
        private readonly float[] _floats;
        private readonly int[] _ints;

        public WorkerScratch()
        {
            int floats = Page * Dk                 // the page in fp32
                + MaxRowsPerItem * Dk              // the item's query rows
                + MaxRowsPerItem * Dv              // the output accumulators
                + MaxRowsPerItem * Page            // scores, then softmax weights
                + 3 * MaxRowsPerItem;              // running max, running sum, this page's correction
            _floats = GC.AllocateUninitializedArray<float>(floats, pinned: true);
            _ints = GC.AllocateUninitializedArray<int>(MaxRowsPerItem, pinned: true);

            float* f = (float*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_floats));
            Kv = f; f += Page * Dk;
            Q = f; f += MaxRowsPerItem * Dk;
            Acc = f; f += MaxRowsPerItem * Dv;
            P = f; f += MaxRowsPerItem * Page;
            RowMax = f; f += MaxRowsPerItem;
            RowSum = f; f += MaxRowsPerItem;
            Correction = f;
            Visible = (int*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_ints));
        }

        public float* Kv { get; }
        public float* Q { get; }
        public float* Acc { get; }
        public float* P { get; }
        public float* RowMax { get; }
        public float* RowSum { get; }
        public float* Correction { get; }
        public int* Visible { get; }
    }
}
