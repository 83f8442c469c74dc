namespace FlashMla.Core.Scheduling;

/// <summary>How the scheduler batches and bounds work. The host validates these at start-up.</summary>
public sealed record SchedulerOptions
{
    /// <summary>
    /// Zero (the default): continuous batching, a batch starts as soon as a slot on the backend is free and
    /// merges only what arrived while none was. Above zero: a pending batch is held up to this long for more
    /// requests of its layer and shape even when a slot is free (it still starts at once when full).
    /// </summary>
    public TimeSpan BatchWindow { get; init; } = TimeSpan.Zero;

    /// <summary>Most sequences in one backend decode call (and in one request).</summary>
    public int MaxBatchSequences { get; init; } = 512;

    /// <summary>
    /// Most KV positions one backend decode call attends over (the sum over its sequences of their lengths after
    /// the step), which bounds how long one call holds the backend. The batcher closes a batch before it would pass
    /// this; a single request past it is refused (RESOURCE_EXHAUSTED) before anything runs, rather than split: its
    /// sequences' results would have to wait for every part anyway, and one sequence past it could only be split
    /// across calls by a combine of partial results the backends do not have. The default, 16 Mi tokens, is about
    /// 19 GB of KV reads (a few milliseconds of HBM on the H200; seconds on the CPU backend).
    /// </summary>
    public long MaxKvTokensPerCall { get; init; } = 16L << 20;

    /// <summary>
    /// Decode batches submitted to the backend and not yet completed, at most: with 2 the loop prepares and
    /// starts the next batch while the device still runs the last (copies of one overlap kernels of the
    /// other); 1 waits for each batch before the next.
    /// </summary>
    public int MaxDecodeBatchesInFlight { get; init; } = 2;

    /// <summary>
    /// KV ingest chunks (AppendKv) written on the backend at once, beside decode: each holds its request's rows until
    /// its write completes. Chunks of one sequence go one at a time, in order, whatever this says.
    /// </summary>
    public int MaxAppendsInFlight { get; init; } = 4;

    /// <summary>Largest s_q accepted.</summary>
    public int MaxQueryTokens { get; init; } = 8;

    /// <summary>Largest h_q accepted.</summary>
    public int MaxHeads { get; init; } = Tensors.MlaDims.MaxHeads;

    /// <summary>
    /// Largest <c>s_q * h_q</c> accepted. The scheduler lowers it to the backend's
    /// <see cref="Backends.IAttentionBackend.MaxQueryRowsPerSequence"/>, so a request its backend cannot run is refused at the edge.
    /// </summary>
    public int MaxQueryRowsPerSequence { get; init; } = int.MaxValue;

    /// <summary>Requests waiting for the loop before senders are made to wait.</summary>
    public int QueueCapacity { get; init; } = 4096;

    /// <summary>A sequence untouched this long is freed; zero disables the lease.</summary>
    public TimeSpan SequenceLease { get; init; } = TimeSpan.FromMinutes(30);

    /// <summary>How often idle sequences are looked for.</summary>
    public TimeSpan LeaseCheckInterval { get; init; } = TimeSpan.FromSeconds(5);
}
