using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using FlashMla.Core.Backends;
using FlashMla.Core.Memory;
using FlashMla.Core.Metadata;
using FlashMla.Core.Tensors;
using FlashMla.Cuda.Interop;

namespace FlashMla.Cuda.Backend;

/// <summary>
/// The KV pools in device memory and MLA decode on the native kernels, on device 0.
/// <para>
/// One allocation holds every layer's pool (<c>[layers][blocks][64][576]</c> bf16), so a layer's pool
/// is a fixed offset and one copy-kernel launch serves all layers. A decode step is enqueued whole by
/// <see cref="Submit"/> on three streams ordered by events: on the upload stream a host-to-device copy of a
/// pinned staging buffer (the packed int32 upload of <see cref="DecodeUploadLayout"/>, then q, then the new
/// KV rows); on the compute stream, once the upload is done, the append kernel, the split-KV decode kernel
/// and the combine kernel when a sequence was split; on the download stream, once the kernels are done, a
/// device-to-host copy of out and lse. A completion thread copies the outputs out of pinned memory chunk by
/// chunk as they land and then completes the step's <see cref="DecodeSubmission"/>. Each step holds one of
/// <see cref="DecodeSlots"/> sets of staging and scratch buffers until it completes, so step N+1's upload
/// overlaps step N's kernels and step N's download overlaps step N+1's kernels. Every write to the KV pools
/// (append, WriteKv, CopyBlocks) and every kernel that reads them runs on the one compute stream, so a step
/// sees every row appended before it. Buffers are reused across steps and only ever grow.
/// </para>
/// <para>
/// Calls come one at a time from the scheduler loop (possibly from different threads: each call
/// binds the context to its thread). A CUDA error becomes <see cref="BackendFaultException"/> (from the
/// call, or as the submission's fault when found by the completion thread); after a sticky one every later
/// call fails at once.
/// </para>
/// </summary>
public sealed class CudaBackend : IAttentionBackend
{
    /// <summary>Rows staged per pass of WriteKv/ReadKv, so a long prefill does not grow the staging buffers without bound.</summary>
    internal const int MaxRowsPerPass = 16384;

    /// <summary>Decode steps that can be in flight at once (each holds its own buffers until it completes).</summary>
    public const int DecodeSlots = 2;

    private const long PageBytes = (long)MlaDims.BlockSize * MlaDims.KvRowBytes;

    private readonly CudaDeviceInfo _device;
    private readonly PrimaryContextHandle _context;
    private readonly StreamHandle _stream;
    private readonly StreamHandle _uploadStream;
    private readonly StreamHandle _downloadStream;
    private readonly MlaKernels _kernels;
    private readonly DeviceMemoryHandle _pools;
    private readonly TensorMapBytes _kvMap;
    private readonly HostMemoryRegistrar _registrar;
    private PinnedTensorPool? _hostPool;  // arrays page-locked for direct copies (AttachHostPool)  // every layer's pool, one map: a layer starts at row layer * blocks * 64
    private readonly PinnedStaging _hostUpload;
    private readonly PinnedStaging _hostDownload;
    private readonly DeviceScratch _deviceUpload;
    private readonly DecodeSlot[] _slots;
    private readonly BlockingCollection<DecodeSlot> _toFinish = new(new ConcurrentQueue<DecodeSlot>());
    private readonly Thread _finisher;
    private readonly BlockCopyWaves _copyWaves = new();
    private readonly List<(int Start, int Count)> _waves = [];
    private readonly string _fatbinPath;
    private int _nextSlot;
    private CudaException? _stickyFault;
    private readonly object _timingsLock = new();
    private DecodeStepTimings _lastTimings;
    private bool _disposed;

