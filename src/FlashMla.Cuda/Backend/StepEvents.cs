using FlashMla.Cuda.Interop;

namespace FlashMla.Cuda.Backend;

/// <summary>Where one decode step's time went: device phases from events, the whole call from the host clock.</summary>
/// <param name="UploadMs">Device time of the host-to-device copies (overlapping the host's staging copies).</param>
/// <param name="KernelsMs">Device time from the append kernel to the end of the combine.</param>
/// <param name="DownloadMs">Device time of the device-to-host copies.</param>
/// <param name="TotalMs">The whole call on the host clock, staging copies included.</param>
/// <param name="Splits">Chunks of the tile schedule (more than the batch: some sequence was split).</param>
/// <param name="Parts">Scheduler parts (CTAs per row group).</param>
public readonly record struct DecodeStepTimings(double UploadMs, double KernelsMs, double DownloadMs, double TotalMs, int Splits, int Parts);

/// <summary>The events a decode step records: four timed phase marks and untimed marks after each download chunk.</summary>
internal sealed class StepEvents : IDisposable
{
    public const int ChunkEvents = 16;

    private readonly EventHandle[] _chunks;

    private StepEvents(EventHandle[] phases, EventHandle[] chunks)
    {
        UploadStart = phases[0];
        KernelsStart = phases[1];
        KernelsEnd = phases[2];
        DownloadEnd = phases[3];
        _chunks = chunks;
    }

    public EventHandle UploadStart { get; }
    public EventHandle KernelsStart { get; }
    public EventHandle KernelsEnd { get; }
    public EventHandle DownloadEnd { get; }

    public EventHandle Chunk(int index) => _chunks[index];

    public static StepEvents Create(PrimaryContextHandle context)
    {
        var created = new List<EventHandle>();
        try
        {
            for (int i = 0; i < 4; i++) created.Add(EventHandle.Create(context, timing: true));
            for (int i = 0; i < ChunkEvents; i++) created.Add(EventHandle.Create(context, timing: false));
            return new StepEvents(created.Take(4).ToArray(), created.Skip(4).ToArray());
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
        KernelsStart.Dispose();
        KernelsEnd.Dispose();
        DownloadEnd.Dispose();
    }
}
