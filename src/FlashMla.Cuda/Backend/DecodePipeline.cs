using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using FlashMla.Core.Backends;
using FlashMla.Core.Memory;
using FlashMla.Core.Tensors;
using FlashMla.Cuda.Interop;

namespace FlashMla.Cuda.Backend;

/// <summary>
/// Decode steps on the device, each enqueued whole by <see cref="Submit"/> on three streams ordered by events:
/// on the upload stream the packed int32 upload of <see cref="Core.Metadata.DecodeUploadLayout"/>, then q (segment
/// by segment), then the new KV rows; on the compute stream, once the upload is done, the append kernel, the split-KV
/// decode kernel and the combine kernel when a sequence was split; on the download stream, once the kernels are
/// done, out and lse back to the host. A completion thread copies the outputs out of pinned memory chunk by chunk
/// as they land and then completes the step's <see cref="DecodeSubmission"/> with the step's own device phases.
/// Each step holds one of <see cref="Slots"/> slots (staging and scratch buffers, events) until it completes, so
/// step N+1's upload overlaps step N's kernels and step N's download overlaps step N+1's kernels. The compute
/// stream is the one <see cref="DeviceKvPools"/> writes the pools on, so a step sees every row appended before it.
/// <para>
/// Inputs in page-locked arrays of <see cref="HostPool"/> are copied straight from where they lie, out straight
/// into its array; anything else goes through the slot's pinned staging.
/// </para>
/// </summary>
internal sealed class DecodePipeline : IDisposable
{
    /// <summary>Decode steps that can be in flight at once (each holds its own buffers until it completes).</summary>
    public const int Slots = 2;

    private readonly PrimaryContextHandle _context;
    private readonly CudaCallGuard _guard;
    private readonly MlaKernels _kernels;

    /// <summary>How the decode kernel is launched (plainly, or in clusters where the row groups allow).</summary>
    public DecodeLaunch DecodeLaunch => _kernels.DecodeLaunch;
    private readonly DeviceKvPools _pools;
    private readonly StreamHandle _compute;
    private readonly StreamHandle _upload;
    private readonly StreamHandle _download;
    private readonly DecodeSlot[] _slots;
    private readonly int _smCount;
    private readonly BlockingCollection<DecodeSlot> _toFinish = new(new ConcurrentQueue<DecodeSlot>());
    private readonly Thread _finisher;
    private int _nextSlot;
    private long _directSteps;

    public DecodePipeline(PrimaryContextHandle context, CudaCallGuard guard, MlaKernels kernels, DeviceKvPools pools,
        StreamHandle compute, StreamHandle upload, StreamHandle download, DecodeSlot[] slots, int smCount)
    {
        _context = context;
        _guard = guard;
        _kernels = kernels;
        _pools = pools;
        _compute = compute;
        _upload = upload;
        _download = download;
        _slots = slots;
        _smCount = smCount;
        _finisher = new Thread(FinishSteps) { IsBackground = true, Name = "cuda decode completion" };
        _finisher.Start();
    }

    /// <summary>The pool whose page-locked arrays are copied directly; null: everything is staged.</summary>
    public PinnedTensorPool? HostPool { get; set; }

    /// <summary>
    /// Staging copies are cut into chunks of this many bytes so the host copies chunk k+1 while the
    /// copy engine moves chunk k (0 turns the overlap off: one whole copy each way, for comparison).
    /// </summary>
    public long TransferChunkBytes { get; set; } = 4L << 20;

    /// <summary>Checks only: fill the device result buffer with NaN before each step, so a row the kernels skip shows.</summary>
    public bool PoisonResults { get; set; }

    /// <summary>Steps whose q and out were copied directly (not staged).</summary>
    public long DirectSteps => Interlocked.Read(ref _directSteps);

    /// <summary>Enqueues one checked batch (the caller entered the guard) and returns its pending submission.</summary>
    public DecodeSubmission Submit(DecodeBatch batch)
    {
        DecodeSlot slot = _slots[_nextSlot];
        // The slot's buffers are free once the step that held them has completed (failed or not).
        slot.Submission?.Completion.Wait();
        slot.Submission = null;
        try
        {
            Enqueue(slot, batch);
        }
        catch (Exception e)
        {
            // Part of the step may be enqueued and still reading the slot's buffers: let it end before they are reused.
            SynchronizeStreams();
            if (e is CudaException cuda) throw _guard.Fault(cuda);
            throw;
        }
        var submission = new DecodeSubmission();
        slot.Submission = submission;
        _nextSlot = (_nextSlot + 1) % _slots.Length;
        _toFinish.Add(slot);
        return submission;
    }

