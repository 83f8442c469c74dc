using System.Globalization;
using FlashMla.Core.Backends;
using FlashMla.Core.Memory;
using FlashMla.Core.Tensors;
using FlashMla.Cuda.Interop;

namespace FlashMla.Cuda.Backend;

/// <summary>
/// The attention backend on device 0: the KV pools in device memory (<see cref="DeviceKvPools"/>) and MLA decode
/// on the native kernels (<see cref="DecodePipeline"/>: steps enqueued whole, up to <see cref="DecodeSlots"/> in
/// flight, each completed with its own device phases). This class checks arguments, guards every call
/// (<see cref="CudaCallGuard"/>) and owns the device objects.
/// <para>
/// Calls come one at a time from the scheduler loop (possibly from different threads: each call binds the
/// context to its thread). A CUDA error becomes <see cref="BackendFaultException"/> (from the call, or as the
/// submission's fault when found by the completion thread); after a sticky one every later call fails at once.
/// </para>
/// </summary>
public sealed class CudaBackend : IAttentionBackend
{
    /// <summary>Decode steps that can be in flight at once (each holds its own buffers until it completes).</summary>
    public const int DecodeSlots = DecodePipeline.Slots;

    private readonly CudaDeviceInfo _device;
    private readonly PrimaryContextHandle _context;
    private readonly IDisposable[] _owned; // streams, slots and kernels, disposed last, in reverse
    private readonly CudaCallGuard _guard;
    private readonly DeviceKvPools _pools;
    private readonly DecodePipeline _decode;
    private readonly KvIngest _ingest;
    private readonly HostMemoryRegistrar _registrar;
    private readonly string _fatbinPath;
    private bool _disposed;

    private CudaBackend(CudaDeviceInfo device, PrimaryContextHandle context, IDisposable[] owned, CudaCallGuard guard, DeviceKvPools pools,
        DecodePipeline decode, KvIngest ingest, string fatbinPath)
    {
        _ingest = ingest;
        _device = device;
        _context = context;
        _owned = owned;
        _guard = guard;
        _pools = pools;
        _decode = decode;
        _registrar = new HostMemoryRegistrar(context);
        _fatbinPath = fatbinPath;
    }

    public string Name => "cuda";

    public string DeviceDescription => string.Create(CultureInfo.InvariantCulture,
        $"{_device.Describe()}; KV pools {Geometry.NumLayers} layers x {Geometry.NumBlocks} blocks of {Geometry.Dtype.OptionName()} ({_pools.Bytes / (double)(1L << 30):F2} GiB); kernels {Path.GetFileName(_fatbinPath)}{DescribeDecodeLaunch(_decode.DecodeLaunch)}");

    private static string DescribeDecodeLaunch(DecodeLaunch launch) => launch.ClusterWidth == 1
        ? ""
        : string.Create(CultureInfo.InvariantCulture,
            $", decode in clusters of {launch.ClusterWidth} where the row groups pair up ({launch.ClusterSmCount} SMs at once)");

    public KvPoolGeometry Geometry => _pools.Geometry;

    /// <summary>Streaming multiprocessors of the device (sizes the tile scheduler's parts).</summary>
    public int SmCount => _device.SmCount;

    /// <summary>The kernels take at most this many query rows (<c>s_q * h_q</c>) per sequence.</summary>
    public int MaxQueryRowsPerSequence => MlaKernelAbi.MaxRowsPerSeq;

    /// <summary>
    /// Staging copies are cut into chunks of this many bytes so the host copies chunk k+1 while the
    /// copy engine moves chunk k (0 turns the overlap off: one whole copy each way, for comparison).
    /// </summary>
    internal long TransferChunkBytes
    {
        get => _decode.TransferChunkBytes;
        set => _decode.TransferChunkBytes = value;
    }

    /// <summary>
    /// Checks only: fill the device result buffer with NaN before each decode, so a row the kernels
    /// skip comes back NaN instead of the previous step's value.
    /// </summary>
    internal bool PoisonResults
    {
        get => _decode.PoisonResults;
        set => _decode.PoisonResults = value;
    }

    /// <summary>KV writes (SubmitWriteKv) whose rows went up straight from a page-locked array; for checks.</summary>
    internal long DirectIngestWrites => _ingest.DirectWrites;

    /// <summary>Decode steps whose q and out were copied directly (not staged); for checks.</summary>
    internal long DirectSteps => _decode.DirectSteps;

