using System.Diagnostics;
using System.Globalization;
using System.Runtime.CompilerServices;
using FlashMla.Core.Backends;
using FlashMla.Core.Memory;
using FlashMla.Core.Tensors;
using FlashMla.Cuda.Backend;
using FlashMla.Cuda.DeviceCheck;

// flashmla-devicecheck [--fatbin PATH] [--header PATH] [--no-bench] [--seed N]
// Exit code 0 only when every check passed.
CultureInfo.DefaultThreadCurrentCulture = CultureInfo.InvariantCulture;
string fatbin = "native/build/flashmla.fatbin";
string header = "native/include/mla_params.h";
bool bench = true;
int seed = Environment.TickCount;
for (int a = 0; a < args.Length; a++)
{
    switch (args[a])
    {
        case "--fatbin": fatbin = args[++a]; break;
        case "--header": header = args[++a]; break;
        case "--no-bench": bench = false; break;
        case "--seed": seed = int.Parse(args[++a], CultureInfo.InvariantCulture); break;
        default: Console.Error.WriteLine($"unknown argument {args[a]}"); return 2;
    }
}
Console.WriteLine($"seed {seed}");
var checks = new DeviceChecks(new Random(seed));

checks.Run("abi-header", () =>
{
    if (!File.Exists(header)) return (false, $"header not found at {Path.GetFullPath(header)}");
    List<string> problems = HeaderAbiCheck.Compare(header);
    return (problems.Count == 0, problems.Count == 0 ? "C# mirror matches " + header : string.Join("; ", problems));
});

CudaProbeResult probe = CudaBackendFactory.Probe(fatbin);
checks.Run("probe", () => (probe.IsUsable, probe.Reason));
if (!probe.IsUsable) return checks.Finish();

checks.Run("size-from-memory", () =>
{
    using CudaBackend sized = CudaBackendFactory.Create(new CudaBackendOptions { FatbinPath = fatbin, NumLayers = 61, MemoryFraction = 0.05 });
    return (sized.Geometry.NumBlocks > 0, $"5% of free memory, 61 layers: {sized.Geometry.NumBlocks} blocks; {sized.DeviceDescription}");
});

const int Layers = 2, Blocks = 3072;
using (CudaBackend? backend = checks.Open("open", new CudaBackendOptions { FatbinPath = fatbin, NumLayers = Layers, NumBlocks = Blocks }))
if (backend is not null)
{
    backend.PoisonResults = true;
    backend.TransferChunkBytes = 64 << 10; // many staging chunks, so the chunked copies are what the reference checks
    var mirror = new KvMirror(Layers, Blocks);
    checks.Run("write-read-kv", () => checks.WriteReadKv(backend, mirror));
    checks.Run("copy-blocks", () => checks.CopyBlocks(backend, mirror));
    checks.Run("decode-args", () => checks.DecodeRefusesBadInput(backend, mirror));
    foreach (DecodeCase c in DecodeCase.All(new Random(seed + 1)))
        checks.Run("decode " + c.Name, () => checks.Decode(backend, mirror, c));
    checks.Run("decode pipelined x6", () => checks.DecodePipelined(backend, mirror));
    checks.QInParts = true; // q in parts from plain arrays: each part staged at its offset
    foreach (DecodeCase c in DecodeCase.All(new Random(seed + 4)))
        checks.Run("decode, q in parts " + c.Name, () => checks.Decode(backend, mirror, c));
    checks.QInParts = false;

    // The same steps with every tensor in page-locked pool arrays (as the server's wire buffers are):
    // q and new KV go up and out and lse come down with no staging copy.
    var pool = new PinnedTensorPool(1 << 28, 8);
    backend.AttachHostPool(pool);
    checks.Pool = pool;
    long directBefore = backend.DirectSteps;
    foreach (DecodeCase c in DecodeCase.All(new Random(seed + 2)))
        checks.Run("direct decode " + c.Name, () => checks.Decode(backend, mirror, c));
    checks.Run("direct decode pipelined x6", () => checks.DecodePipelined(backend, mirror));
    checks.QInParts = true;
    foreach (DecodeCase c in DecodeCase.All(new Random(seed + 3)))
        checks.Run("direct decode, q in parts " + c.Name, () => checks.Decode(backend, mirror, c));
    checks.QInParts = false;
    checks.Run("direct copies used", () => (backend.DirectSteps > directBefore && backend.RefusedHostRegistrations == 0,
        $"{backend.DirectSteps - directBefore} steps copied directly, {pool.RegisteredArrays} arrays page-locked, {backend.RefusedHostRegistrations} refused"));
    checks.Pool = null;
    checks.Run("kv-intact", () => checks.KvIntact(backend, mirror));
}

