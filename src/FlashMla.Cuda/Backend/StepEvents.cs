using FlashMla.Core.Backends;
using FlashMla.Cuda.Interop;

namespace FlashMla.Cuda.Backend;

/// <summary>
/// The events a decode step records: five timed phase marks (which also order the step's three streams:
/// kernels wait for <see cref="UploadEnd"/>, the download for <see cref="KernelsEnd"/>) and untimed marks
/// after each download chunk. Each slot has its own, so every step's timings are its own
/// (<see cref="ReadPhases"/>, carried by its <see cref="DecodeSubmission"/>) however many steps are in flight.
/// </summary>
internal sealed class StepEvents : IDisposable
{
    public const int ChunkEvents = 16;

    private readonly EventHandle[] _chunks;

    private StepEvents(EventHandle[] phases, EventHandle[] chunks)
    {
        UploadStart = phases[0];
        UploadEnd = phases[1];
        KernelsStart = phases[2];
        KernelsEnd = phases[3];
        DownloadEnd = phases[4];
        _chunks = chunks;
    }

    public EventHandle UploadStart { get; }
    public EventHandle UploadEnd { get; }
    public EventHandle KernelsStart { get; }
    public EventHandle KernelsEnd { get; }
    public EventHandle DownloadEnd { get; }

    public EventHandle Chunk(int index) => _chunks[index];

    /// <summary>
    /// The step's device time once <see cref="DownloadEnd"/> has completed: the host-to-device copies on the upload
    /// stream; the kernels from the append to the end of the combine; from the end of the kernels to the end of the
    /// device-to-host copies (including any wait for the previous step's download on the download stream).
    /// </summary>
    public DevicePhases ReadPhases() => new(
        UploadMicroseconds: UploadEnd.MillisecondsSince(UploadStart) * 1000.0,
        KernelMicroseconds: KernelsEnd.MillisecondsSince(KernelsStart) * 1000.0,
        DownloadMicroseconds: DownloadEnd.MillisecondsSince(KernelsEnd) * 1000.0);

    public static StepEvents Create(PrimaryContextHandle context)
    {
        var created = new List<EventHandle>();
        try
        {
            for (int i = 0; i < 5; i++) created.Add(EventHandle.Create(context, timing: true));
            for (int i = 0; i < ChunkEvents; i++) created.Add(EventHandle.Create(context, timing: false));
            return new StepEvents(created.Take(5).ToArray(), created.Skip(5).ToArray());
        }
        catch
        {
            foreach (EventHandle e in created) e.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        foreach (EventHandle e in _chunks) e.Dispose();
        UploadStart.Dispose();
        UploadEnd.Dispose();
        KernelsStart.Dispose();
        KernelsEnd.Dispose();
        DownloadEnd.Dispose();
    }
}
