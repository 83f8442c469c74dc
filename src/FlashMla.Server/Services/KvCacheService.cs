using System.Runtime.InteropServices;
using FlashMla.Contracts.V1;
using FlashMla.Core.Cache;
using FlashMla.Core.Scheduling;
using FlashMla.Core.Telemetry;
using FlashMla.Core.Tensors;
using FlashMla.Server.Hosting;
using Google.Protobuf;
using Grpc.Core;
using Microsoft.Extensions.Options;

namespace FlashMla.Server.Services;

/// <summary>
/// flashmla.v1.KvCache: validates, translates to scheduler commands, maps errors to status codes. Bound by
/// <see cref="KvCacheMethods"/> (the generated method definitions, request parsing guarded), not the generated base.
/// </summary>
public sealed class KvCacheService(Scheduler scheduler, IOptions<FlashMlaOptions> options, RequestFailures failures, FlashMlaMetrics metrics)
{
    private const int DefaultRowsPerChunk = 2048; // ~2.4 MB of bf16 rows (1.3 MB of fp8) per response message

    public Task<ServiceConfig> GetConfig(GetConfigRequest request, ServerCallContext context) =>
        Task.FromResult(new ServiceConfig
        {
            NumLayers = (uint)scheduler.Geometry.NumLayers,
            HeadDimK = MlaDims.HeadDimK,
            HeadDimV = MlaDims.HeadDimV,
            BlockSize = MlaDims.BlockSize,
            KvDtype = KvWire.DTypeOf(scheduler.Geometry.Dtype),
            KvBytesPerToken = (uint)scheduler.Geometry.BytesPerToken,
            TokenCapacity = (ulong)scheduler.Geometry.TotalSlots,
            TotalBlocks = (uint)scheduler.Geometry.NumBlocks,
            MaxSequenceLength = (uint)scheduler.Limits.MaxSequenceLength,
            MaxHeads = (uint)scheduler.Options.MaxHeads,
            MaxQueryTokens = (uint)scheduler.Options.MaxQueryTokens,
            MaxBatchSequences = (uint)scheduler.Options.MaxBatchSequences,
            MaxMessageBytes = (ulong)options.Value.MaxMessageBytes,
            Backend = scheduler.BackendName,
            Device = scheduler.DeviceDescription,
            SequenceLeaseSeconds = scheduler.Options.SequenceLease.TotalSeconds,
        });

    public Task<CreateSequenceResponse> CreateSequence(CreateSequenceRequest request, ServerCallContext context) =>
        Guard(context, async () => new CreateSequenceResponse
        {
            SequenceId = await scheduler.RunAsync(cache => cache.Create(), context.CancellationToken),
        });

    public Task<AppendKvResponse> AppendKv(IAsyncStreamReader<AppendKvChunk> requestStream, ServerCallContext context) =>
        Guard(context, async () =>
        {
            ulong chunks = 0, rows = 0;
            await foreach (var chunk in requestStream.ReadAllAsync(context.CancellationToken))
            {
                var (bytes, stored) = KvWire.ExpectAppendRows(chunk.Kv, scheduler.Geometry.Dtype);
                ulong id = chunk.SequenceId;
                if (chunk.Layer > int.MaxValue) throw CacheException.Invalid($"layer {chunk.Layer} is out of range");
                int layer = (int)chunk.Layer;
                await scheduler.RunAsync(cache =>
                {
                    if (stored) cache.AppendStored(id, layer, bytes.Span);
                    else cache.Append(id, layer, MemoryMarshal.Cast<byte, ushort>(bytes.Span));
                    return true;
                }, context.CancellationToken);
                long appended = chunk.Kv.Shape[0];
                metrics.AppendedRows.Add(appended); // each chunk is appended on its own: counted once it is in
                chunks++;
                rows += (ulong)appended;
            }
            if (chunks == 0) throw CacheException.Invalid("the upload held no chunks");
            return new AppendKvResponse { Chunks = chunks, Rows = rows };
        });

    public Task<ForkSequenceResponse> ForkSequence(ForkSequenceRequest request, ServerCallContext context) =>
        Guard(context, async () =>
        {
            var (id, shared, copied) = await scheduler.RunAsync(cache => cache.Fork(request.SequenceId), context.CancellationToken);
            return new ForkSequenceResponse { SequenceId = id, SharedBlocks = (uint)shared, CopiedBlocks = (uint)copied };
        });

