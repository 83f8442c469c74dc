using FlashMla.Core.Backends;
using FlashMla.Cuda.Interop;

namespace FlashMla.Cuda.Backend;

/// <summary>
/// The buffers and events one decode step holds from its submission until its outputs are in host memory.
/// <see cref="DecodePipeline"/> rotates over <see cref="DecodePipeline.Slots"/> of them, so that the next
/// step's upload and kernels run while this one's download and unstaging go on; a slot is reused only
/// after the step that held it has completed (which is also the only time its buffers may grow).
/// </summary>
internal sealed class DecodeSlot : IDisposable
{
    private DecodeSlot(PrimaryContextHandle context, int index, StepEvents events)
    {
        Events = events;
        HostUpload = new PinnedStaging(context, $"pinned upload {index}");
        HostDownload = new PinnedStaging(context, $"pinned download {index}");
        DeviceUpload = new DeviceScratch(context, $"device upload {index}");
        DeviceResult = new DeviceScratch(context, $"device result {index}");
        SplitScratch = new DeviceScratch(context, $"split-KV scratch {index}");
    }

    public StepEvents Events { get; }
    public PinnedStaging HostUpload { get; }
    public PinnedStaging HostDownload { get; }
    public DeviceScratch DeviceUpload { get; }
    public DeviceScratch DeviceResult { get; }
    public DeviceScratch SplitScratch { get; }

    /// <summary>The step holding the slot; null when it never held one or its enqueueing failed (then the streams were drained).</summary>
    public DecodeSubmission? Submission { get; set; }

    // What the completion thread needs to unstage the step's outputs.
    public Memory<ushort> OutDestination { get; set; }
    public Memory<float> LseDestination { get; set; }
    public long OutBytes { get; set; }
    public long LseOffset { get; set; }
    public long ChunkBytes { get; set; }
    public nint DirectDownload { get; set; }  // host address out was copied to directly, or 0 (staged)

    public static DecodeSlot Create(PrimaryContextHandle context, int index) => new(context, index, StepEvents.Create(context));

    public void Dispose()
    {
        SplitScratch.Dispose();
        DeviceResult.Dispose();
        DeviceUpload.Dispose();
        HostDownload.Dispose();
        HostUpload.Dispose();
        Events.Dispose();
    }
}
