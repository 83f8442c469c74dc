using FlashMla.Core.Cache;
using FlashMla.Core.Memory;
using FlashMla.Core.Scheduling;
using FlashMla.Core.Tensors;
using FlashMla.Server.Security.Tls;

namespace FlashMla.Server.Hosting;

/// <summary>
/// Every option of the server, section "FlashMla" (appsettings.json, environment FlashMla__Name,
/// command line --FlashMla:Name=value). Validated at start-up; the README's table lists them.
/// </summary>
public sealed class FlashMlaOptions
{
    public const string Section = "FlashMla";

    /// <summary>gRPC port (HTTP/2: cleartext, or TLS when <see cref="Tls"/> has a certificate). 0 picks a free port (tests).</summary>
    public int GrpcPort { get; set; } = 50051;

    /// <summary>
    /// Data-plane port: flashmla.v1.Decoder only, over HTTP/2 (cleartext, or TLS as the gRPC port), served by the service's own listener
    /// with one copy per tensor byte each way (Kestrel's port: four). 0 picks a free port; -1 turns it off.
    /// </summary>
    public int DataPlanePort { get; set; } = 50052;

    /// <summary>Port of /metrics (Prometheus) and /healthz (HTTP/1.1). 0 picks a free port.</summary>
    public int MetricsPort { get; set; } = 9090;

    /// <summary>Address to listen on: "any" (all interfaces) or "loopback".</summary>
    public string ListenAddress { get; set; } = "any";

    /// <summary>auto (CUDA when a GPU and the fatbin are present, else CPU), cpu or cuda.</summary>
    public string Backend { get; set; } = "auto";

    /// <summary>The kernels for the CUDA backend; relative paths are taken from the executable's folder.</summary>
    public string FatbinPath { get; set; } = "flashmla.fatbin";

    /// <summary>Layers of the model (one KV pool each).</summary>
    public int Layers { get; set; } = 4;

    /// <summary>
    /// How the pools store KV rows: "bf16" (576 bf16, 1,152 bytes a token) or "fp8" (FlashMLA's FP8 with scale,
    /// 656 bytes a token: 1.756x the tokens in the same memory; bf16 writes are quantized by the server).
    /// </summary>
    public string KvDtype { get; set; } = "bf16";

    /// <summary><see cref="KvDtype"/> parsed (the options are validated first).</summary>
    public KvDtype ParsedKvDtype => KvDtypes.TryParse(KvDtype, out var dtype) ? dtype
        : throw new InvalidOperationException($"KvDtype must be bf16 or fp8, got '{KvDtype}'");

    /// <summary>KV blocks per layer; 0 sizes the cache from free memory and <see cref="MemoryFraction"/>.</summary>
    public int TotalBlocks { get; set; } = 0;

    /// <summary>Fraction of free device memory (CUDA) or of <see cref="CpuMemoryMiB"/> (CPU) given to the pools when TotalBlocks is 0.</summary>
    public double MemoryFraction { get; set; } = 0.9;

    /// <summary>Host memory budget of the CPU backend's pools in MiB when TotalBlocks is 0.</summary>
    public int CpuMemoryMiB { get; set; } = 1024;

    /// <summary>Threads of the CPU backend; 0 uses every core.</summary>
    public int CpuThreads { get; set; } = 0;

    /// <summary>
    /// 0 (default): continuous batching, a decode batch starts as soon as the backend has a free slot, and
    /// requests that arrive while every slot is busy merge into the next one. Above 0: a batch is held up to
    /// this many microseconds for company of its layer and shape even when a slot is free.
    /// </summary>
    public int BatchWindowMicroseconds { get; set; } = 0;

    /// <summary>Most sequences in one request and in one merged backend call.</summary>
    public int MaxBatchSequences { get; set; } = 512;

    /// <summary>Decode batches started on the backend and not yet finished, at most (1 runs them one at a time).</summary>
    public int DecodeBatchesInFlight { get; set; } = 2;

    /// <summary>
    /// Most KV positions one backend decode call attends over (summed over its sequences): bounds how long one call
    /// holds the backend. Batches close before they pass it; a single request past it is refused with
    /// RESOURCE_EXHAUSTED before it runs. At least MaxSequenceLength, so one sequence of any allowed length fits.
    /// </summary>
    public long MaxKvTokensPerCall { get; set; } = 16L << 20;


    /// <summary>Largest s_q accepted.</summary>
    public int MaxQueryTokens { get; set; } = 8;

    /// <summary>Largest h_q accepted (at most 128).</summary>
    public int MaxHeads { get; set; } = MlaDims.MaxHeads;

