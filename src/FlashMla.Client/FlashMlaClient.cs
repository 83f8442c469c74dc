using FlashMla.Contracts.V1;
using Grpc.Core;
using Grpc.Net.Client;

namespace FlashMla.Client;

/// <summary>
/// Typed client of one FlashMLA server: sequences, prefill uploads, reads, stats and decode. Failures are
/// <see cref="RpcException"/> with the server's status code. Thread-safe; share one per server.
/// </summary>
public sealed class FlashMlaClient : IDisposable
{
    /// <summary>Rows per AppendKv chunk when the caller does not say: about 2.4 MB per message.</summary>
    public const int DefaultRowsPerChunk = 2048;

    private readonly GrpcChannel? _ownedChannel;

    public FlashMlaClient(string address, FlashMlaClientOptions? options = null)
        : this(CreateChannel(address, options ?? new FlashMlaClientOptions()))
    {
        _ownedChannel = (GrpcChannel)Channel;
    }

    public FlashMlaClient(ChannelBase channel)
    {
        Channel = channel;
        Cache = new KvCache.KvCacheClient(channel);
        Decoder = new Decoder.DecoderClient(channel);
    }

    public ChannelBase Channel { get; }

    /// <summary>The generated stubs, for calls this wrapper does not cover.</summary>
    public KvCache.KvCacheClient Cache { get; }
    public Decoder.DecoderClient Decoder { get; }

    /// <summary>A channel tuned for large tensors: big HTTP/2 windows, no message limit, several connections when streams pile up.</summary>
    public static GrpcChannel CreateChannel(string address, FlashMlaClientOptions options) =>
        GrpcChannel.ForAddress(address, new GrpcChannelOptions
        {
            MaxReceiveMessageSize = options.MaxMessageBytes,
            MaxSendMessageSize = options.MaxMessageBytes,
            HttpHandler = new SocketsHttpHandler
            {
                EnableMultipleHttp2Connections = true,
                InitialHttp2StreamWindowSize = 16 * 1024 * 1024,
                PooledConnectionIdleTimeout = Timeout.InfiniteTimeSpan,
                KeepAlivePingDelay = TimeSpan.FromSeconds(30),
                KeepAlivePingTimeout = TimeSpan.FromSeconds(10),
            },
        });

    public async Task<ServiceConfig> GetConfigAsync(CancellationToken cancellationToken = default) =>
        await Cache.GetConfigAsync(new GetConfigRequest(), cancellationToken: cancellationToken);

    public async Task<ulong> CreateSequenceAsync(CancellationToken cancellationToken = default) =>
        (await Cache.CreateSequenceAsync(new CreateSequenceRequest(), cancellationToken: cancellationToken)).SequenceId;

    /// <summary>Appends rows (bf16, <c>[n, 576]</c>) to one layer of one sequence, in chunks on one client stream.</summary>
    public Task<AppendKvResponse> AppendKvAsync(ulong sequenceId, int layer, ReadOnlyMemory<ushort> rows,
        int rowsPerChunk = DefaultRowsPerChunk, CancellationToken cancellationToken = default) =>
        AppendKvAsync([new KvUpload(sequenceId, layer, rows)], rowsPerChunk, cancellationToken);

    /// <summary>Uploads several (sequence, layer, rows) parts on one client stream.</summary>
    public async Task<AppendKvResponse> AppendKvAsync(IEnumerable<KvUpload> uploads, int rowsPerChunk = DefaultRowsPerChunk,
        CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rowsPerChunk, 1);
        using var call = Cache.AppendKv(cancellationToken: cancellationToken);
        foreach (var upload in uploads)
        {
            if (upload.Rows.Length % 576 != 0) throw new ArgumentException("rows must be a whole number of 576-wide rows", nameof(uploads));
            int total = upload.Rows.Length / 576;
            for (int start = 0; start < total; start += rowsPerChunk)
            {
                int n = Math.Min(rowsPerChunk, total - start);
                await call.RequestStream.WriteAsync(new AppendKvChunk
                {
                    SequenceId = upload.SequenceId,
                    Layer = (uint)upload.Layer,
                    Kv = TensorBytes.Bf16(upload.Rows.Span.Slice(start * 576, n * 576), n, 576),
                }, cancellationToken);
            }
        }
        await call.RequestStream.CompleteAsync();
        return await call;
    }

    public async Task<ForkSequenceResponse> ForkAsync(ulong sequenceId, CancellationToken cancellationToken = default) =>
        await Cache.ForkSequenceAsync(new ForkSequenceRequest { SequenceId = sequenceId }, cancellationToken: cancellationToken);

    public async Task<uint> TruncateAsync(ulong sequenceId, int length, CancellationToken cancellationToken = default) =>
        (await Cache.TruncateSequenceAsync(new TruncateSequenceRequest { SequenceId = sequenceId, Length = (uint)length },
            cancellationToken: cancellationToken)).ReleasedBlocks;

    public async Task<uint> FreeAsync(ulong sequenceId, CancellationToken cancellationToken = default) =>
        (await Cache.FreeSequenceAsync(new FreeSequenceRequest { SequenceId = sequenceId }, cancellationToken: cancellationToken)).ReleasedBlocks;

    public async Task<SequenceInfo> GetSequenceAsync(ulong sequenceId, CancellationToken cancellationToken = default) =>
        await Cache.GetSequenceAsync(new GetSequenceRequest { SequenceId = sequenceId }, cancellationToken: cancellationToken);

    /// <summary>Reads rows <c>start .. start+count-1</c> (count 0: to the end) of one layer as bf16 <c>[n, 576]</c>.</summary>
    public async Task<ushort[]> ReadKvAsync(ulong sequenceId, int layer, int start = 0, int count = 0,
        CancellationToken cancellationToken = default)
    {
        using var call = Cache.ReadKv(new ReadKvRequest { SequenceId = sequenceId, Layer = (uint)layer, Start = (uint)start, Count = (uint)count },
            cancellationToken: cancellationToken);
        var rows = new List<ushort>();
        await foreach (var chunk in call.ResponseStream.ReadAllAsync(cancellationToken))
            rows.AddRange(TensorBytes.AsBf16(chunk.Kv));
        return [.. rows];
    }

    public async Task<CacheStats> GetStatsAsync(CancellationToken cancellationToken = default) =>
        await Cache.GetStatsAsync(new GetStatsRequest(), cancellationToken: cancellationToken);

    /// <summary>One decode step as a unary call.</summary>
    public async Task<DecodeOutput> DecodeOnceAsync(DecodeInput input, CancellationToken cancellationToken = default) =>
        new(await Decoder.DecodeOnceAsync(input.ToRequest(1), cancellationToken: cancellationToken));

    /// <summary>A pipelined decode stream; dispose it to end the stream.</summary>
    public DecodeStream OpenDecodeStream(CancellationToken cancellationToken = default) =>
        new(Decoder.Decode(cancellationToken: cancellationToken));

    public void Dispose() => _ownedChannel?.Dispose();
}

/// <summary>Rows (bf16 <c>[n, 576]</c>) for one layer of one sequence.</summary>
public readonly record struct KvUpload(ulong SequenceId, int Layer, ReadOnlyMemory<ushort> Rows);

/// <summary>Channel settings of <see cref="FlashMlaClient"/>.</summary>
public sealed record FlashMlaClientOptions
{
    /// <summary>Largest message either way; keep it at or under the server's MaxMessageBytes.</summary>
    public int MaxMessageBytes { get; init; } = 256 * 1024 * 1024;
}