    /// <summary>Waits for everything enqueued on the three streams; errors are ignored (for failure paths and disposal).</summary>
    public void SynchronizeStreams()
    {
        _ = CudaDriver.cuStreamSynchronize(_upload.Stream);
        _ = CudaDriver.cuStreamSynchronize(_compute.Stream);
        _ = CudaDriver.cuStreamSynchronize(_download.Stream);
    }

    /// <summary>Stages the step's inputs and enqueues its copies and kernels on the three streams; returns without waiting.</summary>
    private void Enqueue(DecodeSlot slot, DecodeBatch batch)
    {
        // A clustered decode may fill fewer SMs at once than the device has: plan its parts for those.
        int rowGroups = Core.Metadata.TileScheduler.RowGroups(batch.QueryTokens, batch.Heads);
        var layout = DecodeStepLayout.Plan(batch, _kernels.DecodeLaunch.SmCountFor(rowGroups, _smCount));
        slot.HostUpload.EnsureCapacity(layout.UploadBytes);
        int totalSplits = layout.Ints.Pack(slot.HostUpload.Span<int>(0, layout.Ints.TotalInts), batch.SeqLens.Span, batch.BlockTable.Span,
            batch.NewKvSlots.Span, _pools.Geometry.NumBlocks);
        bool split = totalSplits > batch.BatchSize;
        if (split) slot.SplitScratch.EnsureCapacity(layout.SplitScratchBytes(totalSplits));
        slot.DeviceUpload.EnsureCapacity(layout.UploadBytes);
        slot.DeviceResult.EnsureCapacity(layout.ResultBytes);
        slot.HostDownload.EnsureCapacity(layout.ResultBytes);

        bool qDirect = Upload(slot, batch, layout);
        LaunchKernels(slot, batch, layout, totalSplits, split);
        bool outDirect = Download(slot, batch, layout);
        if (qDirect && outDirect) Interlocked.Increment(ref _directSteps);
    }

    /// <summary>Upload stream: the int32 sections, q segment by segment, the new rows. True when q went up without staging.</summary>
    private bool Upload(DecodeSlot slot, DecodeBatch batch, in DecodeStepLayout layout)
    {
        StepEvents events = slot.Events;
        events.UploadStart.Record(_upload);
        DeviceCopy.ToDevice(slot.DeviceUpload.Pointer, slot.HostUpload.Pointer, layout.Ints.TotalBytes, "decode upload", _upload);
        bool qDirect = true;
        long at = layout.QOffset;
        for (int i = 0; i < batch.Q.Count; i++)
        {
            qDirect &= UploadDirectOrStaged(slot, batch.Q[i], at, "decode q");
            at += batch.Q[i].Length * (long)sizeof(ushort);
        }
        UploadDirectOrStaged(slot, batch.NewKv, layout.KvOffset, "decode new kv");
        events.UploadEnd.Record(_upload);
        return qDirect;
    }

    /// <summary>Compute stream: after this step's upload and (stream order) every earlier step's kernels and pool writes.</summary>
    private void LaunchKernels(DecodeSlot slot, DecodeBatch batch, in DecodeStepLayout layout, int totalSplits, bool split)
    {
        StepEvents events = slot.Events;
        ulong up = slot.DeviceUpload.Pointer;
        ulong result = slot.DeviceResult.Pointer;
        ulong pool = _pools.LayerPointer(batch.Layer);
        IntPtr stream = _compute.Stream;
        _compute.Wait(events.UploadEnd);
        if (PoisonResults)
            CudaException.Check(CudaDriver.cuMemsetD8Async(result, 0xFF, (nuint)layout.ResultBytes, stream), "cuMemsetD8Async(poison)");
        events.KernelsStart.Record(_compute);
        if (layout.NewRows > 0)
        {
            _kernels.Append(new KvAppendParams
            {
                KvPool = pool,
                Rows = up + (ulong)layout.KvOffset,
                Slots = up + 4UL * (ulong)layout.Ints.SlotsOffset,
                NumRows = layout.NewRows,
                NumBlocks = _pools.Geometry.NumBlocks,
            }, stream);
        }
        long accumOut = layout.AccumOutBytes(totalSplits);
        var p = new MlaDecodeParams
        {
            Q = up + (ulong)layout.QOffset,
            KvPool = pool,
            BlockTable = up + 4UL * (ulong)layout.Ints.BlockTableOffset,
            SeqLens = up + 4UL * (ulong)layout.Ints.SeqLensOffset,
            SchedMeta = up + 4UL * (ulong)layout.Ints.SchedMetaOffset,
            NumSplits = up + 4UL * (ulong)layout.Ints.NumSplitsOffset,
            Out = result,
            Lse = result + (ulong)layout.LseOffset,
            OAccum = split ? slot.SplitScratch.Pointer : 0,
            LseAccum = split ? slot.SplitScratch.Pointer + (ulong)accumOut : 0,
            Batch = batch.BatchSize,
            SQ = batch.QueryTokens,
            HQ = batch.Heads,
            RowsPerSeq = layout.RowsPerSequence,
            NumRowGroups = layout.RowGroups,
            BlockTableStride = batch.BlockTableStride,
            NumSmParts = layout.Parts,
            NumBlocks = _pools.Geometry.NumBlocks,
            SoftmaxScale = batch.SoftmaxScale,
            ScaleLog2 = batch.SoftmaxScale * MlaKernelAbi.Log2E,
            // The bf16 decode reads pages through the map over all pools; the fp8 decode reads KvPool (both 0 then).
            KvMapRow0 = _pools.Geometry.Dtype == KvDtype.Bf16 ? checked(batch.Layer * _pools.Geometry.NumBlocks * MlaDims.BlockSize) : 0,
            KvMap = _pools.KvMap,
        };
        _kernels.Decode(p, stream);
        // The combine returns at once for unsplit sequences; skip the launch when none is split.
        if (split) _kernels.Combine(p, stream);
        events.KernelsEnd.Record(_compute);
    }