    /// <summary>Longest sequence, tokens.</summary>
    public int MaxSequenceLength { get; set; } = 131_072;

    /// <summary>Most live sequences.</summary>
    public int MaxSequences { get; set; } = 65_536;

    /// <summary>Idle time after which a sequence is freed, seconds; 0 disables the lease.</summary>
    public double SequenceLeaseSeconds { get; set; } = 1800;

    /// <summary>Largest gRPC message in either direction, bytes.</summary>
    public int MaxMessageBytes { get; set; } = 256 * 1024 * 1024;

    /// <summary>Decode requests in flight per stream before the server stops reading it.</summary>
    public int MaxInFlightPerStream { get; set; } = 64;

    /// <summary>Requests queued for the scheduler before senders wait.</summary>
    public int QueueCapacity { get; set; } = 4096;

    // ---- Memory and abuse limits (issue 13: what one client, or many, can make the server hold) ----

    /// <summary>
    /// Request and response tensor bytes the server holds at once, MiB, over both ports: a request whose bytes would
    /// pass it is refused with RESOURCE_EXHAUSTED before they are received (the data plane reserves a message's
    /// declared length from it; the gRPC port its tensors as it parses them). Responses waiting for a slow client count
    /// too. 0: a quarter of the memory this process may use (GC.GetGCMemoryInfo().TotalAvailableMemoryBytes),
    /// at least MaxMessageBytes.
    /// </summary>
    public int TensorBudgetMiB { get; set; } = 0;

    /// <summary>Idle tensor buffers the pool keeps for reuse, MiB; the rest go back to the GC. 0: a quarter of the tensor budget.</summary>
    public int TensorPoolRetainedMiB { get; set; } = 0;

    /// <summary>
    /// Host memory the CUDA backend may page-lock for tensor buffers, MiB; buffers past it are staged (one more copy).
    /// 0: the tensor budget plus what the pool retains (every buffer the pool holds within its budgets).
    /// </summary>
    public int PageLockedBudgetMiB { get; set; } = 0;

    /// <summary>Concurrent streams per HTTP/2 connection on both ports (SETTINGS_MAX_CONCURRENT_STREAMS); more are refused.</summary>
    public int MaxStreamsPerConnection { get; set; } = 100;

    /// <summary>
    /// Open connections each port accepts at once (the gRPC and data-plane ports, and the metrics port apart); a connection past it is closed as it
    /// is accepted (the client sees UNAVAILABLE). Each open connection holds about 1 MiB of socket buffers on the
    /// server whether it is used or idle, so this bounds what idle or abandoned connections pin (1024: about 1 GiB a
    /// port). 0: no limit.
    /// </summary>
    public int MaxConnectionsPerPort { get; set; } = 1024;

    /// <summary>The limits of the host's tensor pool (<see cref="TensorBudgetMiB"/> and the two after it), with
    /// <paramref name="availableBytes"/> the memory the process may use.</summary>
    public TensorPoolLimits ToTensorPoolLimits(long availableBytes)
    {
        long held = TensorBudgetMiB > 0 ? (long)TensorBudgetMiB << 20 : Math.Max(availableBytes / 4, MaxMessageBytes);
        long retained = TensorPoolRetainedMiB > 0 ? (long)TensorPoolRetainedMiB << 20 : held / 4;
        long locked = PageLockedBudgetMiB > 0 ? (long)PageLockedBudgetMiB << 20 : held + retained;
        return new TensorPoolLimits { HeldBytes = held, RetainedBytes = retained, PageLockedBytes = locked };
    }

    /// <summary>"text" (readable in a terminal) or "json" (one compact JSON object a line).</summary>
    public string LogFormat { get; set; } = "text";

    /// <summary>
    /// A connection with no open stream for this long, seconds, is closed with GOAWAY (PINGs do not keep it open);
    /// 0 never. Both ports (Kestrel's Limits.KeepAliveTimeout, whose default this is).
    /// </summary>
    public double KeepAliveTimeoutSeconds { get; set; } = 130;

    /// <summary>
    /// Most time, seconds, for a new connection's preface and SETTINGS and for any frame other than DATA (a request's
    /// header block with its CONTINUATIONs included) to arrive whole; 0 never. Both ports (Kestrel's
    /// Limits.RequestHeadersTimeout, whose default this is).
    /// </summary>
    public double RequestHeadersTimeoutSeconds { get; set; } = 30;