    private CudaBackend(CudaDeviceInfo device, PrimaryContextHandle context, StreamHandle[] streams, DecodeSlot[] slots,
        MlaKernels kernels, DeviceMemoryHandle pools, KvPoolGeometry geometry, string fatbinPath)
    {
        _device = device;
        _context = context;
        (_stream, _uploadStream, _downloadStream) = (streams[0], streams[1], streams[2]);
        _slots = slots;
        _kernels = kernels;
        _pools = pools;
        Geometry = geometry;
        _kvMap = KvTensorMap.Encode(pools.Pointer, checked((long)geometry.NumLayers * geometry.NumBlocks * MlaDims.BlockSize));
        _registrar = new HostMemoryRegistrar(context);
        _fatbinPath = fatbinPath;
        _hostUpload = new PinnedStaging(context, "pinned upload");
        _hostDownload = new PinnedStaging(context, "pinned download");
        _deviceUpload = new DeviceScratch(context, "device upload");
        _finisher = new Thread(FinishSteps) { IsBackground = true, Name = "cuda decode completion" };
        _finisher.Start();
    }

    public string Name => "cuda";

    public string DeviceDescription => string.Create(CultureInfo.InvariantCulture,
        $"{_device.Describe()}; KV pools {Geometry.NumLayers} layers x {Geometry.NumBlocks} blocks ({_pools.Bytes / (double)(1L << 30):F2} GiB); kernels {Path.GetFileName(_fatbinPath)}");

    public KvPoolGeometry Geometry { get; }

    /// <summary>Streaming multiprocessors of the device (sizes the tile scheduler's parts).</summary>
    public int SmCount => _device.SmCount;

    /// <summary>The kernels take at most this many query rows (<c>s_q * h_q</c>) per sequence.</summary>
    public int MaxQueryRowsPerSequence => MlaKernelAbi.MaxRowsPerSeq;

    /// <summary>Device time of the kernels of the last decode step (append to combine), in milliseconds.</summary>
    public double LastDecodeKernelMilliseconds => LastDecodeTimings.KernelsMs;

    /// <summary>Where the last completed decode step's time went (for metrics and benchmarks).</summary>
    public DecodeStepTimings LastDecodeTimings
    {
        get { lock (_timingsLock) return _lastTimings; }
        private set { lock (_timingsLock) _lastTimings = value; }
    }

    /// <summary>
    /// Staging copies are cut into chunks of this many bytes so the host copies chunk k+1 while the
    /// copy engine moves chunk k (0 turns the overlap off: one whole copy each way, for comparison).
    /// </summary>
    internal long TransferChunkBytes { get; set; } = 4L << 20;

    /// <summary>
    /// Checks only: fill the device result buffer with NaN before each decode, so a row the kernels
    /// skip comes back NaN instead of the previous step's value.
    /// </summary>
    internal bool PoisonResults { get; set; }

    /// <summary>
    /// Page-locks <paramref name="pool"/>'s arrays (now and as it grows) so that a decode step whose q, new KV,
    /// out and lse lie in them is copied straight between them and the device: no staging copy on the scheduler
    /// loop, no unstaging copy on the completion thread. Steps with other memory are staged as before. The pool
    /// is detached when the backend is disposed.
    /// </summary>
    public void AttachHostPool(PinnedTensorPool pool)
    {
        ArgumentNullException.ThrowIfNull(pool);
        ObjectDisposedException.ThrowIf(_disposed, this);
        _hostPool?.Detach();
        pool.Attach(_registrar);
        _hostPool = pool;
    }

    /// <summary>Pool arrays the driver refused to page-lock (those steps were staged).</summary>
    public long RefusedHostRegistrations => _registrar.Refused;

    /// <summary>Decode steps whose q and out were copied directly (not staged); for checks.</summary>
    internal long DirectSteps => Interlocked.Read(ref _directSteps);
    private long _directSteps;

