using System.Runtime.InteropServices;
using FlashMla.Core.Backends;
using FlashMla.Core.Backends.Cpu;
using FlashMla.Core.Cache;
using FlashMla.Core.Memory;
using FlashMla.Core.Scheduling;
using FlashMla.Core.Telemetry;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Tests.Scheduling;

/// <summary>
/// A batch merged from several requests hands the backend each request's q where it lies (one segment per
/// request, <see cref="QuerySegments"/>), not a gathered copy: a device backend then uploads every segment in place. Measured on the H200 (2026-12-01): the
/// gather, and the staging copy it forced, made merged calls of 700 sequences take 21-36 ms for 1.5 ms of kernels.
/// </summary>
public sealed class MergedBatchPartsTests
{
    /// <summary>Runs each batch on a CPU backend and keeps what it was given.</summary>
    private sealed class RecordingBackend : IAttentionBackend
    {
        private readonly CpuBackend _inner = new(new KvPoolGeometry(1, 64), maxThreads: 1);

        /// <summary>The q segments of each batch, copied out of the list the scheduler reuses.</summary>
        public List<ReadOnlyMemory<ushort>[]> Batches { get; } = [];
        public string Name => "recording";
        public string DeviceDescription => "test";
        public KvPoolGeometry Geometry => _inner.Geometry;
        public void WriteKv(int layer, ReadOnlySpan<int> slots, ReadOnlySpan<ushort> rows) => _inner.WriteKv(layer, slots, rows);
        public void ReadKv(int layer, ReadOnlySpan<int> slots, Span<ushort> rows) => _inner.ReadKv(layer, slots, rows);
        public void CopyBlocks(ReadOnlySpan<BlockCopy> copies) => _inner.CopyBlocks(copies);

        public void Decode(DecodeBatch batch)
        {
            var segments = new ReadOnlyMemory<ushort>[batch.Q.Count];
            for (int i = 0; i < segments.Length; i++) segments[i] = batch.Q[i];
            lock (Batches) Batches.Add(segments);
            _inner.Decode(batch);
        }

        public void Dispose() => _inner.Dispose();
    }

    [Fact]
    public async Task A_merged_batch_passes_each_requests_q_in_place_and_computes_what_each_alone_would()
    {
        using var backend = new RecordingBackend();
        await using var scheduler = new Scheduler(backend, new CacheLimits(4096, 64),
            new SchedulerOptions { BatchWindow = TimeSpan.FromMilliseconds(50), SequenceLease = TimeSpan.Zero }, new FlashMlaMetrics(),
            System.Buffers.ArrayPool<byte>.Shared);
        var rows = new ushort[40 * MlaDims.HeadDimK];
        for (int i = 0; i < rows.Length; i++) rows[i] = Bf16.FromFloat((float)Math.Sin(i * 0.37));
        var ids = await scheduler.RunAsync(cache =>
        {
            var created = new ulong[5];
            for (int i = 0; i < created.Length; i++)
            {
                created[i] = cache.Create();
                cache.Append(created[i], 0, rows.AsSpan(0, (10 + 7 * i) * MlaDims.HeadDimK));
            }
            return created;
        });
        byte[] qa = DecodeDataPlaneTests.Query(2, 4, 1), qb = DecodeDataPlaneTests.Query(3, 4, 2);
        Task<DecodeResult> Step(ulong[] which, byte[] q) =>
            scheduler.DecodeAsync(DecodeWork.Create(DecodeShape.Create(scheduler.Options, 0, which, 1, 4, 0), q, ReadOnlyMemory<byte>.Empty));

        var merged = await Task.WhenAll(Step(ids[..2], qa), Step(ids[2..], qb));
        Assert.All(merged, r => Assert.Equal(2, r.Timings.BatchRequests));
        var parts = backend.Batches[^1];
        Assert.Equal(2, parts.Length);
        Assert.True(MemoryCast.TryGetByteSegment(parts[0], out var first, out int firstOffset));
        Assert.True(MemoryCast.TryGetByteSegment(parts[1], out var second, out _));
        Assert.Equal(0, firstOffset);
        Assert.Contains(first, new[] { qa, qb });
        Assert.Contains(second, new[] { qa, qb });
        Assert.NotSame(first, second); // the requests' own arrays, not a copy

        var alone = new[] { await Step(ids[..2], qa), await Step(ids[2..], qb) };
        var lone = Assert.Single(backend.Batches[^1]); // a batch of one request: one segment, the request's own bytes
        Assert.True(MemoryCast.TryGetByteSegment(lone, out var loneArray, out _));
        Assert.Same(qb, loneArray);
        for (int k = 0; k < 2; k++)
        {
            Assert.Equal(alone[k].Out.ToArray(), merged[k].Out.ToArray());
            Assert.Equal(alone[k].Lse.ToArray(), merged[k].Lse.ToArray());
            alone[k].Release();
            merged[k].Release();
        }
    }
}