    /// <summary>Pool arrays the driver refused to page-lock (those steps were staged).</summary>
    public long RefusedHostRegistrations => _registrar.Refused;

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
        _decode.HostPool?.Detach();
        pool.Attach(_registrar);
        _decode.HostPool = pool;
        _ingest.HostPool = pool;
    }

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
            MlaKernels kernels = MlaKernels.Load(context, options.FatbinPath, device, options.KvDtype);
            owned.Push(kernels);
            var streams = new StreamHandle[4]; // compute, upload, download, ingest
            for (int i = 0; i < streams.Length; i++)
            {
                streams[i] = StreamHandle.Create(context);
                owned.Push(streams[i]);
            }
            var slots = new DecodeSlot[DecodePipeline.Slots];
            for (int i = 0; i < slots.Length; i++)
            {
                slots[i] = DecodeSlot.Create(context, i);
                owned.Push(slots[i]);
            }

            int blocks = options.NumBlocks;
            if (blocks == 0)
            {
                CudaException.Check(CudaDriver.cuMemGetInfo_v2(out nuint free, out _), "cuMemGetInfo");
                blocks = CudaBackendFactory.BlockCountFromMemory((long)free, options.MemoryFraction, options.NumLayers, options.ReservedBytes, options.KvDtype);
            }
            var pools = DeviceKvPools.Allocate(context, kernels, streams[0], new KvPoolGeometry(options.NumLayers, blocks, options.KvDtype));
            owned.Push(pools);
            var guard = new CudaCallGuard(context);
            var decode = new DecodePipeline(context, guard, kernels, pools, streams[0], streams[1], streams[2], slots, device.SmCount);
            var ingest = new KvIngest(context, guard, kernels, pools, streams[3]);
            return new CudaBackend(device, context, [.. slots, streams[3], streams[2], streams[1], streams[0], kernels], guard, pools, decode,
                ingest, Path.GetFullPath(options.FatbinPath));
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
            _pools.Write(layer, slots, rows);
        }
        catch (CudaException e)
        {
            throw _guard.Fault(e);
        }
    }

    /// <summary>The write on the ingest stream (<see cref="KvIngest"/>), beside decode steps; returns without waiting.</summary>
    public DecodeSubmission SubmitWriteKv(int layer, ReadOnlySpan<int> slots, ReadOnlyMemory<ushort> rows)
    {
        CudaBackendArguments.Rows(Geometry, layer, slots, rows.Length);
        return SubmitIngest(layer, slots, rows, MlaDims.KvRowBytes, stored: false);
    }

    /// <summary>Rows in the stored format on the ingest stream, as <see cref="SubmitWriteKv"/>: the raw append kernel.</summary>
    public DecodeSubmission SubmitWriteStoredKv(int layer, ReadOnlySpan<int> slots, ReadOnlyMemory<byte> rows)
    {
        CudaBackendArguments.StoredRows(Geometry, layer, slots, rows.Length);
        return SubmitIngest(layer, slots, rows, Geometry.BytesPerToken, stored: true);
    }

    private DecodeSubmission SubmitIngest<T>(int layer, ReadOnlySpan<int> slots, ReadOnlyMemory<T> rows, int rowBytes, bool stored) where T : unmanaged
    {
        BeginCall();
        if (slots.IsEmpty) return DecodeSubmission.CompletedNow();
        try
        {
            return _ingest.Submit(layer, slots, rows, rowBytes, stored);
        }
        catch (CudaException e)
        {
            throw _guard.Fault(e);
        }
    }

    public void ReadKv(int layer, ReadOnlySpan<int> slots, Span<ushort> rows)
    {
        CudaBackendArguments.Rows(Geometry, layer, slots, rows.Length);
        if (Geometry.Dtype == KvDtype.Bf16)
        {
            ReadStoredChecked(layer, slots, System.Runtime.InteropServices.MemoryMarshal.AsBytes(rows));
            return;
        }
        // fp8: the stored rows, dequantized on the host by the codec the kernels match bit for bit.
        var stored = new byte[slots.Length * (long)Geometry.BytesPerToken];
        ReadStoredChecked(layer, slots, stored);
        Fp8KvFormat.Dequantize(stored, rows);
    }

    public void WriteStoredKv(int layer, ReadOnlySpan<int> slots, ReadOnlySpan<byte> rows)
    {
        CudaBackendArguments.StoredRows(Geometry, layer, slots, rows.Length);
        BeginCall();
        if (slots.IsEmpty) return;
        try
        {
            _pools.WriteStored(layer, slots, rows);
        }
        catch (CudaException e)
        {
            throw _guard.Fault(e);
        }
    }

    public void ReadStoredKv(int layer, ReadOnlySpan<int> slots, Span<byte> rows)
    {
        CudaBackendArguments.StoredRows(Geometry, layer, slots, rows.Length);
        ReadStoredChecked(layer, slots, rows);
    }

    private void ReadStoredChecked(int layer, ReadOnlySpan<int> slots, Span<byte> rows)
    {
        BeginCall();
        if (slots.IsEmpty) return;
        try
        {
            _pools.ReadStored(layer, slots, rows);
        }
        catch (CudaException e)
        {
            throw _guard.Fault(e);
        }
    }

    public void CopyBlocks(ReadOnlySpan<BlockCopy> copies)
    {
        CudaBackendArguments.Copies(Geometry, copies);
        BeginCall();
        if (copies.IsEmpty) return;
        try
        {
            _pools.Copy(copies);
        }
        catch (CudaException e)
        {
            throw _guard.Fault(e);
        }
    }

    public void Decode(DecodeBatch batch) => Submit(batch).Wait();

    public DecodeSubmission Submit(DecodeBatch batch)
    {
        CudaBackendArguments.Decode(Geometry, batch);
        BeginCall();
        return _decode.Submit(batch);
    }

    private void BeginCall()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        _guard.Enter();
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _decode.Dispose();
        bool current = !_guard.DeviceLost && CudaDriver.cuCtxSetCurrent(_context.DangerousGetHandle()) == CUresult.CUDA_SUCCESS;
        if (current)
        {
            _decode.SynchronizeStreams(); // in-flight work ends before its memory goes; a failure here has nowhere better to go
            _ingest.SynchronizeStream();
        }
        _ingest.Dispose();
        // Unlock the pool's arrays while the context lives; the pool keeps them (unlocked) for the next backend.
        _decode.HostPool?.Detach();
        _pools.Dispose();
        foreach (IDisposable owned in _owned) owned.Dispose();
        _context.Dispose();
    }
}
