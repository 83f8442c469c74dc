using FlashMla.Core.Backends;
using FlashMla.Core.Cache;
using FlashMla.Core.Scheduling;
using FlashMla.Core.Telemetry;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Tests.Scheduling;

/// <summary>
/// KV ingest (AppendKv chunks) on the scheduler: ordered only against work on its own sequence. Writes and decodes of
/// other sequences pass each other; a decode of the sequence waits for the write in flight, and a write that fails in
/// flight is rolled back exactly.
/// </summary>
public sealed class KvIngestSchedulingTests
{
    private const int Heads = 4, Rows = 8;
    private static readonly TimeSpan Patience = GatedBackend.Patience;

    private static Task<(Scheduler Scheduler, ulong[] Ids)> StartAsync(GatedBackend backend, int sequences) =>
        GatedBackend.StartSchedulerAsync(backend, new SchedulerOptions(), sequences);

    private static Task<DecodeResult> Decode(Scheduler scheduler, ulong id) =>
        scheduler.DecodeAsync(DecodeWork.Create(DecodeShape.Create(scheduler.Options, 0, [id], 1, Heads, 0),
            DecodeDataPlaneTests.Query(1, Heads, (int)id), ReadOnlyMemory<byte>.Empty));

    private static Task<int> Append(Scheduler scheduler, ulong id, int rows, int seed = 1) =>
        scheduler.AppendAsync(KvAppendWork.Create(id, 0, RowsOf(rows, seed)));

    private static byte[] RowsOf(int rows, int seed)
    {
        var bytes = new byte[rows * MlaDims.KvRowBytes];
        new Random(seed).NextBytes(bytes);
        for (int i = 1; i < bytes.Length; i += 2) bytes[i] &= 0x3F; // finite bf16
        return bytes;
    }

    private static Task<int> LengthOf(Scheduler scheduler, ulong id) => scheduler.RunAsync(CacheAccess.Metadata, cache => cache.Get(id).Lengths[0]);

    [Fact]
    public async Task A_chunk_for_one_sequence_lands_while_a_decode_of_another_is_in_flight()
    {
        using var backend = new GatedBackend();
        var (scheduler, ids) = await StartAsync(backend, 2);
        await using var _ = new Teardown(scheduler, backend);

        var decode = Decode(scheduler, ids[0]);
        await backend.WaitForSubmittedAsync(1);
        Assert.Equal(100, await Append(scheduler, ids[1], 100).WaitAsync(Patience));
        Assert.Equal(Rows + 100, await LengthOf(scheduler, ids[1]));
        var back = await scheduler.RunAsync(CacheAccess.Sequence(ids[1]), cache =>
        {
            var rows = new ushort[100 * MlaDims.HeadDimK];
            cache.Read(ids[1], 0, Rows, 100, rows);
            return rows;
        });
        Assert.Equal(RowsOf(100, 1), System.Runtime.InteropServices.MemoryMarshal.AsBytes(back.AsSpan()).ToArray());
        Assert.False(decode.IsCompleted);
        backend.Complete(0);
        await decode.WaitAsync(Patience);
    }

    [Fact]
    public async Task A_decode_of_a_sequence_waits_for_its_write_in_flight_and_sees_its_rows()
    {
        using var backend = new GatedBackend { HoldWrites = true };
        var (scheduler, ids) = await StartAsync(backend, 2);
        await using var _ = new Teardown(scheduler, backend);

        var append = Append(scheduler, ids[0], 5);
        while (backend.WritesSubmitted < 1) await Task.Delay(2);
        var behind = Decode(scheduler, ids[0]);
        var other = Decode(scheduler, ids[1]); // another sequence does not wait
        await backend.WaitForSubmittedAsync(1);
        await Task.Delay(100);
        Assert.Equal(1, backend.Submitted);
        Assert.Equal(1, backend.BatchSizeOf(0));

        backend.CompleteWrite(0);
        Assert.Equal(5, await append.WaitAsync(Patience));
        await backend.WaitForSubmittedAsync(2);
        backend.CompleteAllPending();
        await Task.WhenAll(behind, other).WaitAsync(Patience);
        Assert.Equal(Rows + 5, await LengthOf(scheduler, ids[0]));
    }

    [Fact]
    public async Task A_write_that_fails_in_flight_is_rolled_back_and_its_caller_told()
    {
        using var backend = new GatedBackend { HoldWrites = true };
        var (scheduler, ids) = await StartAsync(backend, 1);
        await using var _ = new Teardown(scheduler, backend);
        int freeBefore = (await scheduler.GetStatsAsync()).FreeBlocks;

        var append = Append(scheduler, ids[0], 200); // 8 + 200 rows: three more blocks
        while (backend.WritesSubmitted < 1) await Task.Delay(2);
        Assert.Equal(freeBefore - 3, (await scheduler.GetStatsAsync()).FreeBlocks);
        backend.CompleteWrite(0, new BackendFaultException("copy engine said no", isSticky: false));

        var error = await Assert.ThrowsAsync<CacheException>(() => append.WaitAsync(Patience));
        Assert.Equal(CacheError.Internal, error.Error);
        Assert.Contains("copy engine said no", error.Message);
        Assert.Equal(Rows, await LengthOf(scheduler, ids[0]));
        Assert.Equal(freeBefore, (await scheduler.GetStatsAsync()).FreeBlocks);
    }

    [Fact]
    public async Task Chunks_of_one_sequence_land_in_order_one_at_a_time()
    {
        using var backend = new GatedBackend { HoldWrites = true };
        var (scheduler, ids) = await StartAsync(backend, 1);
        await using var _ = new Teardown(scheduler, backend);

        var first = Append(scheduler, ids[0], 3, seed: 1);
        var second = Append(scheduler, ids[0], 4, seed: 2);
        while (backend.WritesSubmitted < 1) await Task.Delay(2);
        await Task.Delay(100);
        Assert.Equal(1, backend.WritesSubmitted); // the second waits for the first
        backend.CompleteWrite(0);
        await first.WaitAsync(Patience);
        while (backend.WritesSubmitted < 2) await Task.Delay(2);
        backend.CompleteWrite(1);
        await second.WaitAsync(Patience);
        var tail = await scheduler.RunAsync(CacheAccess.Sequence(ids[0]), cache =>
        {
            var rows = new ushort[7 * MlaDims.HeadDimK];
            cache.Read(ids[0], 0, Rows, 7, rows);
            return System.Runtime.InteropServices.MemoryMarshal.AsBytes(rows.AsSpan()).ToArray();
        });
        Assert.Equal(RowsOf(3, 1).Concat(RowsOf(4, 2)).ToArray(), tail);
    }
}
