using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using FlashMla.Core.Backends;
using FlashMla.Core.Memory;
using FlashMla.Core.Tensors;
using FlashMla.Cuda.Interop;

namespace FlashMla.Cuda.Backend;

/// <summary>
/// KV ingest on the device (<see cref="IAttentionBackend.SubmitWriteKv"/>, <see cref="IAttentionBackend.SubmitWriteStoredKv"/>): each write enqueued whole on a stream of
/// its own, never the compute stream, so it runs beside decode steps: the slots (staged, a few bytes a row), the rows
/// (straight from where they lie when that is a page-locked array of <see cref="HostPool"/>, as a chunk received on
/// the data plane is; else through the write's pinned staging), then the append kernel scattering them into their
/// pages, then an event. A completion thread of its own waits for the event and completes the write's submission;
/// the scheduler loop never waits.
/// <para>
/// Ordering against decode steps is the scheduler's, on the host, per sequence: a write starts only after every step
/// on its sequence completed, and no step on its sequence starts before the write's completion was observed, so the
/// write's rows are visible to that step on any stream. Writes of other sequences touch other slots. Each write holds
/// one of a growing set of <see cref="IngestSlot"/>s (staging, scratch, event) until it completes.
/// </para>
/// </summary>
internal sealed class KvIngest : IDisposable
{
    private readonly PrimaryContextHandle _context;
    private readonly CudaCallGuard _guard;
    private readonly MlaKernels _kernels;
    private readonly DeviceKvPools _pools;
    private readonly StreamHandle _stream;
    private readonly List<IngestSlot> _slots = [];
    private readonly BlockingCollection<IngestSlot> _toFinish = new(new ConcurrentQueue<IngestSlot>());
    private readonly Thread _finisher;
    private long _directWrites;

    public KvIngest(PrimaryContextHandle context, CudaCallGuard guard, MlaKernels kernels, DeviceKvPools pools, StreamHandle stream)
    {
        _context = context;
        _guard = guard;
        _kernels = kernels;
        _pools = pools;
        _stream = stream;
        _finisher = new Thread(FinishWrites) { IsBackground = true, Name = "cuda ingest completion" };
        _finisher.Start();
    }

    /// <summary>The pool whose page-locked arrays are copied directly; null: every write is staged.</summary>
    public PinnedTensorPool? HostPool { get; set; }

    /// <summary>Writes whose rows went up straight from a page-locked array (no staging copy); for checks.</summary>
    public long DirectWrites => Interlocked.Read(ref _directWrites);

    /// <summary>Ingest slots allocated so far (one per write in flight at the busiest moment); for checks.</summary>
    public int SlotCount => _slots.Count;

    /// <summary>
    /// Enqueues one checked write (the caller entered the guard) of rows of <paramref name="rowBytes"/> each: bf16 rows,
    /// or with <paramref name="stored"/> rows already in the pools' stored format; returns its pending submission.
    /// </summary>
    public DecodeSubmission Submit<T>(int layer, ReadOnlySpan<int> slots, ReadOnlyMemory<T> rows, int rowBytes, bool stored) where T : unmanaged
    {
        IngestSlot slot = FreeSlot();
        try
        {
            Enqueue(slot, layer, slots, rows, rowBytes, stored);
        }
        catch
        {
            // Part of the write may be enqueued and still reading the slot's buffers: let it end before they are reused.
            _ = CudaDriver.cuStreamSynchronize(_stream.Stream);
            throw;
        }
        var submission = new DecodeSubmission();
        slot.Submission = submission;
        _toFinish.Add(slot);
        return submission;
    }

    /// <summary>Waits for everything enqueued on the ingest stream; errors are ignored (failure paths and disposal).</summary>
    public void SynchronizeStream() => _ = CudaDriver.cuStreamSynchronize(_stream.Stream);

    /// <summary>A slot whose last write has completed, or a new one: never waits for the device.</summary>
    private IngestSlot FreeSlot()
    {
        foreach (IngestSlot slot in _slots)
            if (slot.Submission is null || slot.Submission.IsComplete)
            {
                slot.Submission = null;
                return slot;
            }
        var created = IngestSlot.Create(_context, _slots.Count);
        _slots.Add(created);
        return created;
    }

