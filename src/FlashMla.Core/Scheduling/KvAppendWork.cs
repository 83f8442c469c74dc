
namespace FlashMla.Core.Scheduling;

/// <summary>
/// One chunk of KV ingest (AppendKv) on its way through the scheduler: rows for one layer of one sequence, as raw
/// bf16 bytes (or bytes already in the pools' stored format, <see cref="Stored"/>) that stay where the request's bytes lie (a pooled, page-locked array on the data plane) until the
/// backend's write of them completes. Ordered only against work on its sequence.
/// </summary>
public sealed class KvAppendWork : IDeferrableCommand
{
    private readonly TaskCompletionSource<int> _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private StartGate _gate;

    private KvAppendWork(ulong sequenceId, int layer, ReadOnlyMemory<byte> rows, bool stored)
    {
        SequenceId = sequenceId;
        Layer = layer;
        Rows = rows;
        Stored = stored;
    }

    public ulong SequenceId { get; }
    public int Layer { get; }

    /// <summary>bf16 bytes <c>[n, 576]</c>, or with <see cref="Stored"/> rows of the pools' stored format (fp8: <c>[n, 656]</c> bytes).</summary>
    public ReadOnlyMemory<byte> Rows { get; }

    /// <summary>The rows are in the pools' stored format, written as they are (not bf16 rows to convert).</summary>
    public bool Stored { get; }

    /// <summary>Whose chunk this is: it finds that tenant's sequences only. Null until the scheduler takes it: its cache's default tenant.</summary>
    public Cache.Tenant? Tenant { get; internal set; }

    public CacheAccess Access => CacheAccess.Sequence(SequenceId);

    /// <summary>Completes with the rows appended once they are in the pool.</summary>
    public Task<int> Completion => _completion.Task;

    /// <summary>
    /// A chunk whose rows the edge checked (dtype, shape <c>[n, 576]</c> bf16, or with <paramref name="stored"/>
    /// <c>[n, bytes per token]</c> of the cache's stored format; byte count).
    /// </summary>
    public static KvAppendWork Create(ulong sequenceId, int layer, ReadOnlyMemory<byte> rows, Cache.Tenant? tenant = null, bool stored = false) =>
        new(sequenceId, layer, rows, stored) { Tenant = tenant };

    internal bool IsCancelled => _gate.IsCancelled;
    internal bool TryStart() => _gate.TryStart();

    internal void Cancel()
    {
        if (_gate.TryCancel()) _completion.TrySetCanceled();
    }

    internal void Complete(int rows) => _completion.TrySetResult(rows);
    internal void Fail(Exception error) => _completion.TrySetException(error);
}