if (bench)
{
    using CudaBackend? timed = checks.Open("open-bench", new CudaBackendOptions { FatbinPath = fatbin, NumLayers = 1, NumBlocks = 128 * 128 + 16 });
    if (timed is not null) checks.Bench(timed);
}

// Last: a sticky fault kills the process's CUDA context for good.
checks.Run("sticky-fault", () =>
{
    using CudaBackend doomed = CudaBackendFactory.Create(new CudaBackendOptions { FatbinPath = fatbin, NumLayers = 1, NumBlocks = 4 });
    return checks.StickyFault(doomed);
});
return checks.Finish();

namespace FlashMla.Cuda.DeviceCheck
{
    internal sealed record DecodeCase(string Name, int Layer, int QueryTokens, int Heads, int[] Lens, bool Append)
    {
        public static IEnumerable<DecodeCase> All(Random random)
        {
            yield return new("b4 s1 h16 edges", 0, 1, 16, [1, 63, 64, 65], true);
            yield return new("b3 s1 h16 len0", 1, 1, 16, [0, 5, 64], false);
            yield return new("b6 s2 h128 short", 1, 2, 128, [1, 2, 3, 64, 65, 700], false);
            yield return new("b2 s1 h128 32k split", 0, 1, 128, [32768, 100], true);
            yield return new("b5 s3 h3 odd", 1, 3, 3, [3, 4, 130, 1000, 64], true);
            yield return new("b1 s1 h1 len1", 0, 1, 1, [1], true);
            yield return new("b4 s4 h128 512rows", 0, 4, 128, [4, 66, 129, 2000], true);
            yield return new("b32 s1 h64 varlen", 1, 1, 64, Enumerable.Range(0, 32).Select(_ => random.Next(1, 4097)).ToArray(), true);
            yield return new("b96 s2 h16 varlen", 0, 2, 16, Enumerable.Range(0, 96).Select(_ => random.Next(2, 1500)).ToArray(), true);
        }
    }

    internal sealed class DeviceChecks(Random random)
    {
        private readonly List<(string Name, bool Ok, string Note, double Seconds)> _results = [];

        /// <summary>When set, step tensors are rented from this pool (page-locked by the backend) instead of plain arrays.</summary>
        public PinnedTensorPool? Pool { get; set; }

        /// <summary>Hand q to the backend in parts (as a merged batch does: one part per request), copied out of the whole.</summary>
        public bool QInParts { get; set; }

        public void Run(string name, Func<(bool Ok, string Note)> check)
        {
            var clock = Stopwatch.StartNew();
            (bool ok, string note) result;
            try
            {
                result = check();
            }
            catch (Exception e)
            {
                result = (false, e.GetType().Name + ": " + e.Message);
            }
            _results.Add((name, result.ok, result.note, clock.Elapsed.TotalSeconds));
            Console.WriteLine($"{(result.ok ? "PASS" : "FAIL")} {name}: {result.note} ({clock.Elapsed.TotalSeconds:F2}s)");
        }

        public CudaBackend? Open(string name, CudaBackendOptions options)
        {
            CudaBackend? opened = null;
            Run(name, () =>
            {
                opened = CudaBackendFactory.Create(options);
                return (true, opened.DeviceDescription);
            });
            return opened;
        }

        public int Finish()
        {
            Console.WriteLine();
            Console.WriteLine($"{"check",-28} {"result",-6} {"s",6}  note");
            foreach (var r in _results)
                Console.WriteLine($"{r.Name,-28} {(r.Ok ? "PASS" : "FAIL"),-6} {r.Seconds,6:F2}  {Trim(r.Note, 90)}");
            int failed = _results.Count(r => !r.Ok);
            Console.WriteLine($"devicecheck: {_results.Count - failed} passed, {failed} failed");
            return failed == 0 ? 0 : 1;
        }

        private static string Trim(string s, int n) => s.Length <= n ? s : s[..n] + "...";

