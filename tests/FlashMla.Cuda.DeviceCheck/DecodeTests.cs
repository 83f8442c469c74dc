using System.Diagnostics;
using FlashMla.Core.Backends;
using FlashMla.Core.Memory;
using FlashMla.Core.Tensors;

namespace FlashMla.Cuda.DeviceCheck;

/// <summary>
/// Decode on the GPU against the float64 reference, every case with q whole and in segments (as a merged batch hands
/// it), and six steps in flight back to back. The same tests run with every tensor staged and with every tensor
/// page-locked (<see cref="PageLockedDecodeTests"/>).
/// </summary>
public abstract class DecodeTests(DeviceBackend device, ITestOutputHelper output)
{
    /// <summary>Called after each step: the page-locked tests check the step went without staging.</summary>
    private protected virtual void AfterStep(long directStepsBefore, DecodeBatch batch) { }

    [Theory]
    [MemberData(nameof(DecodeCase.Names), MemberType = typeof(DecodeCase))]
    public void Decode_matches_the_float64_reference(string name) => Check(DecodeCase.Named(name), inSegments: false);

    [Theory]
    [MemberData(nameof(DecodeCase.Names), MemberType = typeof(DecodeCase))]
    public void Decode_with_q_in_segments_matches_the_float64_reference(string name) => Check(DecodeCase.Named(name), inSegments: true);

    private void Check(DecodeCase c, bool inSegments)
    {
        GpuDevice.Require();
        var backend = device.Backend;
        var mirror = device.Mirror;
        var steps = device.Steps(c.Name + (inSegments ? " in segments" : ""));
        int sq = c.QueryTokens, hq = c.Heads;
        var (stride, table, cached, newSlots, nanSlots) = DecodeCaseLayout.Of(c, steps, backend.Geometry.NumBlocks);
        ushort[] cachedRows = steps.RandomRows(cached.Length);
        device.Write(c.Layer, cached, cachedRows);
        if (nanSlots.Length > 0) device.Write(c.Layer, nanSlots, DecodeCaseLayout.NaNRows(nanSlots.Length));
        ushort[] newRows = c.Append ? steps.RandomRows(newSlots.Length) : [];
        var batch = steps.NewBatch(c.Layer, sq, hq, c.Lens, stride, table, newRows, newSlots);
        if (inSegments) batch = steps.InSegments(batch);

        long directBefore = backend.DirectSteps;
        var clock = Stopwatch.StartNew();
        var submission = backend.Submit(batch);
        submission.Wait();
        double wallMs = clock.Elapsed.TotalMilliseconds;
        AfterStep(directBefore, batch);
        if (c.Append) mirror.Write(c.Layer, newSlots, newRows);

        var score = ReferenceScore.Of(mirror, batch);
        // Rows that see nothing must be exactly 0.
        int blindNonZero = 0;
        ReadOnlySpan<ushort> got = batch.Out.Span;
        for (int row = 0; row < batch.QueryRows; row++)
        {
            int s = row / (sq * hq), i = row / hq % sq;
            if (c.Lens[s] - sq + i + 1 > 0) continue;
            for (int col = 0; col < MlaDims.HeadDimV; col++)
                if (got[row * MlaDims.HeadDimV + col] != 0) { blindNonZero++; break; }
        }
        // The step's rows were appended into their slots.
        int appendBad = 0;
        if (c.Append && newSlots.Length > 0)
        {
            var back = new ushort[newRows.Length];
            backend.ReadKv(c.Layer, newSlots, back);
            appendBad = Differences(newRows, back);
        }
        output.WriteLine($"{c.Name}: {score}, blind rows nonzero {blindNonZero}, append diffs {appendBad}, " +
            $"kernels {submission.Phases?.KernelMicroseconds ?? double.NaN:F0} us, call {wallMs:F2} ms");
        Assert.True(score.Passes, score.ToString());
        Assert.Equal(0, blindNonZero);
        Assert.Equal(0, appendBad);
    }

