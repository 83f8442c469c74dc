using FlashMla.Client.Direct;
using FlashMla.Http2;
using System.Buffers;
using FlashMla.Client.Transport;
using FlashMla.Contracts.V1;
using FlashMla.Contracts.Wire;
using Grpc.Core;
using Grpc.Net.Client;

namespace FlashMla.Client;

/// <summary>
/// Typed client of one FlashMLA server: sequences, prefill uploads, reads, stats and decode. Failures are
/// <see cref="RpcException"/> with the server's status code. Thread-safe; share one per server.
/// With <see cref="FlashMlaClientOptions.Connections"/> above 1 it holds that many channels (one TCP
/// connection each) and spreads decode streams and unary decodes over them round-robin: one HTTP/2
/// connection is served by one socket and one connection loop on each side, which caps its throughput
/// well below the machine's (docs/architecture.md, "Why the data plane is a hot path"). With
/// <see cref="FlashMlaClientOptions.DecodeAddress"/> set, the decode channels go to that address (the server's
/// data-plane port) and cache calls to the first.
/// </summary>
public sealed class FlashMlaClient : IDisposable
{
    /// <summary>Rows per AppendKv chunk when the caller does not say: about 2.4 MB per message.</summary>
    public const int DefaultRowsPerChunk = 2048;

    /// <summary>Pool of the client's decode responses when the options name none.</summary>
    public static ArrayPool<byte> DefaultBufferPool { get; } = ArrayPool<byte>.Create(1 << 30, 256);

    private readonly IDisposable[] _owned;
    private readonly CallInvoker[] _decodeInvokers;
    private readonly KvCache.KvCacheClient _ingest;
    private readonly DecodeMarshallers _decodeMethods;
    private int _nextDecodeChannel = -1;

    public FlashMlaClient(string address, FlashMlaClientOptions? options = null)
        : this(CreateOwned(address, options ?? new FlashMlaClientOptions()), options ?? new FlashMlaClientOptions())
    {
    }

    public FlashMlaClient(ChannelBase channel) : this((channel, [channel.CreateCallInvoker()], null, []), new FlashMlaClientOptions())
    {
    }

    private FlashMlaClient((ChannelBase Cache, CallInvoker[] Decode, ChannelBase? Ingest, IDisposable[] Owned) parts, FlashMlaClientOptions options)
    {
        _owned = parts.Owned;
        Channel = parts.Cache;
        Cache = new KvCache.KvCacheClient(Channel);
        _ingest = parts.Ingest is null ? Cache : new KvCache.KvCacheClient(parts.Ingest);
        Decoder = new Decoder.DecoderClient(Channel);
        _decodeInvokers = parts.Decode;
        _decodeMethods = new DecodeMarshallers(options.BufferPool ?? DefaultBufferPool);
    }

    /// <summary>The channel cache calls (and the generated stubs) use: the first decode channel unless decode has an address of its own.</summary>
    public ChannelBase Channel { get; }

    /// <summary>Channels (TCP connections) decode calls are spread over.</summary>
    public int Connections => _decodeInvokers.Length;

    /// <summary>The generated stubs, for calls this wrapper does not cover.</summary>
    public KvCache.KvCacheClient Cache { get; }
    public Decoder.DecoderClient Decoder { get; }