        private ushort[] RandomRows(int rows, float scale = 1f)
        {
            var data = new ushort[rows * MlaDims.HeadDimK];
            for (int i = 0; i < data.Length; i++) data[i] = Bf16.FromFloat(Gaussian() * scale);
            return data;
        }

        private float Gaussian()
        {
            double u = 1.0 - random.NextDouble(), v = random.NextDouble();
            return (float)(Math.Sqrt(-2 * Math.Log(u)) * Math.Cos(2 * Math.PI * v));
        }

        private int[] Shuffled(int n)
        {
            int[] a = Enumerable.Range(0, n).ToArray();
            random.Shuffle(a);
            return a;
        }

        public (bool, string) WriteReadKv(CudaBackend backend, KvMirror mirror)
        {
            int total = backend.Geometry.NumBlocks * MlaDims.BlockSize;
            // 40000 rows (three staging passes): shuffled slots, and a run of consecutive ones.
            int[] slots = Shuffled(total)[..36000].Concat(Enumerable.Range(0, 4000).Select(i => i)).Distinct().ToArray();
            int layer = 1;
            ushort[] rows = RandomRows(slots.Length);
            backend.WriteKv(layer, slots, rows);
            mirror.Write(layer, slots, rows);
            var back = new ushort[rows.Length];
            backend.ReadKv(layer, slots, back);
            int bad = CountDifferent(rows, back);
            // The other layer must be untouched by layer 1's writes: write it, then re-read both.
            int[] other = Shuffled(total)[..5000];
            ushort[] otherRows = RandomRows(other.Length);
            backend.WriteKv(0, other, otherRows);
            mirror.Write(0, other, otherRows);
            backend.ReadKv(layer, slots, back);
            bad += CountDifferent(rows, back);
            var otherBack = new ushort[otherRows.Length];
            backend.ReadKv(0, other, otherBack);
            bad += CountDifferent(otherRows, otherBack);
            return (bad == 0, $"{slots.Length} + {other.Length} rows written and read back, {bad} values differ");
        }

        public (bool, string) CopyBlocks(CudaBackend backend, KvMirror mirror)
        {
            int[] blocks = Shuffled(backend.Geometry.NumBlocks)[..8];
            for (int l = 0; l < mirror.Layers; l++)
            {
                int[] slots = blocks.SelectMany(b => Enumerable.Range(b * MlaDims.BlockSize, MlaDims.BlockSize)).ToArray();
                ushort[] rows = RandomRows(slots.Length);
                backend.WriteKv(l, slots, rows);
                mirror.Write(l, slots, rows);
            }
            int a = blocks[0], b = blocks[1], c = blocks[2], d = blocks[3], e = blocks[4], f = blocks[5];
            // Chained (b -> e reads what a -> b wrote), overwrite-after-read (f -> a), a self-copy, and a repeated destination.
            BlockCopy[] copies = [new(a, b), new(c, d), new(b, e), new(f, a), new(c, c), new(d, blocks[6]), new(a, blocks[6])];
            backend.CopyBlocks(copies);
            foreach (BlockCopy copy in copies) mirror.CopyBlock(copy.Source, copy.Destination);
            int bad = 0;
            for (int l = 0; l < mirror.Layers; l++)
                foreach (int block in blocks[..7])
                    bad += CompareBlock(backend, mirror, l, block);
            return (bad == 0, $"{copies.Length} copies over {mirror.Layers} layers, {bad} values differ from sequential copies");
        }

        public (bool, string) DecodeRefusesBadInput(CudaBackend backend, KvMirror mirror)
        {
            int[] slots = Enumerable.Range(0, 10).ToArray();
            ushort[] rows = RandomRows(slots.Length);
            backend.WriteKv(0, slots, rows);
            mirror.Write(0, slots, rows);
            var batch = NewBatch(0, 1, 16, [10], stride: 1, blockTable: [backend.Geometry.NumBlocks], append: false);
            bool refused = false;
            try { backend.Decode(batch); } catch (ArgumentException) { refused = true; }
            // The backend must still work after the refusal.
            var ok = NewBatch(0, 1, 16, [10], stride: 1, blockTable: [0], append: false);
            backend.Decode(ok);
            return (refused && ok.Lse.Span[0] is var lse && float.IsFinite(lse), $"block id {backend.Geometry.NumBlocks} refused: {refused}; next decode lse {ok.Lse.Span[0]}");
        }

