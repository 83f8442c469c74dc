using FlashMla.Client;

namespace FlashMla.Server.Tests;

/// <summary>Everything observable about a set of sequences: stats, lengths, every row. Equal snapshots mean an unchanged cache.</summary>
public sealed record CacheSnapshot(uint FreeBlocks, uint Sequences, string Lengths, string RowsHash)
{
    public static async Task<CacheSnapshot> TakeAsync(FlashMlaClient client, params ulong[] ids)
    {
        var stats = await client.GetStatsAsync();
        var lengths = new List<string>();
        var hash = new HashCode();
        foreach (ulong id in ids)
        {
            var info = await client.GetSequenceAsync(id);
            lengths.Add($"{id}:{string.Join(",", info.LayerLengths)}/{info.Blocks}");
            for (int layer = 0; layer < info.LayerLengths.Count; layer++)
                if (info.LayerLengths[layer] > 0)
                    foreach (ushort v in await client.ReadKvAsync(id, layer)) hash.Add(v);
        }
        return new CacheSnapshot(stats.FreeBlocks, stats.Sequences, string.Join(";", lengths), hash.ToHashCode().ToString());
    }
}