    /// <summary>
    /// Least average rate, bytes a second, at which a connection must deliver request messages it has begun (while
    /// the server's flow-control window lets it send), after <see cref="MinRequestBodyDataRateGraceSeconds"/>; a
    /// slower one is closed. 0 turns it off. Both ports (Kestrel's Limits.MinRequestBodyDataRate, whose default this is;
    /// grpc-dotnet lifts it for streaming calls on Kestrel's port).
    /// </summary>
    public double MinRequestBodyDataRate { get; set; } = 240;

    /// <summary>Time, seconds (above 1), a begun request message is given before <see cref="MinRequestBodyDataRate"/> applies.</summary>
    public double MinRequestBodyDataRateGraceSeconds { get; set; } = 5;

    /// <summary>
    /// The whole shutdown, seconds (0..3600), and the host's ShutdownTimeout: NOT_SERVING, GOAWAY on both ports,
    /// every accepted call answered, the scheduler drained (<see cref="GracefulShutdown"/>).
    /// </summary>
    public double DrainTimeoutSeconds { get; set; } = 30;

    /// <summary>
    /// The token file (tenants, their bearer tokens and quotas; Security/TokenFile.cs has the format). Empty: no
    /// authentication, every call is the anonymous tenant's (a warning at start-up).
    /// </summary>
    public string TokenFile { get; set; } = "";

    /// <summary>How often the token file is read again for changes, seconds.</summary>
    public double TokenReloadSeconds { get; set; } = 5;

    /// <summary>TLS of the gRPC and data-plane ports (section FlashMla:Tls); without a certificate both are cleartext.</summary>
    public TlsOptions Tls { get; set; } = new();

