using FlashMla.Core.Backends;
using FlashMla.Core.Memory;
using FlashMla.Server.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace FlashMla.Server.Tests;

/// <summary>
/// The backend a server would pick, with a test's hooks around every decode (before it runs, and on its outputs
/// after) and, optionally, on the rows of every stored-format read (<see cref="ReadStoredKv"/>) before they leave.
/// </summary>
internal sealed class HookedBackend(IAttentionBackend inner, Action<DecodeBatch>? before, Action<DecodeBatch>? after,
    Action<Span<byte>>? afterReadStored = null) : IAttentionBackend
{
    /// <summary>A test server whose backend is the usual one with <paramref name="before"/> and <paramref name="after"/> around each decode.</summary>
    public static Task<TestServer> StartServerAsync(Action<DecodeBatch>? before, Action<DecodeBatch>? after, string reason,
        params (string Name, object Value)[] options) =>
        StartServerAsync(before, after, afterReadStored: null, reason, options);

    /// <summary>As above, and <paramref name="afterReadStored"/> applied to the rows of every stored-format read.</summary>
    public static Task<TestServer> StartServerAsync(Action<DecodeBatch>? before, Action<DecodeBatch>? after, Action<Span<byte>>? afterReadStored,
        string reason, params (string Name, object Value)[] options) =>
        TestServer.StartAsync(services => services.AddSingleton(sp =>
        {
            var selected = BackendSelector.Create(sp.GetRequiredService<IOptions<FlashMlaOptions>>().Value,
                sp.GetRequiredService<PinnedTensorPool>(), sp.GetRequiredService<MeasurementSwitches>());
            return new BackendHolder(new HookedBackend(selected.Backend, before, after, afterReadStored), reason);
        }), options);

    public string Name => inner.Name;
    public string DeviceDescription => inner.DeviceDescription;
    public KvPoolGeometry Geometry => inner.Geometry;
    public void WriteKv(int layer, ReadOnlySpan<int> slots, ReadOnlySpan<ushort> rows) => inner.WriteKv(layer, slots, rows);
    public void ReadKv(int layer, ReadOnlySpan<int> slots, Span<ushort> rows) => inner.ReadKv(layer, slots, rows);
    public void WriteStoredKv(int layer, ReadOnlySpan<int> slots, ReadOnlySpan<byte> rows) => inner.WriteStoredKv(layer, slots, rows);
    public void CopyBlocks(ReadOnlySpan<BlockCopy> copies) => inner.CopyBlocks(copies);

    public void ReadStoredKv(int layer, ReadOnlySpan<int> slots, Span<byte> rows)
    {
        inner.ReadStoredKv(layer, slots, rows);
        afterReadStored?.Invoke(rows);
    }

    public void Decode(DecodeBatch batch)
    {
        before?.Invoke(batch);
        inner.Decode(batch);
        after?.Invoke(batch);
    }

    public void Dispose() => inner.Dispose();
}
