using System.Numerics;
using System.Runtime.InteropServices;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Backends.Cpu;

/// <summary>
/// The embedded backend: KV pools in host memory, MLA decode on the CPU's cores in fp32 with
/// SIMD. It is also the oracle the CUDA backend is checked against, so the math is the plain
/// algorithm (see <see cref="CpuDecodeKernel"/>). Pools of <see cref="KvDtype.Fp8"/> hold
/// <see cref="Fp8KvFormat"/> rows: bf16 writes are quantized here, and decode dequantizes each page exactly
/// before the same math as bf16. Calls come one at a time from the scheduler loop.
/// Every method checks all its arguments before it changes anything.
/// </summary>
public sealed unsafe class CpuBackend : IAttentionBackend
{
    private readonly HostKvPool[] _pools;
    private readonly CpuDecodeKernel _kernel;
    private readonly List<System.Buffers.MemoryHandle> _qPins = [];
    private nint[] _qBySequence = []; // the worker's, like _qPins
    private Task _tail = Task.CompletedTask; // the last step submitted; the next one computes after it
    private bool _disposed;

    /// <param name="geometry">Layers, blocks and dtype; every layer gets a pool of <c>NumBlocks * PageBytes</c> bytes
    /// (73,728 a block in bf16, 41,984 in fp8).</param>
    /// <param name="maxThreads">Threads one decode may use; the processor count when null.</param>
    /// <exception cref="ArgumentOutOfRangeException">The geometry is empty, has more slots than an int
    /// addresses, or needs more memory than the machine has.</exception>
    /// <exception cref="OutOfMemoryException">The OS refused the pools.</exception>
    public CpuBackend(KvPoolGeometry geometry, int? maxThreads = null)
    {
        if (geometry.NumLayers < 1 || geometry.NumBlocks < 1)
            throw new ArgumentOutOfRangeException(nameof(geometry), geometry, "CpuBackend: need at least one layer and one block");
        if (geometry.TotalSlots > int.MaxValue)
            throw new ArgumentOutOfRangeException(nameof(geometry), geometry,
                $"CpuBackend: {geometry.NumBlocks} blocks is more than slots (int) can address; at most {int.MaxValue / MlaDims.BlockSize}");
        int threads = maxThreads ?? Environment.ProcessorCount;
        if (threads < 1)
            throw new ArgumentOutOfRangeException(nameof(maxThreads), maxThreads, "CpuBackend: need at least one thread");

        long bytesPerLayer = geometry.LayerBytes;
        double totalBytes = (double)bytesPerLayer * geometry.NumLayers;
        long available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        if (available > 0 && totalBytes > available)
            throw new ArgumentOutOfRangeException(nameof(geometry), geometry,
                $"CpuBackend: {geometry.NumLayers} layers x {geometry.NumBlocks} blocks need {totalBytes / (1L << 30):F1} GiB of host memory; " +
                $"this machine (or container) has {(double)available / (1L << 30):F1} GiB");

        Geometry = geometry;
        _pools = new HostKvPool[geometry.NumLayers];
        try
        {
            for (int layer = 0; layer < _pools.Length; layer++)
                _pools[layer] = HostKvPool.Allocate(geometry.TotalSlots, geometry.BytesPerToken);
        }
        catch (OutOfMemoryException e)
        {
            foreach (var pool in _pools) pool?.Dispose();
            throw new OutOfMemoryException(
                $"CpuBackend: could not allocate {geometry.NumLayers} KV pools of {bytesPerLayer / (double)(1L << 20):F0} MiB each " +
                $"({totalBytes / (1L << 30):F1} GiB in all)", e);
        }

        _kernel = new CpuDecodeKernel(threads);
        MaxThreads = threads;
        DeviceDescription = $"CPU: {threads} threads, {ProcessorName()}, {Vector<float>.Count * 32}-bit SIMD";
    }

    public string Name => "cpu";

    public string DeviceDescription { get; }

    public KvPoolGeometry Geometry { get; }

    /// <summary>Threads one decode may use.</summary>
    public int MaxThreads { get; }

