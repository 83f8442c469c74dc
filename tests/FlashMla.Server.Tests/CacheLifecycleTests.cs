using FlashMla.Client;
using FlashMla.Core.Tensors;
using Grpc.Core;

namespace FlashMla.Server.Tests;

/// <summary>The KvCache service end to end over a real Kestrel server.</summary>
public sealed class CacheLifecycleTests : IAsyncLifetime
{
    private TestServer _server = null!;
    private FlashMlaClient Client => _server.Client;

    public async Task InitializeAsync() => _server = await TestServer.StartAsync();
    public async Task DisposeAsync() => await _server.DisposeAsync();

    [Fact]
    public async Task Config_reports_the_shape_and_the_cpu_backend()
    {
        var config = await Client.GetConfigAsync();
        Assert.Equal(2u, config.NumLayers);
        Assert.Equal(576u, config.HeadDimK);
        Assert.Equal(512u, config.HeadDimV);
        Assert.Equal(64u, config.BlockSize);
        Assert.Equal(64u, config.TotalBlocks);
        Assert.Equal("cpu", config.Backend);
    }

    [Fact]
    public async Task Appended_rows_read_back_exactly_across_chunks()
    {
        ulong id = await Client.CreateSequenceAsync();
        var rows = Random16.Bf16(new Random(1), 150 * 576);
        var appended = await Client.AppendKvAsync(id, 1, rows, rowsPerChunk: 40);
        Assert.Equal(4ul, appended.Chunks);
        Assert.Equal(150ul, appended.Rows);

        Assert.Equal(rows, await Client.ReadKvAsync(id, 1));
        Assert.Equal(rows.AsSpan(70 * 576, 30 * 576).ToArray(), await Client.ReadKvAsync(id, 1, start: 70, count: 30));
        var info = await Client.GetSequenceAsync(id);
        Assert.Equal([0u, 150u], info.LayerLengths);
        Assert.Equal(3u, info.Blocks);
    }

    [Fact]
    public async Task Fork_shares_full_pages_and_copies_the_partial_one()
    {
        ulong parent = await Client.CreateSequenceAsync();
        var rows0 = Random16.Bf16(new Random(2), 100 * 576);
        var rows1 = Random16.Bf16(new Random(3), 100 * 576);
        await Client.AppendKvAsync([new KvUpload(parent, 0, rows0), new KvUpload(parent, 1, rows1)]);
        var before = await Client.GetStatsAsync();

        var fork = await Client.ForkAsync(parent);
        Assert.Equal(1u, fork.SharedBlocks);
        Assert.Equal(1u, fork.CopiedBlocks);
        var after = await Client.GetStatsAsync();
        Assert.Equal(before.UsedBlocks + 1, after.UsedBlocks);
        Assert.Equal(rows1, await Client.ReadKvAsync(fork.SequenceId, 1));

        // Diverge: the child's new rows must not show up in the parent, and the parent's rows stay intact.
        var extra = Random16.Bf16(new Random(4), 10 * 576);
        await Client.AppendKvAsync(fork.SequenceId, 1, extra);
        Assert.Equal(rows1, await Client.ReadKvAsync(parent, 1));
        Assert.Equal(rows1.Concat(extra).ToArray(), await Client.ReadKvAsync(fork.SequenceId, 1));

        // Truncating the child into the shared page and writing again copies that page first.
        await Client.TruncateAsync(fork.SequenceId, 30);
        var rewrite = Random16.Bf16(new Random(5), 5 * 576);
        await Client.AppendKvAsync(fork.SequenceId, 0, rewrite);
        Assert.Equal(rows0, await Client.ReadKvAsync(parent, 0));
        Assert.Equal(rows0.Take(30 * 576).Concat(rewrite).ToArray(), await Client.ReadKvAsync(fork.SequenceId, 0));

        await Client.FreeAsync(fork.SequenceId);
        await Client.FreeAsync(parent);
        Assert.Equal(64u, (await Client.GetStatsAsync()).FreeBlocks);
    }