    /// <summary>
    /// The cache channel, one decode invoker per connection, and, when decode has an address of its own (the data-plane
    /// port), a channel over the first decode connection for KV ingest (AppendKv: rows received there straight into
    /// page-locked memory). Decode calls go straight over the library's HTTP/2 handler (<see cref="DirectDecodeInvoker"/>),
    /// one handler, hence one connection, each, over cleartext or TLS; over Grpc.Net.Client channels when a benchmark asks
    /// (<see cref="FlashMlaClientOptions.DirectDecode"/>, <see cref="FlashMlaClientOptions.Transport"/>).
    /// </summary>
    private static (ChannelBase Cache, CallInvoker[] Decode, ChannelBase? Ingest, IDisposable[] Owned) CreateOwned(string address, FlashMlaClientOptions options)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(options.Connections, 1);
        if (options.DecodeAddress is { } given && !Uri.TryCreate(given, UriKind.Absolute, out _))
            throw new ArgumentException($"DecodeAddress '{given}' is not an absolute URI", nameof(options));
        string decodeAddress = options.DecodeAddress ?? address;
        var owned = new List<IDisposable>();
        var decode = new CallInvoker[options.Connections];
        GrpcChannel? cache = decodeAddress == address ? null : CreateChannel(address, options);
        bool direct = options.DirectDecode && options.Transport == ClientTransport.LargeFrames;
        GrpcChannel? ingest = null; // KV ingest rides the first decode connection when decode has an address of its own
        for (int i = 0; i < decode.Length; i++)
        {
            if (direct)
            {
                var handler = CreateHandler(decodeAddress, options);
                bool shared = cache is null; // without a decode address, cache calls share the first decode connection
                if (shared)
                {
                    cache = CreateChannel(address, options, handler); // shares the handler, disposed below
                    owned.Add(cache);
                }
                else if (i == 0)
                {
                    ingest = CreateChannel(decodeAddress, options, handler); // shares the handler, disposed below
                    owned.Add(ingest);
                    shared = true;
                }
                var invoker = new DirectDecodeInvoker(new HttpMessageInvoker(handler, disposeHandler: !shared), new Uri(decodeAddress),
                    options.BufferPool ?? DefaultBufferPool, options.MaxMessageBytes, options.RetryNotProcessed);
                owned.Add(invoker);
                // Disposing the channel did not close a shared handler's connection (ConnectionChurnTests): it is disposed here, after both users.
                if (shared) owned.Add(handler);
                decode[i] = invoker;
            }
            else
            {
                var channel = CreateChannel(decodeAddress, options);
                owned.Add(channel);
                decode[i] = channel.CreateCallInvoker();
                if (i == 0 && decodeAddress != address) ingest = channel;
                cache ??= channel; // without a decode address the first decode channel carries the cache calls too
            }
        }
        cache ??= CreateChannel(address, options);
        if (!owned.Contains(cache)) owned.Add(cache);
        return (cache, decode, ingest, [.. owned]);
    }

    /// <summary>
    /// A channel tuned for large tensors: big HTTP/2 windows and frames, on the library's <see cref="LargeFrameHttp2Handler"/>
    /// for http:// (h2c) and https:// (TLS, as <see cref="FlashMlaClientOptions.Tls"/> says) addresses alike. Disposing the
    /// channel closes its connections.
    /// </summary>
    public static GrpcChannel CreateChannel(string address, FlashMlaClientOptions options) =>
        CreateChannel(address, options, CreateHandler(address, options), ownsHandler: true);

    /// <param name="ownsHandler">
    /// Whether disposing the channel disposes <paramref name="handler"/>, hence closes its connections. Grpc.Net.Client
    /// leaves a given handler open by default; a handler only the channel holds then kept its socket (and the server's
    /// connection) open for as long as the process lived, one per client of a data-plane address that made a cache call
    /// (the soak's connect/call/close loops, issue 13). False where the handler is shared and disposed after both users.
    /// </param>
    private static GrpcChannel CreateChannel(string address, FlashMlaClientOptions options, HttpMessageHandler handler, bool ownsHandler = false) =>
        GrpcChannel.ForAddress(address, new GrpcChannelOptions
        {
            MaxReceiveMessageSize = options.MaxMessageBytes,
            MaxSendMessageSize = options.MaxMessageBytes,
            HttpHandler = handler,
            DisposeHttpClient = ownsHandler,
        });

    private static HttpMessageHandler CreateHandler(string address, FlashMlaClientOptions options)
    {
        var handler = CreateTransport(address, options);
        return options.BearerToken is { } token ? new BearerTokenHandler(token, handler) : handler;
    }

    private static HttpMessageHandler CreateTransport(string address, FlashMlaClientOptions options)
    {
        var tls = options.Tls ?? options.LargeFrames.Tls;
        if (options.Transport == ClientTransport.LargeFrames)
            return new LargeFrameHttp2Handler(options.LargeFrames with { Counters = options.LargeFrames.Counters ?? options.Counters, Tls = tls });
        var sockets = new SocketsHttpHandler
        {
            EnableMultipleHttp2Connections = true,
            InitialHttp2StreamWindowSize = 16 * 1024 * 1024,
            PooledConnectionIdleTimeout = Timeout.InfiniteTimeSpan,
            KeepAlivePingDelay = TimeSpan.FromSeconds(30),
            KeepAlivePingTimeout = TimeSpan.FromSeconds(10),
        };
        if (new Uri(address).Scheme == Uri.UriSchemeHttps && tls is not null) sockets.SslOptions = tls.Load().ForSocketsHttpHandler();
        return sockets;
    }

    public async Task<ServiceConfig> GetConfigAsync(CancellationToken cancellationToken = default) =>
        await Cache.GetConfigAsync(new GetConfigRequest(), cancellationToken: cancellationToken);

    public async Task<ulong> CreateSequenceAsync(CancellationToken cancellationToken = default) =>
        (await Cache.CreateSequenceAsync(new CreateSequenceRequest(), cancellationToken: cancellationToken)).SequenceId;

    /// <summary>Appends rows (bf16, <c>[n, 576]</c>) to one layer of one sequence, in chunks on one client stream.</summary>
    public Task<AppendKvResponse> AppendKvAsync(ulong sequenceId, int layer, ReadOnlyMemory<ushort> rows,
        int rowsPerChunk = DefaultRowsPerChunk, CancellationToken cancellationToken = default) =>
        AppendKvAsync([new KvUpload(sequenceId, layer, rows)], rowsPerChunk, cancellationToken);

    /// <summary>
    /// Uploads several (sequence, layer, rows) parts on one client stream: to the data-plane port when the client has
    /// one (<see cref="FlashMlaClientOptions.DecodeAddress"/>), else to the main address. The rows are sent from where
    /// they lie (not copied): leave them unchanged until the call returns.
    /// </summary>
    public async Task<AppendKvResponse> AppendKvAsync(IEnumerable<KvUpload> uploads, int rowsPerChunk = DefaultRowsPerChunk,
        CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rowsPerChunk, 1);
        var parts = uploads.ToArray();
        foreach (var upload in parts)
            if (upload.Rows.Length % 576 != 0) throw new ArgumentException("rows must be a whole number of 576-wide rows", nameof(uploads));
        using var call = _ingest.AppendKv(cancellationToken: cancellationToken);
        return await UploadAsync(call, Bf16Chunks(parts, rowsPerChunk), cancellationToken);
    }

    private static IEnumerable<AppendKvChunk> Bf16Chunks(KvUpload[] uploads, int rowsPerChunk)
    {
        foreach (var upload in uploads)
        {
            int total = upload.Rows.Length / 576;
            for (int start = 0; start < total; start += rowsPerChunk)
            {
                int n = Math.Min(rowsPerChunk, total - start);
                yield return new AppendKvChunk
                {
                    SequenceId = upload.SequenceId,
                    Layer = (uint)upload.Layer,
                    Kv = TensorBytes.Bf16(WireBytes.Of(upload.Rows.Slice(start * 576, n * 576)), n, 576),
                };
            }
        }
    }

    /// <summary>How long a failed upload write waits for the call's answer before the write's own failure is reported.</summary>
    private static readonly TimeSpan AnswerGrace = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Writes the chunks, ends the request and returns the call's response. A server may answer before the request is
    /// all sent (a refusal from the headers, a quota reached mid-upload) and reset the rest with NO_ERROR (RFC 9113,
    /// section 8.1; grpc-go and grpcio servers do the same): the writes still to come then fail or race that answer,
    /// depending on which the transport sees first (SocketsHttpHandler cancels the body's write, and Grpc.Net.Client
    /// may report that as CANCELLED before it has read the trailers). The caller needs the answer, not the race: a
    /// failed write ends the sending, and the call's own status (or response) is what comes back. Only when no answer
    /// comes (the write failed on this side) is the write's failure thrown.
    /// </summary>
    private static async Task<AppendKvResponse> UploadAsync(AsyncClientStreamingCall<AppendKvChunk, AppendKvResponse> call, IEnumerable<AppendKvChunk> chunks,
        CancellationToken cancellationToken)
    {
        try
        {
            foreach (var chunk in chunks) await call.RequestStream.WriteAsync(chunk, cancellationToken);
            await call.RequestStream.CompleteAsync();
        }
        catch (Exception ex) when (ex is RpcException or IOException or OperationCanceledException && !cancellationToken.IsCancellationRequested)
        {
            try
            {
                await call.ResponseAsync.WaitAsync(AnswerGrace, cancellationToken);
            }
            catch (TimeoutException)
            {
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(ex);
            }
            catch (RpcException)
            {
                // The answer is a failure: thrown below, as the call's status.
            }
        }
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

    /// <summary>
    /// Reads rows <c>start .. start+count-1</c> (count 0: to the end) of one layer of a bf16 cache as bf16 <c>[n, 576]</c>.
    /// An fp8 cache's rows come back with <see cref="ReadStoredKvAsync"/>; here they fail with InvalidOperationException.
    /// </summary>
    public async Task<ushort[]> ReadKvAsync(ulong sequenceId, int layer, int start = 0, int count = 0,
        CancellationToken cancellationToken = default)
    {
        var (dtype, chunks, total) = await ReadChunksAsync(sequenceId, layer, start, count, cancellationToken);
        if (dtype is not (DType.Bf16 or DType.Unspecified)) // Unspecified: no rows came
            throw new InvalidOperationException($"the server's cache stores {dtype} rows, not bf16: read them with ReadStoredKvAsync");
        if (total % sizeof(ushort) != 0) throw new InvalidOperationException($"the server sent {total} bytes of bf16 rows, an odd count");
        var rows = new ushort[total / sizeof(ushort)];
        CopyChunks(chunks, System.Runtime.InteropServices.MemoryMarshal.AsBytes(rows.AsSpan()));
        return rows;
    }

    /// <summary>
    /// Reads rows <c>start .. start+count-1</c> (count 0: to the end) of one layer as the cache stores them: bf16
    /// <c>[n, 576]</c> or <see cref="DType.Fp8E4M3Scaled"/> <c>[n, 656]</c> bytes (the server's kv_dtype).
    /// </summary>
    public async Task<(DType Dtype, byte[] Rows)> ReadStoredKvAsync(ulong sequenceId, int layer, int start = 0, int count = 0,
        CancellationToken cancellationToken = default)
    {
        var (dtype, chunks, total) = await ReadChunksAsync(sequenceId, layer, start, count, cancellationToken);
        var rows = new byte[total];
        CopyChunks(chunks, rows);
        return (dtype, rows);
    }

    /// <summary>The chunks of a ReadKv call as the parser made them: the caller copies them once into an array of the whole size.</summary>
    private async Task<(DType Dtype, List<Google.Protobuf.ByteString> Chunks, long Total)> ReadChunksAsync(ulong sequenceId, int layer, int start, int count,
        CancellationToken cancellationToken)
    {
        using var call = Cache.ReadKv(new ReadKvRequest { SequenceId = sequenceId, Layer = (uint)layer, Start = (uint)start, Count = (uint)count },
            cancellationToken: cancellationToken);
        var chunks = new List<Google.Protobuf.ByteString>();
        DType dtype = DType.Unspecified;
        long total = 0;
        await foreach (var chunk in call.ResponseStream.ReadAllAsync(cancellationToken))
        {
            dtype = chunk.Kv.Dtype;
            chunks.Add(chunk.Kv.Data);
            total += chunk.Kv.Data.Length;
        }
        if (total > Array.MaxLength) throw new InvalidOperationException($"the rows read are {total} bytes, more than one array holds: read fewer (start, count)");
        return (dtype, chunks, total);
    }

    private static void CopyChunks(List<Google.Protobuf.ByteString> chunks, Span<byte> destination)
    {
        foreach (var chunk in chunks)
        {
            chunk.Span.CopyTo(destination);
            destination = destination[chunk.Length..];
        }
    }

    /// <summary>
    /// Appends rows already in FlashMLA's FP8-with-scale format (<c>[n, 656]</c> bytes, e.g. from a prefill node that
    /// wrote its KV in fp8) to one layer of an fp8 cache, stored as they are; a bf16 cache refuses them (INVALID_ARGUMENT).
    /// Sent as <see cref="AppendKvAsync(IEnumerable{KvUpload}, int, CancellationToken)"/> sends bf16 rows: to the data-plane
    /// port when the client has one, from where they lie (leave them unchanged until the call returns).
    /// </summary>
    public async Task<AppendKvResponse> AppendFp8KvAsync(ulong sequenceId, int layer, ReadOnlyMemory<byte> rows, int rowsPerChunk = DefaultRowsPerChunk,
        CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(rowsPerChunk, 1);
        if (rows.Length == 0 || rows.Length % TensorBytes.Fp8RowBytes != 0)
            throw new ArgumentException($"rows must be a whole number of {TensorBytes.Fp8RowBytes}-byte rows", nameof(rows));
        using var call = _ingest.AppendKv(cancellationToken: cancellationToken);
        return await UploadAsync(call, Fp8Chunks(sequenceId, layer, rows, rowsPerChunk), cancellationToken);
    }

    private static IEnumerable<AppendKvChunk> Fp8Chunks(ulong sequenceId, int layer, ReadOnlyMemory<byte> rows, int rowsPerChunk)
    {
        int total = rows.Length / TensorBytes.Fp8RowBytes;
        for (int start = 0; start < total; start += rowsPerChunk)
        {
            int n = Math.Min(rowsPerChunk, total - start);
            yield return new AppendKvChunk
            {
                SequenceId = sequenceId,
                Layer = (uint)layer,
                Kv = TensorBytes.Fp8Rows(rows.Slice(start * TensorBytes.Fp8RowBytes, n * TensorBytes.Fp8RowBytes)),
            };
        }
    }

    public async Task<CacheStats> GetStatsAsync(CancellationToken cancellationToken = default) =>
        await Cache.GetStatsAsync(new GetStatsRequest(), cancellationToken: cancellationToken);

    /// <summary>
    /// One decode step as a unary call (on the next connection, round-robin). Past <paramref name="deadline"/> (UTC)
    /// it fails with DEADLINE_EXCEEDED; a server that cannot be reached or goes away fails it with UNAVAILABLE.
    /// </summary>
    public async Task<DecodeOutput> DecodeOnceAsync(DecodeInput input, CancellationToken cancellationToken = default, DateTime? deadline = null) =>
        new(await NextDecodeInvoker().AsyncUnaryCall(_decodeMethods.DecodeOnce, null, new CallOptions(deadline: deadline, cancellationToken: cancellationToken),
            new Leased<DecodeRequest>(input.ToRequest(1))));

    /// <summary>
    /// One decode step as a unary call, as <see cref="DecodeOnceAsync(DecodeInput, CancellationToken, DateTime?)"/>, its
    /// outputs written into the caller's memory: <c>out [b, s_q, h_q, 512]</c> bf16 into the start of
    /// <paramref name="output"/>, <c>lse [b, h_q, s_q]</c> fp32 into the start of <paramref name="lse"/> (memory too short
    /// for them: <see cref="ArgumentException"/>, nothing sent). The copy from the received message into this memory is the
    /// only one after the socket; the message's pooled buffer goes back before the task completes, so nothing of the
    /// response's size is allocated or held per call.
    /// <para>
    /// Ownership: the memory belongs to the call until the task completes; it is written only just before the task
    /// completes with its result (a failed, cancelled or timed-out call writes nothing, and a response whose tensors are
    /// not this step's sizes fails with INTERNAL and writes nothing), never after.
    /// </para>
    /// </summary>
    public async Task<DecodeResult> DecodeOnceAsync(DecodeInput input, Memory<ushort> output, Memory<float> lse,
        CancellationToken cancellationToken = default, DateTime? deadline = null)
    {
        var lengths = DecodeOutputLengths.For(input, output.Length, lse.Length);
        using var response = await DecodeOnceAsync(input, cancellationToken, deadline).ConfigureAwait(false);
        return response.CopyOut(lengths, output.Span, lse.Span);
    }

    /// <summary>
    /// A pipelined decode stream on the next connection (round-robin); dispose it to end the stream. Past
    /// <paramref name="deadline"/> (UTC) the whole stream ends: its pending requests fail with DEADLINE_EXCEEDED.
    /// </summary>
    public DecodeStream OpenDecodeStream(CancellationToken cancellationToken = default, DateTime? deadline = null) =>
        new(NextDecodeInvoker().AsyncDuplexStreamingCall(_decodeMethods.Decode, null, new CallOptions(deadline: deadline, cancellationToken: cancellationToken)));

    private CallInvoker NextDecodeInvoker() =>
        _decodeInvokers[(int)((uint)Interlocked.Increment(ref _nextDecodeChannel) % (uint)_decodeInvokers.Length)];

    public void Dispose()
    {
        foreach (var owned in _owned) owned.Dispose();
    }
}

