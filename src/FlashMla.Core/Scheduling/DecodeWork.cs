using System.Diagnostics;

namespace FlashMla.Core.Scheduling;

/// <summary>
/// One decode request on its way through the scheduler: its <see cref="DecodeShape"/> (validated at the edge),
/// raw bf16 inputs (views of the request's bytes, never copied until the batch is built) and the completion the
/// caller awaits.
/// </summary>
public sealed class DecodeWork
{
    private readonly TaskCompletionSource<DecodeResult> _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private StartGate _gate;

    private DecodeWork(DecodeShape shape, ReadOnlyMemory<byte> q, ReadOnlyMemory<byte> newKv)
    {
        Shape = shape;
        Q = q;
        NewKv = newKv;
        ArrivedAt = Stopwatch.GetTimestamp();
    }

    public DecodeShape Shape { get; }
    public int Layer => Shape.Layer;
    public ulong[] SequenceIds => Shape.SequenceIds;
    public int BatchSize => Shape.BatchSize;
    public int QueryTokens => Shape.QueryTokens;
    public int Heads => Shape.Heads;
    public float SoftmaxScale => Shape.SoftmaxScale;

    /// <summary>Whose request this is: it finds that tenant's sequences only. Null until the scheduler takes it: its cache's default tenant.</summary>
    public Cache.Tenant? Tenant { get; internal set; }

    /// <summary>bf16 bytes <c>[b, s_q, h_q, 576]</c>.</summary>
    public ReadOnlyMemory<byte> Q { get; }

    /// <summary>bf16 bytes <c>[b, s_q, 576]</c>, or empty.</summary>
    public ReadOnlyMemory<byte> NewKv { get; }

    public bool HasNewKv => !NewKv.IsEmpty;
    public long ArrivedAt { get; }
    public Task<DecodeResult> Completion => _completion.Task;

    /// <summary>
    /// The request with its tensors' bytes. The edge checked them against the shape (the host's tensor checks), so
    /// a length that does not match is a bug in the caller: <see cref="ArgumentException"/>, an internal error.
    /// </summary>
    public static DecodeWork Create(DecodeShape shape, ReadOnlyMemory<byte> q, ReadOnlyMemory<byte> newKv, Cache.Tenant? tenant = null)
    {
        ArgumentNullException.ThrowIfNull(shape);
        if (q.Length != shape.QueryBytes)
            throw new ArgumentException($"DecodeWork: q holds {q.Length} bytes, its shape needs {shape.QueryBytes}", nameof(q));
        if (!newKv.IsEmpty && newKv.Length != shape.NewKvBytes)
            throw new ArgumentException($"DecodeWork: kv holds {newKv.Length} bytes, its shape needs {shape.NewKvBytes}", nameof(newKv));
        return new DecodeWork(shape, q, newKv) { Tenant = tenant };
    }

    /// <summary>True once its caller gave up before the loop started it: it will never be computed.</summary>
    internal bool IsCancelled => _gate.IsCancelled;

    /// <summary>The loop takes the request into a batch; false when it was cancelled first.</summary>
    internal bool TryStart() => _gate.TryStart();

    /// <summary>The caller's token fired: a request not started yet fails at once and is never computed.</summary>
    internal void Cancel(CancellationToken token)
    {
        if (_gate.TryCancel()) _completion.TrySetCanceled(token);
    }

    internal void Complete(DecodeResult result) => _completion.TrySetResult(result);
    internal void Fail(Exception error) => _completion.TrySetException(error);
}

/// <summary>
/// Outputs of one request: <c>out</c> bf16 <c>[b, s_q, h_q, 512]</c> and <c>lse</c> fp32 <c>[b, h_q, s_q]</c>
/// as little-endian bytes, ready to wrap in a response without another copy. They are slices of pooled
/// buffers shared by every request of the batch: call <see cref="Release"/> once the response that wraps
/// them has been serialized (after which they must not be read). A result never released is only
/// garbage, never a fault: its buffers are collected instead of reused.
/// </summary>
public sealed class DecodeResult
{
    private readonly DecodeOutputBuffers? _buffers;
    private int _released;

    internal DecodeResult(ReadOnlyMemory<byte> output, ReadOnlyMemory<byte> lse, DecodeTimings timings, DecodeOutputBuffers? buffers)
    {
        Out = output;
        Lse = lse;
        Timings = timings;
        _buffers = buffers;
    }

    /// <summary>bf16 bytes <c>[b, s_q, h_q, 512]</c>.</summary>
    public ReadOnlyMemory<byte> Out { get; }

    /// <summary>fp32 bytes <c>[b, h_q, s_q]</c>.</summary>
    public ReadOnlyMemory<byte> Lse { get; }

    public DecodeTimings Timings { get; }

    /// <summary>Gives this request's share of the batch's output buffers back; idempotent.</summary>
    public void Release()
    {
        if (Interlocked.Exchange(ref _released, 1) == 0) _buffers?.Release();
    }
}

/// <summary>
/// The pooled <c>out</c> and <c>lse</c> arrays of one backend call, shared by the requests of the batch
/// (each reads its own slice); back to the pool they came from when the last one releases.
/// </summary>
internal sealed class DecodeOutputBuffers
{
    private readonly System.Buffers.ArrayPool<byte> _pool;
    private readonly byte[] _out;
    private readonly byte[] _lse;
    private int _holders;

    public DecodeOutputBuffers(System.Buffers.ArrayPool<byte> pool, int outElements, int lseElements, int holders)
    {
        _pool = pool;
        _out = pool.Rent(outElements * sizeof(ushort));
        _lse = pool.Rent(lseElements * sizeof(float));
        _holders = holders;
        Out = Memory.MemoryCast.Cast<byte, ushort>(_out.AsMemory(0, outElements * sizeof(ushort)));
        Lse = Memory.MemoryCast.Cast<byte, float>(_lse.AsMemory(0, lseElements * sizeof(float)));
    }

    /// <summary>The backend's view: bf16 <c>[b, s_q, h_q, 512]</c>.</summary>
    public Memory<ushort> Out { get; }

    /// <summary>The backend's view: fp32 <c>[b, h_q, s_q]</c>.</summary>
    public Memory<float> Lse { get; }

    public ReadOnlyMemory<byte> OutBytes(int start, int length) => _out.AsMemory(start, length);
    public ReadOnlyMemory<byte> LseBytes(int start, int length) => _lse.AsMemory(start, length);

    public void Release()
    {
        if (Interlocked.Decrement(ref _holders) != 0) return;
        _pool.Return(_out);
        _pool.Return(_lse);
    }
}

/// <summary>
/// Where a request's time went; <paramref name="Device"/> splits its batch's device time, when the backend measures it.
/// <paramref name="ArrivedAt"/> (the request at the scheduler) and <paramref name="CompletedAt"/> (its batch's outputs in
/// host memory) are <see cref="Stopwatch.GetTimestamp"/> values, so the host can add the time before and after.
/// </summary>
public readonly record struct DecodeTimings(double QueueMicroseconds, double ComputeMicroseconds, int BatchSequences, int BatchRequests,
    Backends.DevicePhases? Device = null, long ArrivedAt = 0, long CompletedAt = 0);