        public (bool, string) Decode(CudaBackend backend, KvMirror mirror, DecodeCase c)
        {
            int b = c.Lens.Length, sq = c.QueryTokens, hq = c.Heads;
            int stride = c.Lens.Max(l => MlaDims.BlocksFor(l)) + 1;
            int[] pool = Shuffled(backend.Geometry.NumBlocks);
            int used = c.Lens.Sum(l => MlaDims.BlocksFor(l));
            if (used > pool.Length) throw new InvalidOperationException($"case needs {used} blocks");
            var table = new int[b * stride];
            Array.Fill(table, -1);
            int next = 0;
            var cached = new List<int>();
            var nanSlots = new List<int>();
            var newSlots = new List<int>();
            for (int s = 0; s < b; s++)
            {
                int blocks = MlaDims.BlocksFor(c.Lens[s]);
                for (int j = 0; j < blocks; j++) table[s * stride + j] = pool[next++];
                int appended = c.Append ? sq : 0;
                for (int t = 0; t < blocks * MlaDims.BlockSize; t++)
                {
                    int slot = table[s * stride + t / MlaDims.BlockSize] * MlaDims.BlockSize + t % MlaDims.BlockSize;
                    if (t >= c.Lens[s]) nanSlots.Add(slot);
                    else if (t >= c.Lens[s] - appended) newSlots.Add(slot);
                    else cached.Add(slot);
                }
            }
            ushort[] cachedRows = RandomRows(cached.Count);
            backend.WriteKv(c.Layer, cached.ToArray(), cachedRows);
            mirror.Write(c.Layer, cached.ToArray(), cachedRows);
            if (nanSlots.Count > 0)
            {
                var nanRows = new ushort[nanSlots.Count * MlaDims.HeadDimK];
                Array.Fill(nanRows, (ushort)0x7FC0); // a kernel that reads past a sequence's end turns its output NaN
                backend.WriteKv(c.Layer, nanSlots.ToArray(), nanRows);
                mirror.Write(c.Layer, nanSlots.ToArray(), nanRows);
            }
            ushort[] newRows = c.Append ? RandomRows(newSlots.Count) : [];
            var batch = NewBatch(c.Layer, sq, hq, c.Lens, stride, table, c.Append, newRows, newSlots.ToArray());

            var clock = Stopwatch.StartNew();
            backend.Decode(QInParts ? InParts(batch) : batch);
            double wallMs = clock.Elapsed.TotalMilliseconds;
            if (c.Append) mirror.Write(c.Layer, newSlots.ToArray(), newRows);

            (bool scored, string scoreNote) = Score(mirror, c.Layer, batch, c.Lens, table, stride);

            ReadOnlySpan<ushort> got = batch.Out.Span;
            // Rows that see nothing must be exactly 0.
            int blindNonZero = 0;
            for (int row = 0; row < batch.QueryRows; row++)
            {
                int s = row / (sq * hq), i = row / hq % sq;
                if (c.Lens[s] - sq + i + 1 > 0) continue;
                for (int col = 0; col < MlaDims.HeadDimV; col++)
                    if (got[row * MlaDims.HeadDimV + col] != 0) { blindNonZero++; break; }
            }
            // The step's rows were appended into their slots.
            int appendBad = 0;
            if (c.Append && newSlots.Count > 0)
            {
                var back = new ushort[newRows.Length];
                backend.ReadKv(c.Layer, newSlots.ToArray(), back);
                appendBad = CountDifferent(newRows, back);
            }
            bool ok = scored && blindNonZero == 0 && appendBad == 0;
            return (ok, $"{scoreNote}, blind rows nonzero {blindNonZero}, append diffs {appendBad}, kernels {backend.LastDecodeKernelMilliseconds:F3} ms, call {wallMs:F2} ms");
        }

