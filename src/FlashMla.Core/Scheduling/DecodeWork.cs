using System.Diagnostics;
using FlashMla.Core.Cache;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Scheduling;

/// <summary>
/// One decode request on its way through the scheduler: validated shapes, raw bf16 inputs (views of the
/// request's bytes, never copied until the batch is built) and the completion the caller awaits.
/// </summary>
public sealed class DecodeWork
{
    private readonly TaskCompletionSource<DecodeResult> _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private DecodeWork(int layer, ulong[] sequenceIds, int queryTokens, int heads, float scale,
        ReadOnlyMemory<byte> q, ReadOnlyMemory<byte> newKv)
    {
        Layer = layer;
        SequenceIds = sequenceIds;
        QueryTokens = queryTokens;
        Heads = heads;
        SoftmaxScale = scale;
        Q = q;
        NewKv = newKv;
        ArrivedAt = Stopwatch.GetTimestamp();
    }

    public int Layer { get; }
    public ulong[] SequenceIds { get; }
    public int BatchSize => SequenceIds.Length;
    public int QueryTokens { get; }
    public int Heads { get; }
    public float SoftmaxScale { get; }

    /// <summary>bf16 bytes <c>[b, s_q, h_q, 576]</c>.</summary>
    public ReadOnlyMemory<byte> Q { get; }

    /// <summary>bf16 bytes <c>[b, s_q, 576]</c>, or empty.</summary>
    public ReadOnlyMemory<byte> NewKv { get; }

    public bool HasNewKv => !NewKv.IsEmpty;
    public long ArrivedAt { get; }
    public Task<DecodeResult> Completion => _completion.Task;

    /// <summary>
    /// Checks everything that can be checked without the cache: ranges, duplicates, byte counts.
    /// A scale of 0 means <see cref="MlaDims.DefaultSoftmaxScale"/>.
    /// </summary>
    public static DecodeWork Create(SchedulerOptions limits, int layer, ulong[] sequenceIds, int queryTokens, int heads,
        float softmaxScale, ReadOnlyMemory<byte> q, ReadOnlyMemory<byte> newKv)
    {
        if (sequenceIds.Length == 0) throw CacheException.Invalid("the request names no sequences");
        if (sequenceIds.Length > limits.MaxBatchSequences)
            throw CacheException.Invalid($"the request names {sequenceIds.Length} sequences, more than the limit of {limits.MaxBatchSequences}");
        if (queryTokens < 1 || queryTokens > limits.MaxQueryTokens)
            throw CacheException.Invalid($"s_q must be in 1..{limits.MaxQueryTokens}, got {queryTokens}");
        if (heads < 1 || heads > limits.MaxHeads)
            throw CacheException.Invalid($"h_q must be in 1..{limits.MaxHeads}, got {heads}");
        if (layer < 0) throw CacheException.Invalid($"layer {layer} is out of range");
        if (!float.IsFinite(softmaxScale) || softmaxScale < 0)
            throw CacheException.Invalid($"softmax_scale must be a finite non-negative number, got {softmaxScale}");
        var seen = new HashSet<ulong>(sequenceIds.Length);
        foreach (ulong id in sequenceIds)
            if (!seen.Add(id)) throw CacheException.Invalid($"sequence {id} appears twice in one request");
        long qBytes = (long)sequenceIds.Length * queryTokens * heads * MlaDims.HeadDimK * 2;
        if (q.Length != qBytes)
            throw CacheException.Invalid($"q must hold b*s_q*h_q*576 bf16 = {qBytes} bytes, got {q.Length}");
        long kvBytes = (long)sequenceIds.Length * queryTokens * MlaDims.KvRowBytes;
        if (!newKv.IsEmpty && newKv.Length != kvBytes)
            throw CacheException.Invalid($"kv must hold b*s_q*576 bf16 = {kvBytes} bytes, got {newKv.Length}");
        float scale = softmaxScale == 0 ? MlaDims.DefaultSoftmaxScale : softmaxScale;
        return new DecodeWork(layer, sequenceIds, queryTokens, heads, scale, q, newKv);
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
/// (each reads its own slice); back to <see cref="Memory.TensorBufferPool"/> when the last one releases.
/// </summary>
internal sealed class DecodeOutputBuffers
{
    private readonly byte[] _out;
    private readonly byte[] _lse;
    private int _holders;

    public DecodeOutputBuffers(int outElements, int lseElements, int holders)
    {
        _out = Memory.TensorBufferPool.Bytes.Rent(outElements * sizeof(ushort));
        _lse = Memory.TensorBufferPool.Bytes.Rent(lseElements * sizeof(float));
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
        Memory.TensorBufferPool.Bytes.Return(_out);
        Memory.TensorBufferPool.Bytes.Return(_lse);
    }
}

/// <summary>Where a request's time went; <paramref name="Device"/> splits its batch's device time, when the backend measures it.</summary>
public readonly record struct DecodeTimings(double QueueMicroseconds, double ComputeMicroseconds, int BatchSequences, int BatchRequests,
    Backends.DevicePhases? Device = null);
