using FlashMla.Core.Backends;
using FlashMla.Core.Tensors;
using FlashMla.Cuda.Interop;

namespace FlashMla.Cuda.Backend;

/// <summary>
/// The KV pools in device memory and the calls that move whole rows: <see cref="Write(int, ReadOnlySpan{int}, ReadOnlySpan{ushort})"/>,
/// <see cref="WriteStored"/>, <see cref="ReadStored"/> and <see cref="Copy"/>. One allocation holds every layer's pool
/// (<c>[layers][blocks][64]</c> rows of the geometry's dtype: 576 bf16, or 656 bytes of fp8), so a layer's pool is a
/// fixed offset and one copy-kernel launch serves all layers. Everything here runs on the compute stream
/// (the stream of every pool write and of every kernel that reads the pools, so a decode step sees every row written
/// before it) and waits for it: the calls are synchronous. Arguments are checked by the caller
/// (<see cref="CudaBackendArguments"/>); staging buffers are reused and only grow.
/// </summary>
internal sealed class DeviceKvPools : IDisposable
{
    /// <summary>Rows staged per pass of Write/Read, so a long prefill does not grow the staging buffers without bound.</summary>
    public const int MaxRowsPerPass = 16384;

    private readonly DeviceMemoryHandle _memory;
    private readonly MlaKernels _kernels;
    private readonly StreamHandle _stream;
    private readonly PinnedStaging _hostUpload;
    private readonly PinnedStaging _hostDownload;
    private readonly DeviceScratch _deviceUpload;
    private readonly BlockCopyWaves _copyWaves = new();
    private readonly List<(int Start, int Count)> _waves = [];

    private DeviceKvPools(PrimaryContextHandle context, MlaKernels kernels, StreamHandle compute, DeviceMemoryHandle memory, KvPoolGeometry geometry)
    {
        _memory = memory;
        _kernels = kernels;
        _stream = compute;
        Geometry = geometry;
        // Every layer's pool, one map: a layer starts at row layer * blocks * 64. The fp8 decode reads pages without
        // one (its map is all zero, as the ABI asks).
        if (geometry.Dtype == KvDtype.Bf16)
            KvMap = KvTensorMap.Encode(memory.Pointer, checked((long)geometry.NumLayers * geometry.NumBlocks * MlaDims.BlockSize));
        _hostUpload = new PinnedStaging(context, "pinned upload");
        _hostDownload = new PinnedStaging(context, "pinned download");
        _deviceUpload = new DeviceScratch(context, "device upload");
    }

    public KvPoolGeometry Geometry { get; }

    /// <summary>Device memory of all pools.</summary>
    public long Bytes => _memory.Bytes;

    /// <summary>The TMA descriptor of all pools, for the bf16 decode kernel (zero for fp8 pools).</summary>
    public TensorMapBytes KvMap { get; }

    /// <summary>Allocates the pools of <paramref name="geometry"/>.</summary>
    public static DeviceKvPools Allocate(PrimaryContextHandle context, MlaKernels kernels, StreamHandle compute, KvPoolGeometry geometry)
    {
        DeviceMemoryHandle memory = DeviceMemoryHandle.Allocate(context, checked(geometry.NumLayers * geometry.LayerBytes));
        try
        {
            return new DeviceKvPools(context, kernels, compute, memory, geometry);
        }
        catch
        {
            memory.Dispose();
            throw;
        }
    }

    /// <summary>Device address of <paramref name="layer"/>'s pool.</summary>
    public ulong LayerPointer(int layer) => _memory.Pointer + (ulong)(layer * Geometry.LayerBytes);

    /// <summary>Writes bf16 rows into their slots of one layer (quantized into fp8 pools by the append kernel).</summary>
    public void Write(int layer, ReadOnlySpan<int> slots, ReadOnlySpan<ushort> rows) =>
        Write(layer, slots, System.Runtime.InteropServices.MemoryMarshal.AsBytes(rows), MlaDims.KvRowBytes, stored: false);

    /// <summary>Writes rows already in the pools' stored format into their slots of one layer, as they are.</summary>
    public void WriteStored(int layer, ReadOnlySpan<int> slots, ReadOnlySpan<byte> rows) =>
        Write(layer, slots, rows, Geometry.BytesPerToken, stored: true);