    /// <summary>Opens device 0 and allocates the pools. Called by <see cref="CudaBackendFactory.Create"/> after a probe.</summary>
    internal static CudaBackend Open(CudaBackendOptions options)
    {
        CudaException.Check(CudaDriver.cuInit(0), "cuInit");
        CudaDeviceInfo device = CudaDeviceInfo.Read(0);
        var owned = new Stack<IDisposable>();
        try
        {
            PrimaryContextHandle context = PrimaryContextHandle.Retain(device.Ordinal);
            owned.Push(context);
            context.MakeCurrent();
            MlaKernels kernels = MlaKernels.Load(context, options.FatbinPath, device);
            owned.Push(kernels);
            var streams = new StreamHandle[3]; // compute, upload, download
            for (int i = 0; i < streams.Length; i++)
            {
                streams[i] = StreamHandle.Create(context);
                owned.Push(streams[i]);
            }
            var slots = new DecodeSlot[DecodeSlots];
            for (int i = 0; i < slots.Length; i++)
            {
                slots[i] = DecodeSlot.Create(context, i);
                owned.Push(slots[i]);
            }

            int blocks = options.NumBlocks;
            if (blocks == 0)
            {
                CudaException.Check(CudaDriver.cuMemGetInfo_v2(out nuint free, out _), "cuMemGetInfo");
                blocks = CudaBackendFactory.BlockCountFromMemory((long)free, options.MemoryFraction, options.NumLayers, options.ReservedBytes);
            }
            long poolBytes = checked(options.NumLayers * (long)blocks * PageBytes);
            DeviceMemoryHandle pools = DeviceMemoryHandle.Allocate(context, poolBytes);
            owned.Push(pools);
            return new CudaBackend(device, context, streams, slots, kernels, pools,
                new KvPoolGeometry(options.NumLayers, blocks), Path.GetFullPath(options.FatbinPath));
        }
        catch
        {
            while (owned.Count > 0) owned.Pop().Dispose();
            throw;
        }
    }