    public void WriteKv(int layer, ReadOnlySpan<int> slots, ReadOnlySpan<ushort> rows)
    {
        var pool = PoolOf(layer);
        CheckRows(slots, rows.Length, MlaDims.HeadDimK, nameof(rows));
        CheckSlots(slots, nameof(slots));
        WriteRows(pool, Geometry.Dtype, slots, rows);
    }

    public void ReadKv(int layer, ReadOnlySpan<int> slots, Span<ushort> rows)
    {
        var pool = PoolOf(layer);
        CheckRows(slots, rows.Length, MlaDims.HeadDimK, nameof(rows));
        CheckSlots(slots, nameof(slots));
        for (int i = 0; i < slots.Length; i++)
        {
            var row = rows.Slice(i * MlaDims.HeadDimK, MlaDims.HeadDimK);
            if (Geometry.Dtype == KvDtype.Fp8) Fp8KvFormat.DequantizeRow(pool.RowBytes(slots[i]), row);
            else MemoryMarshal.Cast<byte, ushort>(pool.RowBytes(slots[i])).CopyTo(row);
        }
    }

    public void WriteStoredKv(int layer, ReadOnlySpan<int> slots, ReadOnlySpan<byte> rows)
    {
        var pool = PoolOf(layer);
        CheckRows(slots, rows.Length, Geometry.BytesPerToken, nameof(rows));
        CheckSlots(slots, nameof(slots));
        int size = Geometry.BytesPerToken;
        for (int i = 0; i < slots.Length; i++) rows.Slice(i * size, size).CopyTo(pool.RowBytes(slots[i]));
    }

    public void ReadStoredKv(int layer, ReadOnlySpan<int> slots, Span<byte> rows)
    {
        var pool = PoolOf(layer);
        CheckRows(slots, rows.Length, Geometry.BytesPerToken, nameof(rows));
        CheckSlots(slots, nameof(slots));
        int size = Geometry.BytesPerToken;
        for (int i = 0; i < slots.Length; i++) pool.RowBytes(slots[i]).CopyTo(rows.Slice(i * size, size));
    }

    public void CopyBlocks(ReadOnlySpan<BlockCopy> copies)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        for (int i = 0; i < copies.Length; i++)
        {
            var (source, destination) = copies[i];
            if ((uint)source >= (uint)Geometry.NumBlocks || (uint)destination >= (uint)Geometry.NumBlocks)
                throw new ArgumentOutOfRangeException(nameof(copies), copies[i],
                    $"CpuBackend: copy {i} names a block outside 0..{Geometry.NumBlocks - 1}");
        }