        /// <summary>
        /// Six decode steps submitted back to back (more than the backend's slots, so slots are reused while
        /// steps are in flight), most appending to sequences that earlier steps still in flight appended to:
        /// each step must see exactly the rows before it. Then each is waited for and checked.
        /// </summary>
        public (bool, string) DecodePipelined(CudaBackend backend, KvMirror mirror)
        {
            const int layer = 1;
            int[] initial = [1, 63, 64, 65, 500, 3000];
            (int[] Seqs, int Sq, int Hq, bool Append)[] steps =
            [
                ([0, 1, 2, 3], 1, 16, true),
                ([0, 2, 4], 1, 128, true),
                ([0, 1, 2, 3, 4, 5], 2, 64, true),
                ([5, 0], 1, 16, false),
                ([0, 3], 1, 128, true),
                ([1, 2, 3, 4, 5], 1, 32, true),
            ];
            int n = initial.Length;
            int[] final = (int[])initial.Clone();
            foreach (var step in steps)
                if (step.Append) foreach (int s in step.Seqs) final[s] += step.Sq;
            int maxBlocks = final.Max(l => MlaDims.BlocksFor(l));
            int[] pool = Shuffled(backend.Geometry.NumBlocks);
            var blocks = new int[n][];
            int next = 0;
            for (int s = 0; s < n; s++)
            {
                blocks[s] = pool[next..(next += MlaDims.BlocksFor(final[s]))];
                var rowsSlots = new List<int>();
                var nanSlots = new List<int>();
                for (int t = 0; t < blocks[s].Length * MlaDims.BlockSize; t++)
                    (t < initial[s] ? rowsSlots : nanSlots).Add(blocks[s][t / MlaDims.BlockSize] * MlaDims.BlockSize + t % MlaDims.BlockSize);
                ushort[] rows = RandomRows(rowsSlots.Count);
                backend.WriteKv(layer, rowsSlots.ToArray(), rows);
                mirror.Write(layer, rowsSlots.ToArray(), rows);
                var nanRows = new ushort[nanSlots.Count * MlaDims.HeadDimK];
                Array.Fill(nanRows, (ushort)0x7FC0);
                backend.WriteKv(layer, nanSlots.ToArray(), nanRows);
                mirror.Write(layer, nanSlots.ToArray(), nanRows);
            }

            int[] length = (int[])initial.Clone();
            var submitted = new List<(DecodeBatch Batch, int[] Lens, int[] Table, DecodeSubmission Submission)>();
            var clock = Stopwatch.StartNew();
            foreach (var (seqs, sq, hq, append) in steps)
            {
                int b = seqs.Length;
                int stride = maxBlocks;
                var table = new int[b * stride];
                var lens = new int[b];
                var newSlots = new List<int>();
                for (int i = 0; i < b; i++)
                {
                    int s = seqs[i];
                    blocks[s].CopyTo(table, i * stride);
                    if (append)
                        for (int t = length[s]; t < length[s] + sq; t++)
                            newSlots.Add(blocks[s][t / MlaDims.BlockSize] * MlaDims.BlockSize + t % MlaDims.BlockSize);
                    lens[i] = length[s] += append ? sq : 0;
                }
                ushort[] newRows = append ? RandomRows(newSlots.Count) : [];
                var batch = NewBatch(layer, sq, hq, lens, stride, table, append, newRows, newSlots.ToArray());
                submitted.Add((batch, lens, table, backend.Submit(batch)));
                if (append) mirror.Write(layer, newSlots.ToArray(), newRows); // the reference reads the mirror only up to each step's lengths
            }
            double submitMs = clock.Elapsed.TotalMilliseconds;
            foreach (var step in submitted) step.Submission.Wait();
            double allMs = clock.Elapsed.TotalMilliseconds;

            var notes = new List<string>();
            bool ok = true;
            foreach (var (batch, lens, table, _) in submitted)
            {
                (bool good, string note) = Score(mirror, layer, batch, lens, table, batch.BlockTableStride);
                ok &= good;
                notes.Add($"b{batch.BatchSize} s{batch.QueryTokens} h{batch.Heads}: {note}");
            }
            return (ok, $"submitted in {submitMs:F1} ms, all done in {allMs:F1} ms; " + string.Join("; ", notes));
        }