    [Fact]
    public async Task Truncate_rolls_back_tokens_and_releases_whole_pages()
    {
        ulong id = await Client.CreateSequenceAsync();
        var rows = Random16.Bf16(new Random(6), 200 * 576);
        await Client.AppendKvAsync([new KvUpload(id, 0, rows), new KvUpload(id, 1, rows.AsMemory(0, 120 * 576))]);
        Assert.Equal(4u, (await Client.GetSequenceAsync(id)).Blocks);

        uint released = await Client.TruncateAsync(id, 65);
        Assert.Equal(2u, released);
        var info = await Client.GetSequenceAsync(id);
        Assert.Equal([65u, 65u], info.LayerLengths);
        Assert.Equal(2u, info.Blocks);
        Assert.Equal(rows.Take(65 * 576).ToArray(), await Client.ReadKvAsync(id, 0));
        await Client.FreeAsync(id);
    }

    [Fact]
    public async Task Free_returns_every_page_and_the_id_is_gone()
    {
        var start = await Client.GetStatsAsync();
        ulong id = await Client.CreateSequenceAsync();
        await Client.AppendKvAsync(id, 0, Random16.Bf16(new Random(7), 130 * 576));
        Assert.Equal(start.FreeBlocks - 3, (await Client.GetStatsAsync()).FreeBlocks);
        Assert.Equal(3u, await Client.FreeAsync(id));
        Assert.Equal(start.FreeBlocks, (await Client.GetStatsAsync()).FreeBlocks);
        var error = await Assert.ThrowsAsync<RpcException>(() => Client.GetSequenceAsync(id));
        Assert.Equal(StatusCode.NotFound, error.StatusCode);
    }

    [Fact]
    public async Task Decode_appends_the_new_rows_and_matches_the_double_reference()
    {
        var random = new Random(8);
        int[] lengths = [1, 63, 64, 65];
        const int sQ = 2, hQ = 16;
        var ids = new ulong[lengths.Length];
        for (int i = 0; i < lengths.Length; i++)
        {
            ids[i] = await Client.CreateSequenceAsync();
            await Client.AppendKvAsync(ids[i], 1, Random16.Bf16(random, lengths[i] * 576));
        }
        var q = Random16.Bf16(random, ids.Length * sQ * hQ * 576);
        var kv = Random16.Bf16(random, ids.Length * sQ * 576);

        var output = await Client.DecodeOnceAsync(new DecodeInput(1, ids, sQ, hQ, q, kv));

        for (int i = 0; i < ids.Length; i++)
        {
            var cached = await Client.ReadKvAsync(ids[i], 1);
            Assert.Equal(lengths[i] + sQ, cached.Length / 576);
            Assert.Equal(kv.AsSpan(i * sQ * 576, sQ * 576).ToArray(), cached.AsSpan(lengths[i] * 576).ToArray());
            var expectedOut = new double[sQ * hQ * 512];
            var expectedLse = new double[hQ * sQ];
            MlaReference.Decode(q.AsSpan(i * sQ * hQ * 576, sQ * hQ * 576), cached, lengths[i] + sQ, sQ, hQ,
                MlaDims.DefaultSoftmaxScale, expectedOut, expectedLse);
            var actualOut = output.Out.Slice(i * sQ * hQ * 512, sQ * hQ * 512).ToArray().Select(v => (double)Bf16.ToFloat(v)).ToArray();
            var actualLse = output.Lse.Slice(i * hQ * sQ, hQ * sQ).ToArray().Select(v => (double)v).ToArray();
            Assert.True(MlaReference.RelativeError(actualOut, expectedOut) < 1e-2, $"out of sequence {i} is off");
            Assert.True(MlaReference.RelativeError(actualLse, expectedLse) < 1e-3, $"lse of sequence {i} is off");
        }
    }
}