    public Task<TruncateSequenceResponse> TruncateSequence(TruncateSequenceRequest request, ServerCallContext context) =>
        Guard(context, async () =>
        {
            if (request.Length > int.MaxValue) throw CacheException.Invalid($"length {request.Length} is out of range");
            int released = await scheduler.RunAsync(cache => cache.Truncate(request.SequenceId, (int)request.Length), context.CancellationToken);
            return new TruncateSequenceResponse { ReleasedBlocks = (uint)released };
        });

    public Task<FreeSequenceResponse> FreeSequence(FreeSequenceRequest request, ServerCallContext context) =>
        Guard(context, async () => new FreeSequenceResponse
        {
            ReleasedBlocks = (uint)await scheduler.RunAsync(cache => cache.Free(request.SequenceId), context.CancellationToken),
        });

    public Task<SequenceInfo> GetSequence(GetSequenceRequest request, ServerCallContext context) =>
        Guard(context, () => scheduler.RunAsync(cache =>
        {
            var sequence = cache.Get(request.SequenceId);
            var info = new SequenceInfo { SequenceId = sequence.Id, Blocks = (uint)sequence.BlockIds.Count };
            foreach (int length in sequence.Lengths) info.LayerLengths.Add((uint)length);
            return info;
        }, context.CancellationToken));

    public Task ReadKv(ReadKvRequest request, IServerStreamWriter<KvChunk> responseStream, ServerCallContext context) =>
        Guard(context, async () =>
        {
            if (request.Layer > int.MaxValue || request.Start > int.MaxValue || request.Count > int.MaxValue)
                throw CacheException.Invalid("layer, start or count is out of range");
            int layer = (int)request.Layer, start = (int)request.Start;
            int length = await scheduler.RunAsync(cache =>
            {
                cache.CheckLayer(layer);
                return cache.Get(request.SequenceId).Lengths[layer];
            }, context.CancellationToken);
            int count = request.Count == 0 ? length - start : (int)request.Count;
            if (start > length || count < 0 || (long)start + count > length)
                throw CacheException.Invalid($"rows {start}..{(long)start + count - 1} are outside layer {layer} of sequence {request.SequenceId}, which holds {length}");
            int perChunk = request.RowsPerChunk == 0 ? DefaultRowsPerChunk : (int)Math.Min(request.RowsPerChunk, 65_536u);
            for (int offset = 0; offset < count; offset += perChunk)
            {
                int n = Math.Min(perChunk, count - offset), at = start + offset;
                var geometry = scheduler.Geometry;
                var rows = new byte[n * (long)geometry.BytesPerToken];
                await scheduler.RunAsync(cache =>
                {
                    cache.ReadStored(request.SequenceId, layer, at, n, rows);
                    return true;
                }, context.CancellationToken);
                var tensor = new Tensor { Dtype = KvWire.DTypeOf(geometry.Dtype), Data = UnsafeByteOperations.UnsafeWrap(rows) };
                tensor.Shape.Add(n);
                tensor.Shape.Add(KvWire.RowExtent(geometry.Dtype));
                await responseStream.WriteAsync(new KvChunk { SequenceId = request.SequenceId, Layer = request.Layer, Start = (uint)at, Kv = tensor });
            }
            return true;
        });

    public Task<CacheStats> GetStats(GetStatsRequest request, ServerCallContext context) =>
        Guard(context, async () =>
        {
            var stats = await scheduler.GetStatsAsync(context.CancellationToken);
            return new CacheStats
            {
                TotalBlocks = (uint)stats.TotalBlocks,
                FreeBlocks = (uint)stats.FreeBlocks,
                UsedBlocks = (uint)stats.UsedBlocks,
                Sequences = (uint)stats.Sequences,
                ReclaimedSequences = (ulong)stats.ReclaimedSequences,
                DecodeRequests = (ulong)stats.DecodeRequests,
                DecodeBatches = (ulong)stats.DecodeBatches,
                RejectedNoSpace = (ulong)stats.RejectedNoSpace,
            };
        });

    private async Task<T> Guard<T>(ServerCallContext context, Func<Task<T>> handler)
    {
        try
        {
            return await handler();
        }
        catch (Exception ex)
        {
            throw failures.Record(context.Method, ex);
        }
    }
}