    public IEnumerable<string> Validate()
    {
        if (GrpcPort is < 0 or > 65535) yield return $"GrpcPort must be 0..65535, got {GrpcPort}";
        if (MetricsPort is < 0 or > 65535) yield return $"MetricsPort must be 0..65535, got {MetricsPort}";
        if (DataPlanePort is < -1 or > 65535) yield return $"DataPlanePort must be -1 (off) or 0..65535, got {DataPlanePort}";
        if (GrpcPort != 0 && GrpcPort == MetricsPort) yield return "GrpcPort and MetricsPort must differ";
        if (DataPlanePort > 0 && (DataPlanePort == GrpcPort || DataPlanePort == MetricsPort))
            yield return "DataPlanePort must differ from GrpcPort and MetricsPort";
        if (ListenAddress is not ("any" or "loopback")) yield return $"ListenAddress must be any or loopback, got '{ListenAddress}'";
        if (Backend is not ("auto" or "cpu" or "cuda")) yield return $"Backend must be auto, cpu or cuda, got '{Backend}'";
        if (Layers is < 1 or > 1024) yield return $"Layers must be 1..1024, got {Layers}";
        if (!KvDtypes.TryParse(KvDtype, out _)) yield return $"KvDtype must be bf16 or fp8, got '{KvDtype}'";
        if (TotalBlocks < 0) yield return $"TotalBlocks must be >= 0, got {TotalBlocks}";
        if (MemoryFraction is <= 0 or > 1) yield return $"MemoryFraction must be in (0, 1], got {MemoryFraction}";
        if (CpuMemoryMiB < 1) yield return $"CpuMemoryMiB must be >= 1, got {CpuMemoryMiB}";
        if (CpuThreads < 0) yield return $"CpuThreads must be >= 0, got {CpuThreads}";
        if (BatchWindowMicroseconds is < 0 or > 100_000) yield return $"BatchWindowMicroseconds must be 0..100000, got {BatchWindowMicroseconds}";
        if (MaxBatchSequences is < 1 or > 65_536) yield return $"MaxBatchSequences must be 1..65536, got {MaxBatchSequences}";
        if (DecodeBatchesInFlight is < 1 or > 8) yield return $"DecodeBatchesInFlight must be 1..8, got {DecodeBatchesInFlight}";
        if (MaxKvTokensPerCall < MaxSequenceLength)
            yield return $"MaxKvTokensPerCall must be at least MaxSequenceLength ({MaxSequenceLength}), got {MaxKvTokensPerCall}";
        if (MaxQueryTokens is < 1 or > 64) yield return $"MaxQueryTokens must be 1..64, got {MaxQueryTokens}";
        if (MaxHeads is < 1 or > MlaDims.MaxHeads) yield return $"MaxHeads must be 1..{MlaDims.MaxHeads}, got {MaxHeads}";
        if (MaxSequenceLength < 1) yield return $"MaxSequenceLength must be >= 1, got {MaxSequenceLength}";
        if (MaxSequences < 1) yield return $"MaxSequences must be >= 1, got {MaxSequences}";
        if (SequenceLeaseSeconds < 0) yield return $"SequenceLeaseSeconds must be >= 0, got {SequenceLeaseSeconds}";
        if (MaxMessageBytes < 1024 * 1024) yield return $"MaxMessageBytes must be at least 1 MiB, got {MaxMessageBytes}";
        if (MaxInFlightPerStream < 1) yield return $"MaxInFlightPerStream must be >= 1, got {MaxInFlightPerStream}";
        if (QueueCapacity < 1) yield return $"QueueCapacity must be >= 1, got {QueueCapacity}";
        if (TensorBudgetMiB < 0) yield return $"TensorBudgetMiB must be >= 0, got {TensorBudgetMiB}";
        else if (TensorBudgetMiB > 0 && ((long)TensorBudgetMiB << 20) < MaxMessageBytes)
            yield return $"TensorBudgetMiB ({TensorBudgetMiB} MiB) must hold at least one message of MaxMessageBytes ({MaxMessageBytes} bytes)";
        if (TensorPoolRetainedMiB < 0) yield return $"TensorPoolRetainedMiB must be >= 0, got {TensorPoolRetainedMiB}";
        if (PageLockedBudgetMiB < 0) yield return $"PageLockedBudgetMiB must be >= 0, got {PageLockedBudgetMiB}";
        if (MaxConnectionsPerPort < 0) yield return $"MaxConnectionsPerPort must be >= 0 (0: no limit), got {MaxConnectionsPerPort}";
        if (MaxStreamsPerConnection is < 1 or > DataPlane.DataPlaneConnection.MaxConcurrentStreams)
            yield return $"MaxStreamsPerConnection must be 1..{DataPlane.DataPlaneConnection.MaxConcurrentStreams}, got {MaxStreamsPerConnection}";
        if (LogFormat is not ("text" or "json")) yield return $"LogFormat must be text or json, got '{LogFormat}'";
        if (DrainTimeoutSeconds is < 0 or > 3600) yield return $"DrainTimeoutSeconds must be 0..3600, got {DrainTimeoutSeconds}";
        if (KeepAliveTimeoutSeconds < 0) yield return $"KeepAliveTimeoutSeconds must be >= 0 (0: never), got {KeepAliveTimeoutSeconds}";
        if (RequestHeadersTimeoutSeconds < 0) yield return $"RequestHeadersTimeoutSeconds must be >= 0 (0: never), got {RequestHeadersTimeoutSeconds}";
        if (MinRequestBodyDataRate < 0) yield return $"MinRequestBodyDataRate must be >= 0 (0: off), got {MinRequestBodyDataRate}";
        if (MinRequestBodyDataRateGraceSeconds <= 1)
            yield return $"MinRequestBodyDataRateGraceSeconds must be above 1 (Kestrel's heartbeat), got {MinRequestBodyDataRateGraceSeconds}";
        if (TokenReloadSeconds is < 0.05 or > 3600) yield return $"TokenReloadSeconds must be 0.05..3600, got {TokenReloadSeconds}";
        foreach (var problem in Tls.Validate()) yield return problem;
        if (Tls.ClientCertificateTenantSource != Security.ClientCertificateTenantSource.Off && string.IsNullOrEmpty(TokenFile))
            yield return "Tls:ClientCertificateTenant needs TokenFile (its tenants' certificateNames map certificates to tenants)";
    }

    public SchedulerOptions ToSchedulerOptions() => new()
    {
        BatchWindow = TimeSpan.FromMicroseconds(BatchWindowMicroseconds),
        MaxBatchSequences = MaxBatchSequences,
        MaxDecodeBatchesInFlight = DecodeBatchesInFlight,
        MaxKvTokensPerCall = MaxKvTokensPerCall,
        MaxQueryTokens = MaxQueryTokens,
        MaxHeads = MaxHeads,
        QueueCapacity = QueueCapacity,
        SequenceLease = TimeSpan.FromSeconds(SequenceLeaseSeconds),
        LeaseCheckInterval = TimeSpan.FromSeconds(Math.Clamp(SequenceLeaseSeconds / 4, 0.05, 5)),
    };

    public CacheLimits ToCacheLimits() => new(MaxSequenceLength, MaxSequences);

    /// <summary>The connection timeouts of both ports.</summary>
    public ConnectionTimeouts ToConnectionTimeouts() => new(Seconds(KeepAliveTimeoutSeconds), Seconds(RequestHeadersTimeoutSeconds),
        MinRequestBodyDataRate, TimeSpan.FromSeconds(MinRequestBodyDataRateGraceSeconds));

    private static TimeSpan Seconds(double seconds) => seconds == 0 ? Timeout.InfiniteTimeSpan : TimeSpan.FromSeconds(seconds);
}
