using FlashMla.Core.Backends;
using FlashMla.Core.Tensors;
using FlashMla.Cuda.Interop;

namespace FlashMla.Cuda.Backend;

/// <summary>
/// The KV pools in device memory and the calls that move whole rows: <see cref="Write"/>, <see cref="Read"/> and
/// <see cref="Copy"/>. One allocation holds every layer's pool (<c>[layers][blocks][64][576]</c> bf16), so a layer's
/// pool is a fixed offset and one copy-kernel launch serves all layers. Everything here runs on the compute stream
/// (the stream of every pool write and of every kernel that reads the pools, so a decode step sees every row written
/// before it) and waits for it: the calls are synchronous. Arguments are checked by the caller
/// (<see cref="CudaBackendArguments"/>); staging buffers are reused and only grow.
/// </summary>
internal sealed class DeviceKvPools : IDisposable
{
    /// <summary>Rows staged per pass of Write/Read, so a long prefill does not grow the staging buffers without bound.</summary>
    public const int MaxRowsPerPass = 16384;

    /// <summary>Bytes of one block of one layer.</summary>
    public const long PageBytes = (long)MlaDims.BlockSize * MlaDims.KvRowBytes;

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
        // Every layer's pool, one map: a layer starts at row layer * blocks * 64.
        KvMap = KvTensorMap.Encode(memory.Pointer, checked((long)geometry.NumLayers * geometry.NumBlocks * MlaDims.BlockSize));
        _hostUpload = new PinnedStaging(context, "pinned upload");
        _hostDownload = new PinnedStaging(context, "pinned download");
        _deviceUpload = new DeviceScratch(context, "device upload");
    }

    public KvPoolGeometry Geometry { get; }

    /// <summary>Device memory of all pools.</summary>
    public long Bytes => _memory.Bytes;

    /// <summary>The TMA descriptor of all pools, for the decode kernel.</summary>
    public TensorMapBytes KvMap { get; }

    /// <summary>Allocates the pools of <paramref name="geometry"/>.</summary>
    public static DeviceKvPools Allocate(PrimaryContextHandle context, MlaKernels kernels, StreamHandle compute, KvPoolGeometry geometry)
    {
        DeviceMemoryHandle memory = DeviceMemoryHandle.Allocate(context, checked(geometry.NumLayers * (long)geometry.NumBlocks * PageBytes));
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
    public ulong LayerPointer(int layer) => _memory.Pointer + (ulong)((long)layer * Geometry.NumBlocks * PageBytes);

    /// <summary>Writes rows into their slots of one layer: staged with their slots, scattered by the append kernel.</summary>
    public void Write(int layer, ReadOnlySpan<int> slots, ReadOnlySpan<ushort> rows)
    {
        for (int first = 0; first < slots.Length; first += MaxRowsPerPass)
        {
            int n = Math.Min(MaxRowsPerPass, slots.Length - first);
            long rowsOffset = BufferSizes.RoundUp(n * 4L, BufferSizes.RegionAlignment);
            long bytes = rowsOffset + n * (long)MlaDims.KvRowBytes;
            _hostUpload.EnsureCapacity(bytes);
            _deviceUpload.EnsureCapacity(bytes);
            slots.Slice(first, n).CopyTo(_hostUpload.Span<int>(0, n));
            rows.Slice(first * MlaDims.HeadDimK, n * MlaDims.HeadDimK).CopyTo(_hostUpload.Span<ushort>(rowsOffset, n * MlaDims.HeadDimK));
            ulong device = _deviceUpload.Pointer;
            DeviceCopy.ToDevice(device, _hostUpload.Pointer, bytes, "WriteKv upload", _stream);
            _kernels.Append(new KvAppendParams
            {
                KvPool = LayerPointer(layer),
                Rows = device + (ulong)rowsOffset,
                Slots = device,
                NumRows = n,
                NumBlocks = Geometry.NumBlocks,
            }, _stream.Stream);
            _stream.Synchronize("WriteKv");
        }
    }

    /// <summary>Reads rows of one layer back, one copy per run of consecutive slots.</summary>
    public void Read(int layer, ReadOnlySpan<int> slots, Span<ushort> rows)
    {
        ulong pool = LayerPointer(layer);
        for (int first = 0; first < slots.Length; first += MaxRowsPerPass)
        {
            int n = Math.Min(MaxRowsPerPass, slots.Length - first);
            _hostDownload.EnsureCapacity(n * (long)MlaDims.KvRowBytes);
            ReadOnlySpan<int> pass = slots.Slice(first, n);
            // Consecutive slots are consecutive rows of the pool: one copy per run.
            for (int i = 0; i < n;)
            {
                int run = SlotRuns.RunLength(pass, i);
                DeviceCopy.ToHost(_hostDownload.Pointer + i * MlaDims.KvRowBytes, pool + (ulong)pass[i] * MlaDims.KvRowBytes,
                    run * (long)MlaDims.KvRowBytes, "ReadKv", _stream);
                i += run;
            }
            _stream.Synchronize("ReadKv");
            _hostDownload.Span<ushort>(0, n * MlaDims.HeadDimK).CopyTo(rows.Slice(first * MlaDims.HeadDimK, n * MlaDims.HeadDimK));
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