/// <summary>Rows (bf16 <c>[n, 576]</c>) for one layer of one sequence.</summary>
public readonly record struct KvUpload(ulong SequenceId, int Layer, ReadOnlyMemory<ushort> Rows);

/// <summary>Channel settings of <see cref="FlashMlaClient"/>.</summary>
public sealed record FlashMlaClientOptions
{
    /// <summary>Largest message either way; keep it at or under the server's MaxMessageBytes.</summary>
    public int MaxMessageBytes { get; init; } = 256 * 1024 * 1024;

    /// <summary>Channels, hence TCP connections, that decode calls are spread over (at least 1).</summary>
    public int Connections { get; init; } = 1;

    /// <summary>
    /// Where decode calls go when not the client's address: the server's data-plane port (FlashMla:DataPlanePort,
    /// which serves flashmla.v1.Decoder only, with fewer copies per byte than the gRPC port), e.g.
    /// http://host:50052. Null: the client's address. (A <see cref="Routing.FlashMlaCluster"/> takes the port instead.)
    /// </summary>
    public string? DecodeAddress { get; init; }

    /// <summary>
    /// Where decode responses are received into, one array per response message (rented by the connection's reader loop
    /// when the message's prefix arrives, given back on <see cref="DecodeOutput.Dispose"/>, or before the task completes
    /// when decoding into the caller's memory); null for <see cref="FlashMlaClient.DefaultBufferPool"/>.
    /// </summary>
    public ArrayPool<byte>? BufferPool { get; init; }