        /// <summary>Out and lse of a finished batch against the float64 reference over the mirror.</summary>
        private static (bool, string) Score(KvMirror mirror, int layer, DecodeBatch batch, int[] lens, int[] table, int stride)
        {
            int b = batch.BatchSize, sq = batch.QueryTokens, hq = batch.Heads;
            var outRef = new double[batch.Out.Length];
            var lseRef = new double[batch.Lse.Length];
            ReferenceDecode.Run(mirror, layer, b, sq, hq, batch.SoftmaxScale, batch.Q.ToArray(), lens, table, stride, outRef, lseRef);
            ReadOnlySpan<ushort> got = batch.Out.Span;
            double diff2 = 0, ref2 = 0;
            int nan = 0;
            for (int i = 0; i < got.Length; i++)
            {
                double g = Bf16.ToFloat(got[i]);
                if (double.IsNaN(g)) { nan++; continue; }
                diff2 += (g - outRef[i]) * (g - outRef[i]);
                ref2 += outRef[i] * outRef[i];
            }
            double rel = Math.Sqrt(diff2 / Math.Max(ref2, 1e-300));
            double lseErr = 0;
            int lseBad = 0;
            ReadOnlySpan<float> lse = batch.Lse.Span;
            for (int i = 0; i < lse.Length; i++)
            {
                if (double.IsNegativeInfinity(lseRef[i])) { if (!float.IsNegativeInfinity(lse[i])) lseBad++; continue; }
                if (!float.IsFinite(lse[i])) { lseBad++; continue; }
                lseErr = Math.Max(lseErr, Math.Abs(lse[i] - lseRef[i]));
            }
            bool ok = nan == 0 && rel < 1e-2 && lseErr < 1e-3 && lseBad == 0;
            return (ok, $"rel {rel:E2}, lse err {lseErr:E1}, NaN {nan}, bad lse {lseBad}");
        }

        public (bool, string) StickyFault(CudaBackend backend)
        {
            BackendFaultException? first = null, next = null;
            try { backend.InjectDeviceFault(); } catch (BackendFaultException e) { first = e; }
            try { backend.WriteKv(0, [0], new ushort[MlaDims.HeadDimK]); } catch (BackendFaultException e) { next = e; }
            bool ok = first is { IsSticky: true } && first.Message.Contains("CUDA_ERROR_ILLEGAL_ADDRESS", StringComparison.Ordinal)
                && next is { IsSticky: true } && next.Message.Contains("earlier device fault", StringComparison.Ordinal);
            return (ok, $"fault: {first?.Message ?? "none"} | next call: {next?.Message ?? "none"}");
        }

        public (bool, string) KvIntact(CudaBackend backend, KvMirror mirror)
        {
            int bad = 0, compared = 0;
            for (int l = 0; l < mirror.Layers; l++)
            {
                int[] slots = Enumerable.Range(0, mirror.Blocks * MlaDims.BlockSize).Where(s => mirror.Written(l, s)).ToArray();
                var back = new ushort[slots.Length * MlaDims.HeadDimK];
                backend.ReadKv(l, slots, back);
                for (int n = 0; n < slots.Length; n++)
                {
                    if (!back.AsSpan(n * MlaDims.HeadDimK, MlaDims.HeadDimK).SequenceEqual(mirror.Row(l, slots[n]))) bad++;
                }
                compared += slots.Length;
            }
            return (bad == 0, $"{compared} written rows of {mirror.Layers} layers read back, {bad} differ from the host copy");
        }

