using CsCheck;
using FlashMla.Core.Backends;
using FlashMla.Core.Backends.Cpu;
using FlashMla.Core.Cache;
using FlashMla.Core.Tensors;

namespace FlashMla.Core.Tests.Cache;

/// <summary>
/// Random sequences of create / append / fork / truncate / free against a plain model of every sequence's
/// rows: no page leaked or double-owned, reference counts right, contents right, everything free at the end.
/// </summary>
public sealed class PagedKvCachePropertyTests
{
    private const int Layers = 2, Blocks = 24;

    private enum Op { Create, Append, AppendAllLayers, Fork, Truncate, Free }

    [Fact]
    public void Random_operations_keep_pages_counts_and_contents_consistent()
    {
        Gen.Select(Gen.Enum<Op>(), Gen.Int[0, 1000], Gen.Int[0, 1], Gen.Int[1, 140])
            .Array[1, 60]
            .Sample(ops => Run(ops), iter: 200);
    }

    private static void Run((Op Op, int Pick, int Layer, int Count)[] ops)
    {
        using var backend = new CpuBackend(new KvPoolGeometry(Layers, Blocks), maxThreads: 1);
        var cache = new PagedKvCache(backend, new CacheLimits(MaxSequenceLength: 1000, MaxSequences: 100));
        var model = new Dictionary<ulong, List<ushort>[]>();
        var random = new Random(ops.Length);
        foreach (var (op, pick, layer, count) in ops)
        {
            var ids = model.Keys.Order().ToList();
            ulong? some = ids.Count == 0 ? null : ids[pick % ids.Count];
            try
            {
                switch (op)
                {
                    case Op.Create:
                        model[cache.Create()] = [[], []];
                        break;
                    case Op.Append when some is { } id:
                        var rows = new ushort[count * MlaDims.HeadDimK];
                        for (int i = 0; i < rows.Length; i++) rows[i] = (ushort)random.Next(0x3000, 0x4000);
                        cache.Append(id, layer, rows);
                        model[id][layer].AddRange(rows);
                        break;
                    case Op.AppendAllLayers when some is { } id:
                        // Both layers long: forks then share pages, and writes after a truncate land in shared pages.
                        for (int l = 0; l < Layers; l++)
                        {
                            var layerRows = new ushort[count * MlaDims.HeadDimK];
                            for (int i = 0; i < layerRows.Length; i++) layerRows[i] = (ushort)random.Next(0x3000, 0x4000);
                            cache.Append(id, l, layerRows);
                            model[id][l].AddRange(layerRows);
                        }
                        break;
                    case Op.Fork when some is { } id:
                        var (child, _, _) = cache.Fork(id);
                        model[child] = [[.. model[id][0]], [.. model[id][1]]];
                        break;
                    case Op.Truncate when some is { } id:
                        int max = model[id].Max(l => l.Count) / MlaDims.HeadDimK;
                        int length = max == 0 ? 0 : pick % (max + 1);
                        cache.Truncate(id, length);
                        foreach (var l in model[id])
                            if (l.Count > length * MlaDims.HeadDimK) l.RemoveRange(length * MlaDims.HeadDimK, l.Count - length * MlaDims.HeadDimK);
                        break;
                    case Op.Free when some is { } id:
                        cache.Free(id);
                        model.Remove(id);
                        break;
                }
            }
            catch (CacheException ex) when (ex.Error == CacheError.ResourceExhausted)
            {
                // Refused for lack of pages: the model stays as it was, and so must the cache (checked below).
            }
            CheckInvariants(cache, model);
        }
        foreach (ulong id in model.Keys.ToList()) cache.Free(id);
        Assert.Equal(Blocks, cache.Allocator.FreeBlocks);
    }

    private static void CheckInvariants(PagedKvCache cache, Dictionary<ulong, List<ushort>[]> model)
    {
        var owners = new Dictionary<int, int>();
        foreach (var s in cache.Sequences)
        {
            Assert.Equal(MlaDims.BlocksFor(s.MaxLength), s.BlockIds.Count);
            Assert.Equal(s.BlockIds.Count, s.BlockIds.Distinct().Count());
            foreach (int b in s.BlockIds) owners[b] = owners.GetValueOrDefault(b) + 1;
            for (int layer = 0; layer < Layers; layer++)
            {
                var expected = model[s.Id][layer];
                Assert.Equal(expected.Count / MlaDims.HeadDimK, s.Lengths[layer]);
                var actual = new ushort[expected.Count];
                cache.Read(s.Id, layer, 0, s.Lengths[layer], actual);
                Assert.True(expected.SequenceEqual(actual), $"rows of sequence {s.Id} layer {layer} differ from the model");
            }
        }
        Assert.Equal(model.Count, cache.SequenceCount);
        for (int b = 0; b < Blocks; b++) Assert.Equal(owners.GetValueOrDefault(b), cache.Allocator.RefCount(b));
        Assert.Equal(Blocks - owners.Count, cache.Allocator.FreeBlocks);
    }
}
