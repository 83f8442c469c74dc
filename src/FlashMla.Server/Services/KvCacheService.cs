using FlashMla.Contracts.V1;
using FlashMla.Contracts.Wire;
using FlashMla.Core.Memory;
using FlashMla.Core.Cache;
using FlashMla.Core.Scheduling;
using FlashMla.Core.Telemetry;
using FlashMla.Core.Tensors;
using FlashMla.Server.Hosting;
using FlashMla.Server.Security;
using Google.Protobuf;
using Grpc.Core;
using Microsoft.Extensions.Options;

namespace FlashMla.Server.Services;

/// <summary>
/// flashmla.v1.KvCache: validates, translates to scheduler commands, maps errors to status codes. Bound by
/// <see cref="KvCacheMethods"/> (the generated method definitions, request parsing guarded), not the generated base.
/// Every call runs as its caller's tenant (<see cref="Guard{T}"/>): it sees and changes that tenant's sequences only.
/// </summary>
public sealed class KvCacheService(Scheduler scheduler, IOptions<FlashMlaOptions> options, RequestFailures failures, FlashMlaMetrics metrics,
    PinnedTensorPool tensorBuffers)
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
        Guard(context, async tenant => new CreateSequenceResponse
        {
            SequenceId = await scheduler.RunAsync(CacheAccess.Metadata, cache => cache.Create(tenant), context.CancellationToken),
        });

    /// <summary>
    /// Appends each chunk as it comes, both ports alike (Kestrel's pooled marshaller, or the data plane's in-place parse):
    /// a chunk's rows stay in their pooled array until the backend has written them, then the array goes back. A chunk
    /// waits only for work on its own sequence (<see cref="Scheduler.AppendAsync"/>), never for unrelated decodes. On both
    /// ports a chunk runs as the call's tenant: it appends to that tenant's sequences only, within its quotas.
    /// </summary>
    public Task<AppendKvResponse> AppendKv(IAsyncStreamReader<Leased<AppendKvChunk>> requestStream, ServerCallContext context) =>
        Guard(context, async tenant =>
        {
            ulong chunks = 0, rows = 0;
            while (await requestStream.MoveNext(context.CancellationToken))
            {
                using var leased = requestStream.Current;
                var chunk = leased.Message;
                var (bytes, stored) = KvWire.ExpectAppendRows(chunk.Kv, scheduler.Geometry.Dtype);
                if (chunk.Layer > int.MaxValue) throw CacheException.Invalid($"layer {chunk.Layer} is out of range");
                int appended = await scheduler.AppendAsync(KvAppendWork.Create(chunk.SequenceId, (int)chunk.Layer, bytes, tenant, stored), context.CancellationToken);
                metrics.AppendedRows.Add(appended); // each chunk is appended on its own: counted once it is in
                chunks++;
                rows += (ulong)appended;
            }
            if (chunks == 0) throw CacheException.Invalid("the upload held no chunks");
            return new AppendKvResponse { Chunks = chunks, Rows = rows };
        });

    public Task<ForkSequenceResponse> ForkSequence(ForkSequenceRequest request, ServerCallContext context) =>
        Guard(context, async tenant =>
        {
            var (id, shared, copied) = await scheduler.RunAsync(CacheAccess.Sequence(request.SequenceId), cache => cache.Fork(request.SequenceId, tenant), context.CancellationToken);
            return new ForkSequenceResponse { SequenceId = id, SharedBlocks = (uint)shared, CopiedBlocks = (uint)copied };
        });

    public Task<TruncateSequenceResponse> TruncateSequence(TruncateSequenceRequest request, ServerCallContext context) =>
        Guard(context, async tenant =>
        {
            if (request.Length > int.MaxValue) throw CacheException.Invalid($"length {request.Length} is out of range");
            int released = await scheduler.RunAsync(CacheAccess.Sequence(request.SequenceId), cache => cache.Truncate(request.SequenceId, (int)request.Length, tenant), context.CancellationToken);
            return new TruncateSequenceResponse { ReleasedBlocks = (uint)released };
        });

    public Task<FreeSequenceResponse> FreeSequence(FreeSequenceRequest request, ServerCallContext context) =>
        Guard(context, async tenant => new FreeSequenceResponse
        {
            ReleasedBlocks = (uint)await scheduler.RunAsync(CacheAccess.Sequence(request.SequenceId), cache => cache.Free(request.SequenceId, tenant), context.CancellationToken),
        });

    public Task<SequenceInfo> GetSequence(GetSequenceRequest request, ServerCallContext context) =>
        Guard(context, tenant => scheduler.RunAsync(CacheAccess.Metadata, cache =>
        {
            var sequence = cache.Get(request.SequenceId, tenant);
            var info = new SequenceInfo { SequenceId = sequence.Id, Blocks = (uint)sequence.BlockIds.Count };
            foreach (int length in sequence.Lengths) info.LayerLengths.Add((uint)length);
            return info;
        }, context.CancellationToken));

    public Task ReadKv(ReadKvRequest request, IServerStreamWriter<KvChunk> responseStream, ServerCallContext context) =>
        Guard(context, async tenant =>
        {
            if (request.Layer > int.MaxValue || request.Start > int.MaxValue || request.Count > int.MaxValue)
                throw CacheException.Invalid("layer, start or count is out of range");
            int layer = (int)request.Layer, start = (int)request.Start;
            int length = await scheduler.RunAsync(CacheAccess.Metadata, cache =>
            {
                cache.CheckLayer(layer);
                return cache.Get(request.SequenceId, tenant).Lengths[layer];
            }, context.CancellationToken);
            int count = request.Count == 0 ? length - start : (int)request.Count;
            if (start > length || count < 0 || (long)start + count > length)
                throw CacheException.Invalid($"rows {start}..{(long)start + count - 1} are outside layer {layer} of sequence {request.SequenceId}, which holds {length}");
            int perChunk = request.RowsPerChunk == 0 ? DefaultRowsPerChunk : (int)Math.Min(request.RowsPerChunk, 65_536u);
            // One pooled array for the whole call: each chunk is serialized before WriteAsync returns, then the array is reused.
            var geometry = scheduler.Geometry;
            int rowBytes = geometry.BytesPerToken;
            int chunkBytes = Math.Min(perChunk, Math.Max(count, 1)) * rowBytes;
            var rows = tensorBuffers.Rent(chunkBytes);
            try
            {
                for (int offset = 0; offset < count; offset += perChunk)
                {
                    int n = Math.Min(perChunk, count - offset), at = start + offset;
                    var chunk = rows.AsMemory(0, n * rowBytes);
                    await scheduler.RunAsync(CacheAccess.Sequence(request.SequenceId), cache =>
                    {
                        cache.ReadStored(request.SequenceId, layer, at, n, chunk.Span, tenant);
                        return true;
                    }, context.CancellationToken);
                    var tensor = new Tensor { Dtype = KvWire.DTypeOf(geometry.Dtype), Data = UnsafeByteOperations.UnsafeWrap(chunk) };
                    tensor.Shape.Add(n);
                    tensor.Shape.Add(KvWire.RowExtent(geometry.Dtype));
                    await responseStream.WriteAsync(new KvChunk { SequenceId = request.SequenceId, Layer = request.Layer, Start = (uint)at, Kv = tensor });
                }
            }
            finally
            {
                tensorBuffers.Return(rows);
            }
            return true;
        });

    public Task<CacheStats> GetStats(GetStatsRequest request, ServerCallContext context) =>
        Guard(context, async tenant =>
        {
            var stats = await scheduler.GetStatsAsync(tenant, context.CancellationToken);
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

    /// <summary>
    /// Runs a call as its caller's tenant (refused UNAUTHENTICATED without one), counted against the tenant's
    /// requests-in-flight quota while it runs; any failure is recorded and becomes the call's status.
    /// </summary>
    private async Task<T> Guard<T>(ServerCallContext context, Func<Tenant, Task<T>> handler)
    {
        try
        {
            var tenant = Caller.Of(context).Tenant;
            tenant.EnterRequest();
            try
            {
                return await handler(tenant);
            }
            finally
            {
                tenant.ExitRequest();
            }
        }
        catch (Exception ex)
        {
            throw failures.Record(context.Method, ex);
        }
    }
}
