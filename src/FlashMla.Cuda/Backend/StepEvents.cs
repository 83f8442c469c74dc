using FlashMla.Cuda.Interop;

namespace FlashMla.Cuda.Backend;

/// <summary>Where one decode step's time went: device phases from events, the whole call from the host clock.</summary>
/// <param name="UploadMs">Device time of the host-to-device copies on the upload stream (overlapping the host's staging copies).</param>
/// <param name="KernelsMs">Device time from the append kernel to the end of the combine.</param>
/// <param name="DownloadMs">Device time from the end of the kernels to the end of the device-to-host copies
/// (including any wait for the previous step's download on the download stream).</param>
/// <param name="TotalMs">Submit to completion on the host clock, staging copies included.</param>
/// <param name="Splits">Chunks of the tile schedule (more than the batch: some sequence was split).</param>
/// <param name="Parts">Scheduler parts (CTAs per row group).</param>
public readonly record struct DecodeStepTimings(double UploadMs, double KernelsMs, double DownloadMs, double TotalMs, int Splits, int Parts);

/// <summary>
/// The events a decode step records: five timed phase marks (which also order the step's three streams:
/// kernels wait for <see cref="UploadEnd"/>, the download for <see cref="KernelsEnd"/>) and untimed marks
/// after each download chunk.
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