    /// <summary>
    /// Download stream: out, then lse, in chunks, each followed by an event the completion thread waits on. out goes
    /// straight into the array its responses are written from when that is page-locked (nothing to unstage); lse
    /// (b * h_q * s_q floats, below the pool's registration size) always through staging. True when out went direct.
    /// </summary>
    private bool Download(DecodeSlot slot, DecodeBatch batch, in DecodeStepLayout layout)
    {
        StepEvents events = slot.Events;
        ulong result = slot.DeviceResult.Pointer;
        _download.Wait(events.KernelsEnd);
        long chunk = TransferChunkBytes > 0
            ? Math.Max(TransferChunkBytes, (layout.OutBytes + StepEvents.ChunkEvents - 2) / (StepEvents.ChunkEvents - 1))
            : long.MaxValue;
        slot.DirectDownload = HostPool is { } hostPool && hostPool.TryGetRegisteredAddress((ReadOnlyMemory<ushort>)batch.Out, out nint outHost)
            ? outHost : 0;
        int chunks = 0;
        if (slot.DirectDownload != 0)
        {
            DeviceCopy.ToHost(slot.DirectDownload, result, layout.OutBytes, "decode out", _download);
        }
        else
        {
            for (long at = 0; at < layout.OutBytes; at += chunk)
            {
                DeviceCopy.ToHost(slot.HostDownload.Pointer + (nint)at, result + (ulong)at, Math.Min(chunk, layout.OutBytes - at), "decode out", _download);
                events.Chunk(chunks++).Record(_download);
            }
        }
        DeviceCopy.ToHost(slot.HostDownload.Pointer + (nint)layout.LseOffset, result + (ulong)layout.LseOffset, layout.LseBytes, "decode lse", _download);
        events.Chunk(chunks).Record(_download);
        events.DownloadEnd.Record(_download);

        slot.OutDestination = batch.Out;
        slot.LseDestination = batch.Lse;
        slot.OutBytes = layout.OutBytes;
        slot.LseOffset = layout.LseOffset;
        slot.ChunkBytes = chunk;
        return slot.DirectDownload != 0;
    }

    /// <summary>
    /// Sends a step input: straight from its array when that array is page-locked (it stays rented, unchanged,
    /// until the step completes: the scheduler holds the request until then), else through the slot's pinned
    /// staging. True when it went direct (or was empty).
    /// </summary>
    private bool UploadDirectOrStaged<T>(DecodeSlot slot, ReadOnlyMemory<T> source, long offset, string what) where T : unmanaged
    {
        if (source.IsEmpty) return true;
        if (HostPool is { } hostPool && hostPool.TryGetRegisteredAddress(source, out nint host))
        {
            DeviceCopy.ToDevice(slot.DeviceUpload.Pointer + (ulong)offset, host, MemoryMarshal.AsBytes(source.Span).Length, what, _upload);
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
            DeviceCopy.ToDevice(slot.DeviceUpload.Pointer + (ulong)(offset + at), slot.HostUpload.Pointer + (nint)(offset + at), n, "decode upload", _upload);
        }
    }

    /// <summary>The completion thread: takes submitted steps in order and completes each once its outputs are unstaged.</summary>
    private void FinishSteps()
    {
        foreach (DecodeSlot slot in _toFinish.GetConsumingEnumerable())
            SubmissionCompletion.Complete(_context, _guard, slot.Submission!, slot, static slot =>
            {
                Unstage(slot);
                return slot.Events.ReadPhases();
            }, "a decode step");
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

    /// <summary>The completion thread finishes (or fails) every submitted step, then ends.</summary>
    public void Dispose()
    {
        _toFinish.CompleteAdding();
        _finisher.Join();
        _toFinish.Dispose();
    }
}