        public void Bench(CudaBackend backend)
        {
            // Fill the pool with random rows (one random chunk repeated), then time decode shapes without appends.
            int total = backend.Geometry.NumBlocks * MlaDims.BlockSize;
            const int Chunk = 16384;
            ushort[] rows = RandomRows(Chunk);
            var slots = new int[Chunk];
            for (int first = 0; first < total; first += Chunk)
            {
                int n = Math.Min(Chunk, total - first);
                for (int i = 0; i < n; i++) slots[i] = first + i;
                backend.WriteKv(0, slots.AsSpan(0, n), rows.AsSpan(0, n * MlaDims.HeadDimK));
            }
            (int B, int Sk, int Hq, int Sq)[] shapes = [(128, 4096, 16, 1), (128, 8192, 16, 1), (128, 4096, 128, 1), (128, 4096, 128, 2), (128, 4096, 64, 2)];
            foreach (var (bsz, sk, hq, sq) in shapes)
            {
                Run($"bench b{bsz} sk{sk} h{hq} s{sq}", () =>
                {
                    int stride = MlaDims.BlocksFor(sk);
                    int[] perm = Shuffled(backend.Geometry.NumBlocks);
                    int[] table = new int[bsz * stride];
                    for (int i = 0; i < table.Length; i++) table[i] = perm[i % perm.Length];
                    var batch = NewBatch(0, sq, hq, Enumerable.Repeat(sk, bsz).ToArray(), stride, table, append: false);
                    (DecodeStepTimings chunked, double call) = TimeDecode(backend, batch, transferChunk: 4L << 20);
                    (DecodeStepTimings whole, double wholeCall) = TimeDecode(backend, batch, transferChunk: 0);
                    double pipelined = TimePipelined(backend, batch);
                    // The same step from page-locked pool arrays, as the server sends it: no staging copies.
                    var pool = new PinnedTensorPool(1 << 28, 4);
                    backend.AttachHostPool(pool);
                    Pool = pool;
                    var pooled = NewBatch(0, sq, hq, Enumerable.Repeat(sk, bsz).ToArray(), stride, table, append: false);
                    Pool = null;
                    (DecodeStepTimings direct, double directCall) = TimeDecode(backend, pooled, transferChunk: 4L << 20);
                    double directPipelined = TimePipelined(backend, pooled);
                    double k = chunked.KernelsMs;
                    double bytes = (double)bsz * sk * MlaDims.KvRowBytes + batch.Q.Length * 2.0 + batch.Out.Length * 2.0;
                    double flops = 2.0 * bsz * sq * hq * sk * (MlaDims.HeadDimK + MlaDims.HeadDimV);
                    bool finite = true;
                    foreach (float l in batch.Lse.Span) finite &= float.IsFinite(l);
                    return (finite, $"kernels {k * 1000:F0} us: {bytes / (k * 1e-3) / 1e9:F0} GB/s, {flops / (k * 1e-3) / 1e12:F0} TFLOP/s; "
                        + $"call {call:F2} ms (H2D {chunked.UploadMs:F2}, D2H {chunked.DownloadMs:F2}), back to back {pipelined:F2} ms/step, unchunked {wholeCall:F2} ms (H2D {whole.UploadMs:F2}, D2H {whole.DownloadMs:F2}); "
                        + $"page-locked call {directCall:F2} ms (H2D {direct.UploadMs:F2}, D2H {direct.DownloadMs:F2}), back to back {directPipelined:F2} ms/step; parts {chunked.Parts}, splits {chunked.Splits}");
                });
            }
        }

        /// <summary>Median timings of 20 decodes after 3 warm-ups; the call time on the host clock.</summary>
        private static (DecodeStepTimings Timings, double CallMs) TimeDecode(CudaBackend backend, DecodeBatch batch, long transferChunk)
        {
            backend.TransferChunkBytes = transferChunk;
            for (int w = 0; w < 3; w++) backend.Decode(batch);
            var runs = new List<DecodeStepTimings>();
            var calls = new List<double>();
            for (int r = 0; r < 20; r++)
            {
                var clock = Stopwatch.StartNew();
                backend.Decode(batch);
                calls.Add(clock.Elapsed.TotalMilliseconds);
                runs.Add(backend.LastDecodeTimings);
            }
            backend.TransferChunkBytes = 4L << 20;
            DecodeStepTimings Med(Func<DecodeStepTimings, double> f) => runs.OrderBy(f).ElementAt(runs.Count / 2);
            var m = new DecodeStepTimings(
                Med(t => t.UploadMs).UploadMs, Med(t => t.KernelsMs).KernelsMs, Med(t => t.DownloadMs).DownloadMs,
                Med(t => t.TotalMs).TotalMs, runs[0].Splits, runs[0].Parts);
            return (m, Median(calls));
        }

        /// <summary>Host time per step of 20 steps submitted back to back, as many in flight as the backend has slots.</summary>
        private static double TimePipelined(CudaBackend backend, DecodeBatch batch)
        {
            const int Steps = 20;
            var pending = new Queue<DecodeSubmission>();
            for (int w = 0; w < 3; w++) backend.Decode(batch);
            var clock = Stopwatch.StartNew();
            for (int r = 0; r < Steps; r++)
            {
                if (pending.Count == CudaBackend.DecodeSlots) pending.Dequeue().Wait();
                pending.Enqueue(backend.Submit(batch));
            }
            while (pending.Count > 0) pending.Dequeue().Wait();
            return clock.Elapsed.TotalMilliseconds / Steps;
        }

        private static double Median(List<double> values)
        {
            values.Sort();
            return values[values.Count / 2];
        }