    /// <summary>
    /// Six decode steps submitted back to back (more than the backend's slots, so slots are reused while steps are in
    /// flight), most appending to sequences that earlier steps still in flight appended to: each step must see exactly
    /// the rows before it, and each submission carries its own device phases.
    /// </summary>
    [Fact]
    public void Steps_in_flight_back_to_back_each_see_exactly_the_rows_before_them()
    {
        GpuDevice.Require();
        var backend = device.Backend;
        var mirror = device.Mirror;
        var steps = device.Steps("pipelined");
        const int layer = 1;
        int[] initial = [1, 63, 64, 65, 500, 3000];
        (int[] Seqs, int Sq, int Hq, bool Append)[] plan =
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
        foreach (var step in plan)
            if (step.Append) foreach (int s in step.Seqs) final[s] += step.Sq;
        int maxBlocks = final.Max(l => MlaDims.BlocksFor(l));
        int[] pool = steps.Shuffled(backend.Geometry.NumBlocks);
        var blocks = new int[n][];
        int next = 0;
        for (int s = 0; s < n; s++)
        {
            blocks[s] = pool[next..(next += MlaDims.BlocksFor(final[s]))];
            List<int> rowSlots = [], nanSlots = [];
            for (int t = 0; t < blocks[s].Length * MlaDims.BlockSize; t++)
                (t < initial[s] ? rowSlots : nanSlots).Add(blocks[s][t / MlaDims.BlockSize] * MlaDims.BlockSize + t % MlaDims.BlockSize);
            ushort[] rows = steps.RandomRows(rowSlots.Count);
            device.Write(layer, rowSlots.ToArray(), rows);
            device.Write(layer, nanSlots.ToArray(), DecodeCaseLayout.NaNRows(nanSlots.Count));
        }

        int[] length = (int[])initial.Clone();
        var submitted = new List<(DecodeBatch Batch, DecodeSubmission Submission)>();
        var clock = Stopwatch.StartNew();
        foreach (var (seqs, sq, hq, append) in plan)
        {
            int b = seqs.Length;
            var table = new int[b * maxBlocks];
            var lens = new int[b];
            var newSlots = new List<int>();
            for (int i = 0; i < b; i++)
            {
                int s = seqs[i];
                blocks[s].CopyTo(table, i * maxBlocks);
                if (append)
                    for (int t = length[s]; t < length[s] + sq; t++)
                        newSlots.Add(blocks[s][t / MlaDims.BlockSize] * MlaDims.BlockSize + t % MlaDims.BlockSize);
                lens[i] = length[s] += append ? sq : 0;
            }
            ushort[] newRows = append ? steps.RandomRows(newSlots.Count) : [];
            var batch = steps.NewBatch(layer, sq, hq, lens, maxBlocks, table, newRows, newSlots.ToArray());
            submitted.Add((batch, backend.Submit(batch)));
            if (append) mirror.Write(layer, newSlots.ToArray(), newRows); // the reference reads the mirror only up to each step's lengths
        }
        double submitMs = clock.Elapsed.TotalMilliseconds;
        foreach (var step in submitted) step.Submission.Wait();
        output.WriteLine($"submitted in {submitMs:F1} ms, all done in {clock.Elapsed.TotalMilliseconds:F1} ms");

        foreach (var (batch, submission) in submitted)
        {
            var score = ReferenceScore.Of(mirror, batch);
            output.WriteLine($"b{batch.BatchSize} s{batch.QueryTokens} h{batch.Heads}: {score}, kernels {submission.Phases?.KernelMicroseconds:F0} us");
            Assert.True(score.Passes, $"b{batch.BatchSize} s{batch.QueryTokens} h{batch.Heads}: {score}");
            Assert.True(submission.Phases is { KernelMicroseconds: > 0 }, "each submission carries its own device phases");
        }
    }

    [Fact]
    public void A_block_id_outside_the_pool_is_refused_before_the_device_and_the_next_decode_works()
    {
        GpuDevice.Require();
        var backend = device.Backend;
        var steps = device.Steps("refusal");
        int[] slots = Enumerable.Range(0, 10).ToArray();
        ushort[] rows = steps.RandomRows(slots.Length);
        device.Write(0, slots, rows);

        var bad = steps.NewBatch(0, 1, 16, [10], stride: 1, blockTable: [backend.Geometry.NumBlocks]);
        var error = Assert.Throws<ArgumentException>(() => backend.Decode(bad));
        Assert.Contains("outside the pool", error.Message);

        var good = steps.NewBatch(0, 1, 16, [10], stride: 1, blockTable: [0]);
        backend.Decode(good);
        var score = ReferenceScore.Of(device.Mirror, good);
        Assert.True(score.Passes, score.ToString());
    }

    private static int Differences(ReadOnlySpan<ushort> a, ReadOnlySpan<ushort> b)
    {
        int n = 0;
        for (int i = 0; i < a.Length; i++) if (a[i] != b[i]) n++;
        return n;
    }
}

[Collection(GpuCollection.Name), Trait("Category", GpuDevice.Category)]
public sealed class StagedDecodeTests(StagedBackend device, ITestOutputHelper output) : DecodeTests(device, output);

[Collection(GpuCollection.Name), Trait("Category", GpuDevice.Category)]
public sealed class PageLockedDecodeTests(PageLockedBackend device, ITestOutputHelper output) : DecodeTests(device, output)
{
    private protected override void AfterStep(long directStepsBefore, DecodeBatch batch)
    {
        Assert.Equal(0, device.Backend.RefusedHostRegistrations);
        // The pool page-locks only arrays of RegistrationMinBytes or more (smaller ones cost less to stage): a step
        // goes without staging exactly when every q segment and out lie in page-locked arrays.
        var pool = device.Pool!;
        bool pageLocked = pool.TryGetRegisteredAddress((ReadOnlyMemory<ushort>)batch.Out, out _);
        for (int i = 0; i < batch.Q.Count; i++) pageLocked &= pool.TryGetRegisteredAddress(batch.Q[i], out _);
        bool large = batch.Out.Length * sizeof(ushort) >= PinnedTensorPool.RegistrationMinBytes;
        for (int i = 0; i < batch.Q.Count; i++) large &= batch.Q[i].Length * sizeof(ushort) >= PinnedTensorPool.RegistrationMinBytes;
        if (large) Assert.True(pageLocked, "every array of this step is large enough to be page-locked");
        Assert.Equal(directStepsBefore + (pageLocked ? 1 : 0), device.Backend.DirectSteps);
    }
}