    public void WriteKv(int layer, ReadOnlySpan<int> slots, ReadOnlySpan<ushort> rows)
    {
        CudaBackendArguments.Rows(Geometry, layer, slots, rows.Length);
        BeginCall();
        if (slots.IsEmpty) return;
        try
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
                CopyToDevice(device, _hostUpload.Pointer, bytes, "WriteKv upload");
                _kernels.Append(new KvAppendParams
                {
                    KvPool = PoolPointer(layer),
                    Rows = device + (ulong)rowsOffset,
                    Slots = device,
                    NumRows = n,
                    NumBlocks = Geometry.NumBlocks,
                }, _stream.Stream);
                _stream.Synchronize("WriteKv");
            }
        }
        catch (CudaException e)
        {
            throw Fault(e);
        }
    }

    public void ReadKv(int layer, ReadOnlySpan<int> slots, Span<ushort> rows)
    {
        CudaBackendArguments.Rows(Geometry, layer, slots, rows.Length);
        BeginCall();
        if (slots.IsEmpty) return;
        try
        {
            ulong pool = PoolPointer(layer);
            for (int first = 0; first < slots.Length; first += MaxRowsPerPass)
            {
                int n = Math.Min(MaxRowsPerPass, slots.Length - first);
                _hostDownload.EnsureCapacity(n * (long)MlaDims.KvRowBytes);
                ReadOnlySpan<int> pass = slots.Slice(first, n);
                // Consecutive slots are consecutive rows of the pool: one copy per run.
                for (int i = 0; i < n;)
                {
                    int run = SlotRuns.RunLength(pass, i);
                    CopyToHost(_hostDownload.Pointer + i * MlaDims.KvRowBytes, pool + (ulong)pass[i] * MlaDims.KvRowBytes,
                        run * (long)MlaDims.KvRowBytes, "ReadKv");
                    i += run;
                }
                _stream.Synchronize("ReadKv");
                _hostDownload.Span<ushort>(0, n * MlaDims.HeadDimK).CopyTo(rows.Slice(first * MlaDims.HeadDimK, n * MlaDims.HeadDimK));
            }
        }
        catch (CudaException e)
        {
            throw Fault(e);
        }
    }

    public void CopyBlocks(ReadOnlySpan<BlockCopy> copies)
    {
        CudaBackendArguments.Copies(Geometry, copies);
        BeginCall();
        if (copies.IsEmpty) return;
        try
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
            CopyToDevice(device, _hostUpload.Pointer, offset, "CopyBlocks upload");
            foreach ((long at, int n) in placed)
            {
                if (n == 0) continue;
                _kernels.CopyBlocks(new BlockCopyParams
                {
                    KvPool = _pools.Pointer,
                    Pairs = device + (ulong)at,
                    NumPairs = n,
                    NumLayers = Geometry.NumLayers,
                    LayerStrideBlocks = Geometry.NumBlocks,
                    NumBlocks = Geometry.NumBlocks,
                }, _stream.Stream);
            }
            _stream.Synchronize("CopyBlocks");
        }
        catch (CudaException e)
        {
            throw Fault(e);
        }
    }

    public void Decode(DecodeBatch batch) => Submit(batch).Wait();

    public DecodeSubmission Submit(DecodeBatch batch)
    {
        CudaBackendArguments.Decode(Geometry, batch);
        BeginCall();
        DecodeSlot slot = _slots[_nextSlot];
        // The slot's buffers are free once the step that held them has completed (failed or not).
        slot.Submission?.Completion.Wait();
        slot.Submission = null;
        try
        {
            EnqueueStep(slot, batch);
        }
        catch (Exception e)
        {
            // Part of the step may be enqueued and still reading the slot's buffers: let it end before they are reused.
            _ = CudaDriver.cuStreamSynchronize(_uploadStream.Stream);
            _ = CudaDriver.cuStreamSynchronize(_stream.Stream);
            _ = CudaDriver.cuStreamSynchronize(_downloadStream.Stream);
            if (e is CudaException cuda) throw Fault(cuda);
            throw;
        }
        var submission = new DecodeSubmission();
        slot.Submission = submission;
        _nextSlot = (_nextSlot + 1) % _slots.Length;
        _toFinish.Add(slot);
        return submission;
    }

    /// <summary>
    /// Checks only: launches the append kernel on unmapped addresses, which faults the context
    /// (CUDA_ERROR_ILLEGAL_ADDRESS, sticky) and with it every backend of this process.
    /// </summary>
    internal void InjectDeviceFault()
    {
        BeginCall();
        try
        {
            _kernels.Append(new KvAppendParams { KvPool = 256, Rows = 256, Slots = 256, NumRows = 1, NumBlocks = 1 }, _stream.Stream);
            _stream.Synchronize("fault injection");
        }
        catch (CudaException e)
        {
            throw Fault(e);
        }
    }

    /// <summary>Stages the step's inputs and enqueues its copies and kernels on the three streams; returns without waiting.</summary>
    private void EnqueueStep(DecodeSlot slot, DecodeBatch batch)
    {
        long started = Stopwatch.GetTimestamp();
        int b = batch.BatchSize;
        int rowsPerSeq = batch.QueryTokens * batch.Heads;
        int rowGroups = TileScheduler.RowGroups(batch.QueryTokens, batch.Heads);
        int parts = TileScheduler.DefaultNumSmParts(_device.SmCount, rowGroups);
        int newRows = batch.NewKv.IsEmpty ? 0 : b * batch.QueryTokens;
        var layout = new DecodeUploadLayout(b, batch.BlockTableStride, parts, newRows);

        // Upload: [int32 sections][q][new kv]; result: [out][lse].
        long qOffset = BufferSizes.RoundUp(layout.TotalBytes, BufferSizes.RegionAlignment);
        long kvOffset = BufferSizes.RoundUp(qOffset + batch.Q.Length * 2L, BufferSizes.RegionAlignment);
        long uploadBytes = kvOffset + batch.NewKv.Length * 2L;
        long outBytes = batch.Out.Length * 2L;
        long lseOffset = BufferSizes.RoundUp(outBytes, BufferSizes.RegionAlignment);
        long resultBytes = lseOffset + batch.Lse.Length * 4L;

        slot.HostUpload.EnsureCapacity(uploadBytes);
        // Pack checks every block id and slot before anything reaches the device.
        int totalSplits = layout.Pack(slot.HostUpload.Span<int>(0, layout.TotalInts), batch.SeqLens.Span, batch.BlockTable.Span,
            batch.NewKvSlots.Span, Geometry.NumBlocks);

        bool split = totalSplits > b;
        long oAccumBytes = BufferSizes.RoundUp((long)totalSplits * rowsPerSeq * MlaDims.HeadDimV * 4, BufferSizes.RegionAlignment);
        if (split) slot.SplitScratch.EnsureCapacity(oAccumBytes + (long)totalSplits * rowsPerSeq * 4);
        slot.DeviceUpload.EnsureCapacity(uploadBytes);
        slot.DeviceResult.EnsureCapacity(resultBytes);
        slot.HostDownload.EnsureCapacity(resultBytes);

        ulong up = slot.DeviceUpload.Pointer;
        ulong result = slot.DeviceResult.Pointer;
        ulong pool = PoolPointer(batch.Layer);
        StepEvents events = slot.Events;

        // Upload stream: the inputs.
        events.UploadStart.Record(_uploadStream);
        CopyToDevice(up, slot.HostUpload.Pointer, layout.TotalBytes, "decode upload", _uploadStream);
        // q segment by segment, each from where it lies (page-locked: no host copy at all).
        bool qDirect = true;
        long qAt = qOffset;
        for (int i = 0; i < batch.Q.Count; i++)
        {
            qDirect &= UploadDirectOrStaged(slot, batch.Q[i], qAt, "decode q");
            qAt += batch.Q[i].Length * 2L;
        }
        UploadDirectOrStaged(slot, batch.NewKv, kvOffset, "decode new kv");
        events.UploadEnd.Record(_uploadStream);

        // Compute stream: after this step's upload and (stream order) every earlier step's kernels and pool writes.
        _stream.Wait(events.UploadEnd);
        IntPtr stream = _stream.Stream;
        if (PoisonResults)
            CudaException.Check(CudaDriver.cuMemsetD8Async(result, 0xFF, (nuint)resultBytes, stream), "cuMemsetD8Async(poison)");
        events.KernelsStart.Record(_stream);
        if (newRows > 0)
        {
            _kernels.Append(new KvAppendParams
            {
                KvPool = pool,
                Rows = up + (ulong)kvOffset,
                Slots = up + 4UL * (ulong)layout.SlotsOffset,
                NumRows = newRows,
                NumBlocks = Geometry.NumBlocks,
            }, stream);
        }
        var p = new MlaDecodeParams
        {
            Q = up + (ulong)qOffset,
            KvPool = pool,
            BlockTable = up + 4UL * (ulong)layout.BlockTableOffset,
            SeqLens = up + 4UL * (ulong)layout.SeqLensOffset,
            SchedMeta = up + 4UL * (ulong)layout.SchedMetaOffset,
            NumSplits = up + 4UL * (ulong)layout.NumSplitsOffset,
            Out = result,
            Lse = result + (ulong)lseOffset,
            OAccum = split ? slot.SplitScratch.Pointer : 0,
            LseAccum = split ? slot.SplitScratch.Pointer + (ulong)oAccumBytes : 0,
            Batch = b,
            SQ = batch.QueryTokens,
            HQ = batch.Heads,
            RowsPerSeq = rowsPerSeq,
            NumRowGroups = rowGroups,
            BlockTableStride = batch.BlockTableStride,
            NumSmParts = parts,
            NumBlocks = Geometry.NumBlocks,
            SoftmaxScale = batch.SoftmaxScale,
            ScaleLog2 = batch.SoftmaxScale * MlaKernelAbi.Log2E,
            KvMapRow0 = checked(batch.Layer * Geometry.NumBlocks * MlaDims.BlockSize),
            KvMap = _kvMap,
        };
        _kernels.Decode(p, stream);
        // The combine returns at once for unsplit sequences; skip the launch when none is split.
        if (split) _kernels.Combine(p, stream);
        events.KernelsEnd.Record(_stream);

        // Download stream: out, then lse, in chunks, each followed by an event the completion thread waits on.
        _downloadStream.Wait(events.KernelsEnd);
        long chunk = TransferChunkBytes > 0
            ? Math.Max(TransferChunkBytes, (outBytes + StepEvents.ChunkEvents - 2) / (StepEvents.ChunkEvents - 1))
            : long.MaxValue;
        // out straight into the array its responses are written from when that is page-locked (nothing to
        // unstage); lse (b * h_q * s_q floats, below the pool's registration size) always through staging.
        slot.DirectDownload = _hostPool is not null && _hostPool.TryGetRegisteredAddress((ReadOnlyMemory<ushort>)batch.Out, out nint outHost)
            ? outHost : 0;
        int chunks = 0;
        if (slot.DirectDownload != 0)
        {
            CopyToHost(slot.DirectDownload, result, outBytes, "decode out", _downloadStream);
        }
        else
        {
            for (long at = 0; at < outBytes; at += chunk)
            {
                CopyToHost(slot.HostDownload.Pointer + (nint)at, result + (ulong)at, Math.Min(chunk, outBytes - at), "decode out", _downloadStream);
                events.Chunk(chunks++).Record(_downloadStream);
            }
        }
        CopyToHost(slot.HostDownload.Pointer + (nint)lseOffset, result + (ulong)lseOffset, batch.Lse.Length * 4L, "decode lse", _downloadStream);
        events.Chunk(chunks).Record(_downloadStream);
        events.DownloadEnd.Record(_downloadStream);
        if (qDirect && slot.DirectDownload != 0) Interlocked.Increment(ref _directSteps);

        slot.OutDestination = batch.Out;
        slot.LseDestination = batch.Lse;
        slot.OutBytes = outBytes;
        slot.LseOffset = lseOffset;
        slot.ChunkBytes = chunk;
        slot.StartedAt = started;
        slot.Splits = totalSplits;
        slot.Parts = parts;
    }

    /// <summary>
    /// Sends a step input: straight from its array when that array is page-locked (it stays rented, unchanged,
    /// until the step completes: the scheduler holds the request until then), else through the slot's pinned
    /// staging. True when it went direct (or was empty).
    /// </summary>
    private bool UploadDirectOrStaged<T>(DecodeSlot slot, ReadOnlyMemory<T> source, long offset, string what) where T : unmanaged
    {
        if (source.IsEmpty) return true;
        if (_hostPool is not null && _hostPool.TryGetRegisteredAddress(source, out nint host))
        {
            CopyToDevice(slot.DeviceUpload.Pointer + (ulong)offset, host, MemoryMarshal.AsBytes(source.Span).Length, what, _uploadStream);
            return true;
        }
        StageAndUpload(slot, MemoryMarshal.AsBytes(source.Span), offset);
        return false;
    }

    /// <summary>Copies <paramref name="source"/> into the slot's pinned upload at <paramref name="offset"/> and sends it, chunk by chunk, so the two overlap.</summary>
    private void StageAndUpload(DecodeSlot slot, ReadOnlySpan<byte> source, long offset)
    {
        long chunk = TransferChunkBytes > 0 ? TransferChunkBytes : long.MaxValue;
        for (long at = 0; at < source.Length; at += chunk)
        {
            int n = (int)Math.Min(chunk, source.Length - at);
            source.Slice((int)at, n).CopyTo(slot.HostUpload.Span<byte>(offset + at, n));
            CopyToDevice(slot.DeviceUpload.Pointer + (ulong)(offset + at), slot.HostUpload.Pointer + (nint)(offset + at), n, "decode upload", _uploadStream);
        }
    }

    /// <summary>The completion thread: takes submitted steps in order and completes each once its outputs are unstaged.</summary>
    private void FinishSteps()
    {
        foreach (DecodeSlot slot in _toFinish.GetConsumingEnumerable())
        {
            DecodeSubmission submission = slot.Submission!;
            try
            {
                _context.MakeCurrent();
                Unstage(slot);
                StepEvents e = slot.Events;
                var timings = new DecodeStepTimings(
                    UploadMs: e.UploadEnd.MillisecondsSince(e.UploadStart),
                    KernelsMs: e.KernelsEnd.MillisecondsSince(e.KernelsStart),
                    DownloadMs: e.DownloadEnd.MillisecondsSince(e.KernelsEnd),
                    TotalMs: Stopwatch.GetElapsedTime(slot.StartedAt).TotalMilliseconds,
                    Splits: slot.Splits,
                    Parts: slot.Parts);
                LastDecodeTimings = timings;
                submission.MarkComplete(new DevicePhases(timings.UploadMs * 1000, timings.KernelsMs * 1000, timings.DownloadMs * 1000));
            }
            catch (CudaException e)
            {
                submission.MarkFailed(Fault(e));
            }
            catch (Exception e)
            {
                submission.MarkFailed(new BackendFaultException("CUDA backend: completing a decode step failed: " + e.Message, isSticky: false, e));
            }
        }
    }

    /// <summary>Copies each downloaded chunk out of pinned memory as soon as its event has completed.</summary>
    private static void Unstage(DecodeSlot slot)
    {
        StepEvents events = slot.Events;
        Span<byte> outDestination = MemoryMarshal.AsBytes(slot.OutDestination.Span);
        Span<byte> lseDestination = MemoryMarshal.AsBytes(slot.LseDestination.Span);
        long outBytes = slot.OutBytes, chunk = slot.ChunkBytes;
        int k = 0;
        if (slot.DirectDownload == 0) // else out is already in place
        {
            for (long at = 0; at < outBytes; at += chunk)
            {
                events.Chunk(k++).Synchronize();
                int n = (int)Math.Min(chunk, outBytes - at);
                slot.HostDownload.Span<byte>(at, n).CopyTo(outDestination.Slice((int)at, n));
            }
        }
        events.Chunk(k).Synchronize();
        slot.HostDownload.Span<byte>(slot.LseOffset, lseDestination.Length).CopyTo(lseDestination);
        events.DownloadEnd.Synchronize();
        slot.OutDestination = default;
        slot.LseDestination = default;
    }

    private ulong PoolPointer(int layer) => _pools.Pointer + (ulong)((long)layer * Geometry.NumBlocks * PageBytes);

    private void CopyToDevice(ulong destination, IntPtr source, long bytes, string what) => CopyToDevice(destination, source, bytes, what, _stream);

    private void CopyToHost(IntPtr destination, ulong source, long bytes, string what) => CopyToHost(destination, source, bytes, what, _stream);

    private static unsafe void CopyToDevice(ulong destination, IntPtr source, long bytes, string what, StreamHandle stream) =>
        CudaException.Check(CudaDriver.cuMemcpyHtoDAsync_v2(destination, (void*)source, (nuint)bytes, stream.Stream), "cuMemcpyHtoDAsync(" + what + ")");

    private static unsafe void CopyToHost(IntPtr destination, ulong source, long bytes, string what, StreamHandle stream) =>
        CudaException.Check(CudaDriver.cuMemcpyDtoHAsync_v2((void*)destination, source, (nuint)bytes, stream.Stream), "cuMemcpyDtoHAsync(" + what + ")");

    private void BeginCall()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (Volatile.Read(ref _stickyFault) is { } fault)
            throw new BackendFaultException("CUDA backend is unusable after an earlier device fault: " + fault.Message, isSticky: true, fault);
        try
        {
            _context.MakeCurrent();
        }
        catch (CudaException e)
        {
            throw Fault(e);
        }
    }

    private BackendFaultException Fault(CudaException e)
    {
        // Called from the loop and from the completion thread.
        if (e.IsSticky) Interlocked.CompareExchange(ref _stickyFault, e, null);
        return new BackendFaultException("CUDA backend: " + e.Message, e.IsSticky, e);
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        // The completion thread finishes (or fails) every submitted step, then ends.
        _toFinish.CompleteAdding();
        _finisher.Join();
        if (Volatile.Read(ref _stickyFault) is null)
        {
            // Let in-flight work finish before its memory goes; a failure here has nowhere better to go.
            if (CudaDriver.cuCtxSetCurrent(_context.DangerousGetHandle()) == CUresult.CUDA_SUCCESS)
            {
                _ = CudaDriver.cuStreamSynchronize(_uploadStream.Stream);
                _ = CudaDriver.cuStreamSynchronize(_stream.Stream);
                _ = CudaDriver.cuStreamSynchronize(_downloadStream.Stream);
            }
        }
        // Unlock the pool's arrays while the context lives; the pool keeps them (unlocked) for the next backend.
        _hostPool?.Detach();
        foreach (DecodeSlot slot in _slots) slot.Dispose();
        _deviceUpload.Dispose();
        _hostDownload.Dispose();
        _hostUpload.Dispose();
        _pools.Dispose();
        _kernels.Dispose();
        _downloadStream.Dispose();
        _uploadStream.Dispose();
        _stream.Dispose();
        _toFinish.Dispose();
        _context.Dispose();
    }
}
