using FlashMla.Core.Backends;
using FlashMla.Core.Memory;
using FlashMla.Server.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace FlashMla.Server.Tests;

/// <summary>
/// The server's own backend, with every decode held in flight until the test lets them go: what a long decode
/// looks like to everything else (appends and copies pass straight through).
/// </summary>
internal sealed class HeldBackend(IAttentionBackend inner) : IAttentionBackend
{
    private readonly TaskCompletionSource _release = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _submitted;

    public string Name => inner.Name;
    public string DeviceDescription => inner.DeviceDescription;
    public KvPoolGeometry Geometry => inner.Geometry;

    /// <summary>Decode calls started on this backend.</summary>
    public int Submitted => Volatile.Read(ref _submitted);

    /// <summary>Services that put this backend in place of the selected one; <paramref name="held"/> receives it.</summary>
    public static Action<IServiceCollection> Install(Action<HeldBackend> held) => services => services.AddSingleton(sp =>
    {
        var selected = BackendSelector.Create(sp.GetRequiredService<IOptions<FlashMlaOptions>>().Value,
            sp.GetRequiredService<PinnedTensorPool>(), sp.GetRequiredService<MeasurementSwitches>());
        var backend = new HeldBackend(selected.Backend);
        held(backend);
        return new BackendHolder(backend, "test: decodes held in flight");
    });

    public void Release() => _release.TrySetResult();

    public async Task WaitForSubmittedAsync(int count)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (Submitted < count)
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"{Submitted} of {count} decode calls started");
            await Task.Delay(5);
        }
    }

    public void WriteKv(int layer, ReadOnlySpan<int> slots, ReadOnlySpan<ushort> rows) => inner.WriteKv(layer, slots, rows);
    public void ReadKv(int layer, ReadOnlySpan<int> slots, Span<ushort> rows) => inner.ReadKv(layer, slots, rows);
    public void WriteStoredKv(int layer, ReadOnlySpan<int> slots, ReadOnlySpan<byte> rows) => inner.WriteStoredKv(layer, slots, rows);
    public void ReadStoredKv(int layer, ReadOnlySpan<int> slots, Span<byte> rows) => inner.ReadStoredKv(layer, slots, rows);
    public void CopyBlocks(ReadOnlySpan<BlockCopy> copies) => inner.CopyBlocks(copies);
    public void Decode(DecodeBatch batch) => Submit(batch).Wait();

    public DecodeSubmission Submit(DecodeBatch batch)
    {
        var computing = inner.Submit(batch);
        var held = new DecodeSubmission();
        Interlocked.Increment(ref _submitted);
        _ = CompleteAfterReleaseAsync(computing, held);
        return held;
    }

    private async Task CompleteAfterReleaseAsync(DecodeSubmission computing, DecodeSubmission held)
    {
        await _release.Task;
        await computing.Completion;
        try
        {
            computing.Wait();
            held.MarkComplete(computing.Phases);
        }
        catch (BackendFaultException fault)
        {
            held.MarkFailed(fault);
        }
    }

    public void Dispose()
    {
        Release();
        inner.Dispose();
    }
}
