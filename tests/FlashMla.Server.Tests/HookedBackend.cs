using FlashMla.Core.Backends;
using FlashMla.Core.Memory;
using FlashMla.Server.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace FlashMla.Server.Tests;

/// <summary>The backend a server would pick, with a test's hooks around every decode: before it runs, and on its outputs after.</summary>
internal sealed class HookedBackend(IAttentionBackend inner, Action<DecodeBatch>? before, Action<DecodeBatch>? after) : IAttentionBackend
{
    /// <summary>A test server whose backend is the usual one with <paramref name="before"/> and <paramref name="after"/> around each decode.</summary>
    public static Task<TestServer> StartServerAsync(Action<DecodeBatch>? before, Action<DecodeBatch>? after, string reason,
        params (string Name, object Value)[] options) =>
        TestServer.StartAsync(services => services.AddSingleton(sp =>
        {
            var selected = BackendSelector.Create(sp.GetRequiredService<IOptions<FlashMlaOptions>>().Value,
                sp.GetRequiredService<PinnedTensorPool>(), sp.GetRequiredService<MeasurementSwitches>());
            return new BackendHolder(new HookedBackend(selected.Backend, before, after), reason);
        }), options);

    public string Name => inner.Name;
    public string DeviceDescription => inner.DeviceDescription;
    public KvPoolGeometry Geometry => inner.Geometry;
    public void WriteKv(int layer, ReadOnlySpan<int> slots, ReadOnlySpan<ushort> rows) => inner.WriteKv(layer, slots, rows);
    public void ReadKv(int layer, ReadOnlySpan<int> slots, Span<ushort> rows) => inner.ReadKv(layer, slots, rows);
    public void CopyBlocks(ReadOnlySpan<BlockCopy> copies) => inner.CopyBlocks(copies);

    public void Decode(DecodeBatch batch)
    {
        before?.Invoke(batch);
        inner.Decode(batch);
        after?.Invoke(batch);
    }

    public void Dispose() => inner.Dispose();
}
