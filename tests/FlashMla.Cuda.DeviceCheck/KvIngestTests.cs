using FlashMla.Core.Backends;
using FlashMla.Core.Tensors;

namespace FlashMla.Cuda.DeviceCheck;

/// <summary>
/// KV ingest on its own stream (<see cref="FlashMla.Core.Backends.IAttentionBackend.SubmitWriteKv"/>): writes land
/// where they should, several in flight at once, straight from page-locked arrays when the rows lie in one, and beside
/// a decode step without either disturbing the other.
/// </summary>
[Collection(GpuCollection.Name), Trait("Category", GpuDevice.Category)]
public sealed class KvIngestTests(StagedBackend staged, PageLockedBackend pageLocked, ITestOutputHelper output)
{
    [Fact]
    public void Ingest_writes_in_flight_together_land_in_their_slots_staged() => WritesLand(staged, "ingest-staged", expectDirect: false);

    [Fact]
    public void Ingest_writes_from_page_locked_rows_go_up_without_staging() => WritesLand(pageLocked, "ingest-page-locked", expectDirect: true);

    private void WritesLand(DeviceBackend device, string name, bool expectDirect)
    {
        GpuDevice.Require();
        var backend = device.Backend;
        var steps = device.Steps(name);
        int total = backend.Geometry.NumBlocks * MlaDims.BlockSize;
        int[] shuffled = steps.Shuffled(total);
        long directBefore = backend.DirectIngestWrites;
        var writes = new List<(int Layer, int[] Slots, Memory<ushort> Rows, DecodeSubmission Submission)>();
        // Four chunks of different sizes, all submitted before any is waited for (each holds a slot of its own).
        int at = 0;
        foreach (int n in new[] { 2048, 1, 700, 4096 })
        {
            int layer = writes.Count % 2;
            int[] slots = shuffled[at..(at + n)];
            at += n;
            var rows = steps.Tensor<ushort>(n * MlaDims.HeadDimK);
            steps.RandomRows(n).CopyTo(rows.Span);
            writes.Add((layer, slots, rows, backend.SubmitWriteKv(layer, slots, rows)));
        }
        foreach (var write in writes)
        {
            write.Submission.Wait();
            device.Mirror.Write(write.Layer, write.Slots, write.Rows.ToArray());
        }
        foreach (var write in writes)
        {
            var back = new ushort[write.Rows.Length];
            backend.ReadKv(write.Layer, write.Slots, back);
            Assert.Equal(write.Rows.ToArray(), back);
        }
        long direct = backend.DirectIngestWrites - directBefore;
        output.WriteLine($"{writes.Count} writes, {direct} straight from page-locked rows");
        Assert.Equal(expectDirect ? writes.Count : 0, direct);
    }

    [Fact]
    public void An_ingest_write_beside_a_decode_step_leaves_the_step_correct_and_lands_itself()
    {
        GpuDevice.Require();
        var backend = pageLocked.Backend;
        var mirror = pageLocked.Mirror;
        var steps = pageLocked.Steps("ingest-beside-decode");
        int[] blocks = steps.Shuffled(backend.Geometry.NumBlocks);
        // The step: 8 sequences of 1000 tokens in layer 0, on the first 128 blocks of the shuffle.
        const int b = 8, len = 1000, stride = 16;
        int[] table = blocks[..(b * stride)];
        int[] cachedSlots = new int[b * len];
        for (int s = 0; s < b; s++)
            for (int t = 0; t < len; t++) cachedSlots[s * len + t] = table[s * stride + t / MlaDims.BlockSize] * MlaDims.BlockSize + t % MlaDims.BlockSize;
        pageLocked.Write(0, cachedSlots, steps.RandomRows(cachedSlots.Length));
        var batch = steps.NewBatch(0, 1, 16, Enumerable.Repeat(len, b).ToArray(), stride, table);

        // The ingest: 8192 rows into other blocks of the same layer, submitted while the step is in flight.
        int[] ingestSlots = blocks[(b * stride)..(b * stride + 128)].SelectMany(k => Enumerable.Range(k * MlaDims.BlockSize, MlaDims.BlockSize)).ToArray();
        var ingestRows = steps.Tensor<ushort>(ingestSlots.Length * MlaDims.HeadDimK);
        steps.RandomRows(ingestSlots.Length).CopyTo(ingestRows.Span);
        var step = backend.Submit(batch);
        var write = backend.SubmitWriteKv(0, ingestSlots, ingestRows);
        write.Wait();
        step.Wait();
        mirror.Write(0, ingestSlots, ingestRows.ToArray());

        var score = ReferenceScore.Of(mirror, batch);
        output.WriteLine($"decode beside ingest: {score}");
        Assert.True(score.Passes, score.ToString());
        var back = new ushort[ingestRows.Length];
        backend.ReadKv(0, ingestSlots, back);
        Assert.Equal(ingestRows.ToArray(), back);
    }
}