    /// <summary>Frame size, windows, socket buffers and connect timeout of the library's HTTP/2 transport.</summary>
    public LargeFrameHttp2Options LargeFrames { get; init; } = new();

    /// <summary>
    /// TLS of https:// addresses (the cache address and <see cref="DecodeAddress"/> alike): the CAs to trust, the
    /// server name to expect, a client certificate for mTLS. Null: the system's trust store and no client certificate.
    /// </summary>
    public ClientTlsOptions? Tls { get; init; }

    /// <summary>
    /// Whether a unary decode the server refused before processing any of it (its stream above the last stream id of
    /// the server's GOAWAY, as a draining server sends, or reset with REFUSED_STREAM) goes again on a new connection,
    /// up to 3 times, as gRPC's transparent retry does; false fails it with UNAVAILABLE. Streams never go again:
    /// their earlier inputs may have been reused.
    /// </summary>
    public bool RetryNotProcessed { get; init; } = true;

    /// <summary>
    /// The bearer token sent with every call (metadata <c>authorization: Bearer &lt;token&gt;</c>) on every connection, the
    /// data-plane port's included, for a server with a token file; null sends none.
    /// </summary>
    public string? BearerToken { get; init; }

    /// <summary>Frame and byte counters that every connection of the library's transport adds to; null for none kept.</summary>
    public Http2TransportCounters? Counters { get; init; }

    // Measurement switches, not settings: the benchmarks' own flags set them (flashmla bench --transport,
    // bench-matrix --grpc-client), and the tests compare the paths.

    /// <summary>The HTTP/2 client under gRPC, for http:// and https:// addresses.</summary>
    internal ClientTransport Transport { get; init; } = ClientTransport.LargeFrames;

    /// <summary>
    /// Decode calls speak gRPC straight over the large-frame handler instead of through Grpc.Net.Client: requests
    /// leave from the caller's memory, each response is read once into a pooled array and parsed in place
    /// (Grpc.Net.Client copies a response twice and a request once). Only with <see cref="ClientTransport.LargeFrames"/>.
    /// </summary>
    internal bool DirectDecode { get; init; } = true;
}

/// <summary>Which HTTP/2 client carries the gRPC calls (a measurement switch).</summary>
internal enum ClientTransport
{
    /// <summary><see cref="LargeFrameHttp2Handler"/>: this library's HTTP/2 client (h2c or TLS) with megabyte DATA frames both ways.</summary>
    LargeFrames,

    /// <summary>.NET's SocketsHttpHandler: 16 KiB DATA frames both ways.</summary>
    SocketsHttpHandler,
}
