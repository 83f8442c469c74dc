using System.Runtime.InteropServices;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Backends;

/// <summary>
/// Where the KV pools live and where attention runs. One implementation per device kind
/// (<c>CpuBackend</c> here, <c>CudaBackend</c> in FlashMla.Cuda). Every call comes from the
/// scheduler loop, one at a time (a submitted decode may still be running on the backend's own
/// threads or device queues while the next call comes). Slots address token rows:
/// <c>slot = block * 64 + offset_in_block</c>, one numbering for every layer.
/// </summary>
public interface IAttentionBackend : IDisposable
{
    /// <summary>"cpu" or "cuda".</summary>
    string Name { get; }

    /// <summary>The device in words, for the config RPC and the start-up log.</summary>
    string DeviceDescription { get; }

    /// <summary>Layers and blocks of the pools, fixed at construction.</summary>
    KvPoolGeometry Geometry { get; }

    /// <summary>Most query rows (<c>s_q * h_q</c>) per sequence one decode may have; unbounded unless the kernels say otherwise.</summary>
    int MaxQueryRowsPerSequence => int.MaxValue;

    /// <summary>
    /// Writes <c>slots.Length</c> bf16 rows of 576 into one layer's pool, stored in the pools' dtype
    /// (<see cref="KvPoolGeometry.Dtype"/>: an fp8 pool quantizes them, <see cref="Fp8KvFormat"/>).
    /// </summary>
    void WriteKv(int layer, ReadOnlySpan<int> slots, ReadOnlySpan<ushort> rows);

    /// <summary>
    /// <see cref="WriteKv"/> started without waiting for it (KV ingest: a prefill's rows, layer by layer): the backend
    /// reads <paramref name="slots"/> before it returns and <paramref name="rows"/> until the submission completes (the
    /// caller keeps them unchanged until then), and runs it beside decode steps, on queues of its own. The caller
    /// orders it: nothing that reads or writes these slots is started until the submission completes, and it is
    /// submitted only once every earlier step touching them has completed. Faults found before anything started
    /// throw here; later ones fail the submission. This default writes synchronously and returns a completed one.
    /// </summary>
    DecodeSubmission SubmitWriteKv(int layer, ReadOnlySpan<int> slots, ReadOnlyMemory<ushort> rows)
    {
        WriteKv(layer, slots, rows.Span);
        return DecodeSubmission.CompletedNow();
    }

    /// <summary>
    /// <see cref="WriteStoredKv"/> started without waiting for it, ordered and completed as <see cref="SubmitWriteKv"/>
    /// (KV ingest of rows already in the pools' stored format). This default writes synchronously.
    /// </summary>
    DecodeSubmission SubmitWriteStoredKv(int layer, ReadOnlySpan<int> slots, ReadOnlyMemory<byte> rows)
    {
        WriteStoredKv(layer, slots, rows.Span);
        return DecodeSubmission.CompletedNow();
    }

    /// <summary>Reads <c>slots.Length</c> rows of one layer's pool as bf16 rows of 576 (an fp8 pool's dequantized).</summary>
    void ReadKv(int layer, ReadOnlySpan<int> slots, Span<ushort> rows);

    /// <summary>
    /// Writes <c>slots.Length</c> rows already in the pools' stored format (<see cref="KvPoolGeometry.BytesPerToken"/>
    /// bytes each), copied as they are. The default serves bf16 pools through <see cref="WriteKv"/>.
    /// </summary>
    void WriteStoredKv(int layer, ReadOnlySpan<int> slots, ReadOnlySpan<byte> rows)
    {
        if (Geometry.Dtype != KvDtype.Bf16) throw new NotSupportedException($"{Name}: this backend writes stored rows of bf16 pools only");
        WriteKv(layer, slots, MemoryMarshal.Cast<byte, ushort>(rows));
    }

    /// <summary>
    /// Reads <c>slots.Length</c> rows in the pools' stored format (<see cref="KvPoolGeometry.BytesPerToken"/> bytes
    /// each). The default serves bf16 pools through <see cref="ReadKv"/>.
    /// </summary>
    void ReadStoredKv(int layer, ReadOnlySpan<int> slots, Span<byte> rows)
    {
        if (Geometry.Dtype != KvDtype.Bf16) throw new NotSupportedException($"{Name}: this backend reads stored rows of bf16 pools only");
        ReadKv(layer, slots, MemoryMarshal.Cast<byte, ushort>(rows));
    }

    /// <summary>Copies whole blocks, every layer, source to destination (copy-on-write).</summary>
    void CopyBlocks(ReadOnlySpan<BlockCopy> copies);

    /// <summary>
    /// One decode step of a batch: writes the new rows (if any) into their slots, attends
    /// (causal inside the step) and fills <see cref="DecodeBatch.Out"/> and <see cref="DecodeBatch.Lse"/>.
    /// Returns when the outputs are in host memory.
    /// </summary>
    void Decode(DecodeBatch batch);

    /// <summary>
    /// The same step, started without waiting for it: the backend reads every input of
    /// <paramref name="batch"/> (q, new rows, slots, lengths, block table) before it returns, so the caller
    /// may reuse those buffers at once, and writes <see cref="DecodeBatch.Out"/> and
    /// <see cref="DecodeBatch.Lse"/> until the submission completes. Steps run in submission order: a
    /// later step sees the rows an earlier one appended, and so do later WriteKv, ReadKv and CopyBlocks
    /// calls. Invalid arguments and faults found before anything was started throw here; a fault found
    /// later fails the submission. A backend that computes synchronously needs only <see cref="Decode"/>:
    /// this default runs it and returns a completed submission.
    /// </summary>
    DecodeSubmission Submit(DecodeBatch batch)
    {
        Decode(batch);
        return DecodeSubmission.CompletedNow();
    }
}

/// <summary>
/// Shape of the KV pools: <c>num_layers</c> pools of <c>[num_blocks, 64]</c> token rows of <see cref="Dtype"/>
/// (<c>[num_blocks, 64, 576]</c> bf16, or <c>[num_blocks, 64, 656]</c> bytes of <see cref="Fp8KvFormat"/>).
/// </summary>
public readonly record struct KvPoolGeometry(int NumLayers, int NumBlocks, KvDtype Dtype = KvDtype.Bf16)
{
    public long TotalSlots => (long)NumBlocks * MlaDims.BlockSize;

    /// <summary>Bytes of one token's row in a pool.</summary>
    public int BytesPerToken => Dtype.BytesPerToken();

    /// <summary>Bytes of one block of one layer.</summary>
    public long PageBytes => Dtype.PageBytes();

    /// <summary>Bytes of one layer's pool.</summary>
    public long LayerBytes => NumBlocks * PageBytes;
}

/// <summary>One whole-block copy for copy-on-write.</summary>
public readonly record struct BlockCopy(int Source, int Destination);

/// <summary>Raised by a backend for a device fault (a CUDA error); <see cref="IsSticky"/> when the device is lost.</summary>
public sealed class BackendFaultException(string message, bool isSticky, Exception? inner = null)
    : Exception(message, inner)
{
    public bool IsSticky { get; } = isSticky;
}