        private DecodeBatch NewBatch(int layer, int sq, int hq, int[] lens, int stride, int[] blockTable, bool append, ushort[]? newRows = null, int[]? newSlots = null)
        {
            int b = lens.Length;
            int rows = b * sq * hq;
            Memory<ushort> q = Tensor<ushort>(rows * MlaDims.HeadDimK);
            for (int i = 0; i < q.Length; i++) q.Span[i] = Bf16.FromFloat(Gaussian());
            if (append && newRows is not null && Pool is not null)
            {
                Memory<ushort> pooled = Tensor<ushort>(newRows.Length);
                newRows.CopyTo(pooled);
                return NewBatch(layer, sq, hq, lens, stride, blockTable, q, pooled, newSlots);
            }
            return NewBatch(layer, sq, hq, lens, stride, blockTable, q, append ? newRows : ReadOnlyMemory<ushort>.Empty, append ? newSlots : null);
        }

        private DecodeBatch NewBatch(int layer, int sq, int hq, int[] lens, int stride, int[] blockTable, ReadOnlyMemory<ushort> q,
            ReadOnlyMemory<ushort> newRows, int[]? newSlots)
        {
            int b = lens.Length;
            int rows = b * sq * hq;
            return new DecodeBatch
            {
                Layer = layer,
                BatchSize = b,
                QueryTokens = sq,
                Heads = hq,
                SoftmaxScale = MlaDims.DefaultSoftmaxScale,
                Q = q,
                NewKv = newRows,
                NewKvSlots = newRows.IsEmpty ? ReadOnlyMemory<int>.Empty : newSlots,
                SeqLens = lens,
                BlockTable = blockTable,
                BlockTableStride = stride,
                Out = Tensor<ushort>(rows * MlaDims.HeadDimV),
                Lse = Tensor<float>(rows),
            };
        }

        /// <summary>
        /// The same step with q in up to three parts of whole sequences, each in a tensor of its own (pool arrays when
        /// <see cref="Pool"/> is set), sharing <paramref name="batch"/>'s outputs; the reference still reads the whole q.
        /// </summary>
        private DecodeBatch InParts(DecodeBatch batch)
        {
            int perSeq = batch.QueryTokens * batch.Heads * MlaDims.HeadDimK;
            int b = batch.BatchSize;
            int[] cuts = b >= 3 ? [0, 1, Math.Max(2, b / 2), b] : b == 2 ? [0, 1, 2] : [0, 1];
            var parts = new List<ReadOnlyMemory<ushort>>();
            for (int k = 0; k + 1 < cuts.Length; k++)
            {
                var part = Tensor<ushort>((cuts[k + 1] - cuts[k]) * perSeq);
                batch.Q.Slice(cuts[k] * perSeq, part.Length).CopyTo(part);
                parts.Add(part);
            }
            return new DecodeBatch
            {
                Layer = batch.Layer, BatchSize = b, QueryTokens = batch.QueryTokens, Heads = batch.Heads, SoftmaxScale = batch.SoftmaxScale,
                Q = default, QParts = parts, NewKv = batch.NewKv, NewKvSlots = batch.NewKvSlots, SeqLens = batch.SeqLens,
                BlockTable = batch.BlockTable, BlockTableStride = batch.BlockTableStride, Out = batch.Out, Lse = batch.Lse,
            };
        }

        /// <summary>A tensor of <paramref name="n"/> elements: a plain array, or a view of a pool array when <see cref="Pool"/> is set.</summary>
        private Memory<T> Tensor<T>(int n) where T : unmanaged =>
            Pool is null ? new T[n] : MemoryCast.Cast<byte, T>(Pool.Rent(n * Unsafe.SizeOf<T>()).AsMemory(0, n * Unsafe.SizeOf<T>()));

        private static int CompareBlock(CudaBackend backend, KvMirror mirror, int layer, int block)
        {
            int[] slots = Enumerable.Range(block * MlaDims.BlockSize, MlaDims.BlockSize).ToArray();
            var back = new ushort[slots.Length * MlaDims.HeadDimK];
            backend.ReadKv(layer, slots, back);
            int bad = 0;
            for (int n = 0; n < slots.Length; n++)
                if (!back.AsSpan(n * MlaDims.HeadDimK, MlaDims.HeadDimK).SequenceEqual(mirror.Row(layer, slots[n]))) bad++;
            return bad;
        }

        private static int CountDifferent(ReadOnlySpan<ushort> a, ReadOnlySpan<ushort> b)
        {
            int n = 0;
            for (int i = 0; i < a.Length; i++) if (a[i] != b[i]) n++;
            return n;
        }
    }
}