    /// <summary>
    /// Rows of <paramref name="bytesPerRow"/> each, scattered by the append kernel of the pools' dtype: bf16 rows
    /// (quantized into an fp8 pool), or with <paramref name="stored"/> rows already in the stored format.
    /// </summary>
    private void Enqueue<T>(IngestSlot slot, int layer, ReadOnlySpan<int> slots, ReadOnlyMemory<T> rows, int bytesPerRow, bool stored) where T : unmanaged
    {
        int n = slots.Length;
        long rowsOffset = BufferSizes.RoundUp(n * 4L, BufferSizes.RegionAlignment);
        long rowBytes = n * (long)bytesPerRow;
        nint rowsHost = 0;
        bool direct = HostPool is { } hostPool && hostPool.TryGetRegisteredAddress(rows, out rowsHost);
        slot.HostStaging.EnsureCapacity(direct ? rowsOffset : rowsOffset + rowBytes);
        slot.DeviceUpload.EnsureCapacity(rowsOffset + rowBytes);
        slots.CopyTo(slot.HostStaging.Span<int>(0, n));
        ulong device = slot.DeviceUpload.Pointer;
        if (direct)
        {
            DeviceCopy.ToDevice(device, slot.HostStaging.Pointer, n * 4L, "ingest slots", _stream);
            DeviceCopy.ToDevice(device + (ulong)rowsOffset, rowsHost, rowBytes, "ingest rows", _stream);
            Interlocked.Increment(ref _directWrites);
        }
        else
        {
            MemoryMarshal.AsBytes(rows.Span).CopyTo(slot.HostStaging.Span<byte>(rowsOffset, checked((int)rowBytes)));
            DeviceCopy.ToDevice(device, slot.HostStaging.Pointer, rowsOffset + rowBytes, "ingest upload", _stream);
        }
        var append = new KvAppendParams
        {
            KvPool = _pools.LayerPointer(layer),
            Rows = device + (ulong)rowsOffset,
            Slots = device,
            NumRows = n,
            NumBlocks = _pools.Geometry.NumBlocks,
        };
        if (stored) _kernels.AppendStored(append, _stream.Stream);
        else _kernels.Append(append, _stream.Stream);
        slot.Done.Record(_stream);
    }

    /// <summary>The completion thread: takes enqueued writes in order and completes each once its event has fired.</summary>
    private void FinishWrites()
    {
        foreach (IngestSlot slot in _toFinish.GetConsumingEnumerable())
            SubmissionCompletion.Complete(_context, _guard, slot.Submission!, slot, static slot =>
            {
                slot.Done.Synchronize();
                return (DevicePhases?)null;
            }, "a KV write");
    }

    /// <summary>The completion thread finishes (or fails) every enqueued write, then ends; the slots go last.</summary>
    public void Dispose()
    {
        _toFinish.CompleteAdding();
        _finisher.Join();
        _toFinish.Dispose();
        foreach (IngestSlot slot in _slots) slot.Dispose();
    }
}

/// <summary>What one KV write holds from its submission until it completes: pinned staging, device scratch, its event.</summary>
internal sealed class IngestSlot : IDisposable
{
    private IngestSlot(PrimaryContextHandle context, int index, EventHandle done)
    {
        Done = done;
        HostStaging = new PinnedStaging(context, $"pinned ingest {index}");
        DeviceUpload = new DeviceScratch(context, $"device ingest {index}");
    }

    public PinnedStaging HostStaging { get; }
    public DeviceScratch DeviceUpload { get; }
    public EventHandle Done { get; }

    /// <summary>The write holding the slot; null when free (or its enqueueing failed, after which the stream was drained).</summary>
    public DecodeSubmission? Submission { get; set; }

    public static IngestSlot Create(PrimaryContextHandle context, int index) => new(context, index, EventHandle.Create(context, timing: false));

    public void Dispose()
    {
        DeviceUpload.Dispose();
        HostStaging.Dispose();
        Done.Dispose();
    }
}
