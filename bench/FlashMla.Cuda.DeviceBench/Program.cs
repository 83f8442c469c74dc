using System.Diagnostics;
using System.Globalization;
using FlashMla.Core.Backends;
using FlashMla.Core.Memory;
using FlashMla.Core.Tensors;
using FlashMla.Cuda.Backend;
using FlashMla.Cuda.DeviceCheck;

// flashmla-devicebench [--fatbin PATH] [--seed N] [--kv-dtype bf16|fp8]
// Fills one layer's pool (of the KV dtype: fp8 runs the fp8 kernels) with random rows, then times decode shapes without appends: the kernels (device events of
// each step's own submission), the call on the host clock with staging copies chunked and whole, the same step from
// page-locked pool arrays (no staging), and steps submitted back to back. Medians of 20 after 3 warm-ups.
CultureInfo.DefaultThreadCurrentCulture = CultureInfo.InvariantCulture;
string fatbin = "native/build/flashmla.fatbin";
int seed = 20261201;
KvDtype dtype = KvDtype.Bf16;
for (int a = 0; a < args.Length; a++)
{
    switch (args[a])
    {
        case "--fatbin": fatbin = args[++a]; break;
        case "--seed": seed = int.Parse(args[++a], CultureInfo.InvariantCulture); break;
        case "--kv-dtype" when KvDtypes.TryParse(args[a + 1], out dtype): a++; break;
        default: Console.Error.WriteLine($"unknown argument {args[a]}"); return 2;
    }
}
CudaProbeResult probe = CudaBackendFactory.Probe(fatbin);
if (!probe.IsUsable)
{
    Console.Error.WriteLine("devicebench: no usable CUDA device: " + probe.Reason);
    return 1;
}

using CudaBackend backend = CudaBackendFactory.Create(new CudaBackendOptions { FatbinPath = fatbin, NumLayers = 1, NumBlocks = 128 * 128 + 16, KvDtype = dtype });
Console.WriteLine($"devicebench: {backend.DeviceDescription}; seed {seed}");
var steps = new DeviceSteps(new Random(seed));
int total = backend.Geometry.NumBlocks * MlaDims.BlockSize;
const int Chunk = 16384;
ushort[] rows = steps.RandomRows(Chunk);
var slots = new int[Chunk];
for (int first = 0; first < total; first += Chunk)
{
    int n = Math.Min(Chunk, total - first);
    for (int i = 0; i < n; i++) slots[i] = first + i;
    backend.WriteKv(0, slots.AsSpan(0, n), rows.AsSpan(0, n * MlaDims.HeadDimK));
}

var pool = new PinnedTensorPool(1 << 28, 4);
Console.WriteLine($"{"shape",-24} {"kernels us",10} {"GB/s",6} {"Gtok/s",7} {"TFLOP/s",8} {"call ms",8} {"H2D ms",7} {"D2H ms",7} {"whole ms",9} {"b2b ms",7} {"locked ms",10} {"locked b2b",11} {"parts",6} {"splits",7}");
(int B, int Sk, int Hq, int Sq)[] shapes = [(128, 4096, 16, 1), (128, 8192, 16, 1), (128, 4096, 128, 1), (128, 4096, 128, 2), (128, 4096, 64, 2)];
foreach (var (bsz, sk, hq, sq) in shapes)
{
    int stride = MlaDims.BlocksFor(sk);
    int[] perm = steps.Shuffled(backend.Geometry.NumBlocks);
    int[] table = new int[bsz * stride];
    for (int i = 0; i < table.Length; i++) table[i] = perm[i % perm.Length];
    int[] lens = Enumerable.Repeat(sk, bsz).ToArray();
    var batch = steps.NewBatch(0, sq, hq, lens, stride, table);
    var chunked = Time(backend, batch, transferChunk: 4L << 20);
    var whole = Time(backend, batch, transferChunk: 0);
    double backToBack = TimeBackToBack(backend, batch);
    // The same step from page-locked pool arrays, as the server sends it: no staging copies.
    backend.AttachHostPool(pool);
    steps.Pool = pool;
    var pooled = steps.NewBatch(0, sq, hq, lens, stride, table);
    steps.Pool = null;
    var locked = Time(backend, pooled, transferChunk: 4L << 20);
    double lockedBackToBack = TimeBackToBack(backend, pooled);
    var layout = DecodeStepLayout.Plan(batch, backend.SmCount);
    int splits = layout.Ints.Pack(new int[layout.Ints.TotalInts], batch.SeqLens.Span, batch.BlockTable.Span, default, backend.Geometry.NumBlocks);

    double kernelSeconds = chunked.Phases.KernelMicroseconds * 1e-6;
    // KV bytes in the pools' dtype (656 a token in fp8); Gtok/s: KV tokens attended per second.
    double bytes = (double)bsz * sk * backend.Geometry.BytesPerToken + batch.Q.Length * 2.0 + batch.Out.Length * 2.0;
    double flops = 2.0 * bsz * sq * hq * sk * (MlaDims.HeadDimK + MlaDims.HeadDimV);
    Console.WriteLine($"{$"b{bsz} sk{sk} h{hq} s{sq}",-24} {chunked.Phases.KernelMicroseconds,10:F0} {bytes / kernelSeconds / 1e9,6:F0} {(double)bsz * sk / kernelSeconds / 1e9,7:F1} {flops / kernelSeconds / 1e12,8:F0} " +
        $"{chunked.CallMs,8:F2} {chunked.Phases.UploadMicroseconds / 1000,7:F2} {chunked.Phases.DownloadMicroseconds / 1000,7:F2} {whole.CallMs,9:F2} {backToBack,7:F2} " +
        $"{locked.CallMs,10:F2} {lockedBackToBack,11:F2} {layout.Parts,6} {splits,7}");
}
return 0;

// Median device phases (each from the step's own submission) and host-clock call time of 20 decodes after 3 warm-ups.
static (DevicePhases Phases, double CallMs) Time(CudaBackend backend, DecodeBatch batch, long transferChunk)
{
    backend.TransferChunkBytes = transferChunk;
    for (int w = 0; w < 3; w++) backend.Decode(batch);
    var phases = new List<DevicePhases>();
    var calls = new List<double>();
    for (int r = 0; r < 20; r++)
    {
        var clock = Stopwatch.StartNew();
        var submission = backend.Submit(batch);
        submission.Wait();
        calls.Add(clock.Elapsed.TotalMilliseconds);
        phases.Add(submission.Phases ?? throw new InvalidOperationException("the CUDA backend measures every step"));
    }
    backend.TransferChunkBytes = 4L << 20;
    static double Median(IEnumerable<double> values) => values.Order().ElementAt(10);
    return (new DevicePhases(Median(phases.Select(p => p.UploadMicroseconds)), Median(phases.Select(p => p.KernelMicroseconds)),
        Median(phases.Select(p => p.DownloadMicroseconds))), Median(calls));
}

// Host time per step of 20 steps submitted back to back, as many in flight as the backend has slots.
static double TimeBackToBack(CudaBackend backend, DecodeBatch batch)
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