    /// <summary>Rows of <paramref name="rowBytes"/> each: staged with their slots, scattered by the append kernel.</summary>
    private void Write(int layer, ReadOnlySpan<int> slots, ReadOnlySpan<byte> rows, int rowBytes, bool stored)
    {
        for (int first = 0; first < slots.Length; first += MaxRowsPerPass)
        {
            int n = Math.Min(MaxRowsPerPass, slots.Length - first);
            long rowsOffset = BufferSizes.RoundUp(n * 4L, BufferSizes.RegionAlignment);
            long bytes = rowsOffset + n * (long)rowBytes;
            _hostUpload.EnsureCapacity(bytes);
            _deviceUpload.EnsureCapacity(bytes);
            slots.Slice(first, n).CopyTo(_hostUpload.Span<int>(0, n));
            rows.Slice(first * rowBytes, n * rowBytes).CopyTo(_hostUpload.Span<byte>(rowsOffset, n * rowBytes));
            ulong device = _deviceUpload.Pointer;
            DeviceCopy.ToDevice(device, _hostUpload.Pointer, bytes, "WriteKv upload", _stream);
            var append = new KvAppendParams
            {
                KvPool = LayerPointer(layer),
                Rows = device + (ulong)rowsOffset,
                Slots = device,
                NumRows = n,
                NumBlocks = Geometry.NumBlocks,
            };
            if (stored) _kernels.AppendStored(append, _stream.Stream);
            else _kernels.Append(append, _stream.Stream);
            _stream.Synchronize("WriteKv");
        }
    }

    /// <summary>Reads rows of one layer back in the stored format, one copy per run of consecutive slots.</summary>
    public void ReadStored(int layer, ReadOnlySpan<int> slots, Span<byte> rows)
    {
        ulong pool = LayerPointer(layer);
        int rowBytes = Geometry.BytesPerToken;
        for (int first = 0; first < slots.Length; first += MaxRowsPerPass)
        {
            int n = Math.Min(MaxRowsPerPass, slots.Length - first);
            _hostDownload.EnsureCapacity(n * (long)rowBytes);
            ReadOnlySpan<int> pass = slots.Slice(first, n);
            // Consecutive slots are consecutive rows of the pool: one copy per run.
            for (int i = 0; i < n;)
            {
                int run = SlotRuns.RunLength(pass, i);
                DeviceCopy.ToHost(_hostDownload.Pointer + i * rowBytes, pool + (ulong)pass[i] * (ulong)rowBytes,
                    run * (long)rowBytes, "ReadKv", _stream);
                i += run;
            }
            _stream.Synchronize("ReadKv");
            _hostDownload.Span<byte>(0, n * rowBytes).CopyTo(rows.Slice(first * rowBytes, n * rowBytes));
        }
    }

    /// <summary>Copies whole blocks of every layer, with the list's sequential meaning (waves of one launch each).</summary>
    public void Copy(ReadOnlySpan<BlockCopy> copies)
    {
        _copyWaves.Split(copies, _waves);
        long bytes = BufferSizes.RoundUp(copies.Length * 8L + _waves.Count * BufferSizes.RegionAlignment, BufferSizes.RegionAlignment);
        _hostUpload.EnsureCapacity(bytes);
        _deviceUpload.EnsureCapacity(bytes);
        // All waves' pairs in one upload, each wave at an aligned offset.
        Span<(long Offset, int Pairs)> placed = _waves.Count <= 64 ? stackalloc (long, int)[_waves.Count] : new (long, int)[_waves.Count];
        long offset = 0;
        for (int w = 0; w < _waves.Count; w++)
        {
            (int start, int count) = _waves[w];
            Span<int> pairs = _hostUpload.Span<int>(offset, count * 2);
            int n = 0;
            foreach (BlockCopy c in copies.Slice(start, count))
            {
                if (c.Source == c.Destination) continue;
                pairs[2 * n] = c.Source;
                pairs[2 * n + 1] = c.Destination;
                n++;
            }
            placed[w] = (offset, n);
            offset = BufferSizes.RoundUp(offset + n * 8L, BufferSizes.RegionAlignment);
        }
        if (offset == 0) return; // only self-copies
        ulong device = _deviceUpload.Pointer;
        DeviceCopy.ToDevice(device, _hostUpload.Pointer, offset, "CopyBlocks upload", _stream);
        foreach ((long at, int n) in placed)
        {
            if (n == 0) continue;
            _kernels.CopyBlocks(new BlockCopyParams
            {
                KvPool = _memory.Pointer,
                Pairs = device + (ulong)at,
                NumPairs = n,
                NumLayers = Geometry.NumLayers,
                LayerStrideBlocks = Geometry.NumBlocks,
                NumBlocks = Geometry.NumBlocks,
            }, _stream.Stream);
        }
        _stream.Synchronize("CopyBlocks");
    }

    public void Dispose()
    {
        _deviceUpload.Dispose();
        _hostDownload.Dispose();
        _hostUpload.Dispose();
        _memory.Dispose();
    }
}