        long blockBytes = Geometry.PageBytes;
        foreach (var pool in _pools)
            foreach (var (source, destination) in copies)
                if (source != destination)
                    Buffer.MemoryCopy(pool.Row((long)source * MlaDims.BlockSize), pool.Row((long)destination * MlaDims.BlockSize), blockBytes, blockBytes);
    }

    public void Decode(DecodeBatch batch) => Submit(batch).Wait();

    /// <summary>
    /// Checks the batch and writes its new rows now (so every later call sees them, in submission order), then
    /// computes it on a worker, off the scheduler loop: the loop serves cache commands and prepares the next batch
    /// meanwhile. The lengths, block table and q segment list are copied (the caller reuses them); the q bytes and
    /// the outputs stay where they are until the submission completes. Steps compute one at a time, in submission
    /// order (the kernel's scratch is one per backend).
    /// </summary>
    public DecodeSubmission Submit(DecodeBatch batch)
    {
        ArgumentNullException.ThrowIfNull(batch);
        ObjectDisposedException.ThrowIf(_disposed, this);
        batch.CheckInvariants(Geometry);

        var pool = _pools[batch.Layer];
        if (!batch.NewKv.IsEmpty) WriteRows(pool, Geometry.Dtype, batch.NewKvSlots.Span, batch.NewKv.Span);
        var step = CpuDecodeStep.Capture(batch);
        var submission = new DecodeSubmission();
        _tail = _tail.ContinueWith(_ => Compute(pool, step, submission), CancellationToken.None,
            TaskContinuationOptions.DenyChildAttach, TaskScheduler.Default);
        return submission;
    }

    private void Compute(HostKvPool pool, CpuDecodeStep step, DecodeSubmission submission)
    {
        var batch = step.Batch;
        // Each q segment is read where it lies: the kernel takes a pointer per sequence.
        if (_qBySequence.Length < batch.BatchSize) _qBySequence = new nint[Math.Max(batch.BatchSize, 2 * _qBySequence.Length)];
        _qPins.Clear();
        try
        {
            int sequence = 0;
            for (int i = 0; i < batch.Q.Count; i++)
            {
                var segment = batch.Q[i];
                var pin = segment.Pin();
                _qPins.Add(pin);
                for (long at = 0; at < segment.Length; at += batch.QueryElementsPerSequence)
                    _qBySequence[sequence++] = (nint)((ushort*)pin.Pointer + at);
            }
            using var output = batch.Out.Pin();
            using var lse = batch.Lse.Pin();
            using var seqLens = batch.SeqLens.Pin();
            using var blockTable = batch.BlockTable.Pin();
            fixed (nint* q = _qBySequence)
                _kernel.Run(pool, Geometry.Dtype, batch, (ushort**)q, (ushort*)output.Pointer, (float*)lse.Pointer, (int*)seqLens.Pointer, (int*)blockTable.Pointer);
            submission.MarkComplete();
        }
        catch (Exception ex)
        {
            submission.MarkFailed(new BackendFaultException("CpuBackend: the decode failed: " + ex.Message, isSticky: false, ex));
        }
        finally
        {
            foreach (var pin in _qPins) pin.Dispose();
            _qPins.Clear();
            step.Return();
        }
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _tail.Wait(); // a step still computing reads the pools
        foreach (var pool in _pools) pool.Dispose();
    }

    /// <summary>bf16 rows into their slots: copied into a bf16 pool, quantized into an fp8 one.</summary>
    private static void WriteRows(HostKvPool pool, KvDtype dtype, ReadOnlySpan<int> slots, ReadOnlySpan<ushort> rows)
    {
        for (int i = 0; i < slots.Length; i++)
        {
            var row = rows.Slice(i * MlaDims.HeadDimK, MlaDims.HeadDimK);
            if (dtype == KvDtype.Fp8) Fp8KvFormat.QuantizeRow(row, pool.RowBytes(slots[i]));
            else MemoryMarshal.AsBytes(row).CopyTo(pool.RowBytes(slots[i]));
        }
    }

    private HostKvPool PoolOf(int layer)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if ((uint)layer >= (uint)_pools.Length)
            throw new ArgumentOutOfRangeException(nameof(layer), layer, $"CpuBackend: layer outside 0..{_pools.Length - 1}");
        return _pools[layer];
    }

    private static void CheckRows(ReadOnlySpan<int> slots, int rowsLength, int perRow, string name)
    {
        if (rowsLength != (long)slots.Length * perRow)
            throw new ArgumentException(
                $"CpuBackend: {slots.Length} slots need {(long)slots.Length * perRow} row elements ({perRow} each), got {rowsLength}", name);
    }

    private void CheckSlots(ReadOnlySpan<int> slots, string name)
    {
        long total = Geometry.TotalSlots;
        for (int i = 0; i < slots.Length; i++)
            if ((uint)slots[i] >= total)
                throw new ArgumentOutOfRangeException(name, slots[i], $"CpuBackend: slot {i} is outside 0..{total - 1}");
    }

    /// <summary>The processor's marketing name where the OS offers it in one cheap read, else the architecture.</summary>
    private static string ProcessorName()
    {
        try
        {
            if (OperatingSystem.IsLinux())
                foreach (var line in File.ReadLines("/proc/cpuinfo"))
                    if (line.StartsWith("model name", StringComparison.Ordinal) && line.IndexOf(':') is int colon and >= 0)
                        return line[(colon + 1)..].Trim();
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return RuntimeInformation.ProcessArchitecture.ToString();
    }
}
