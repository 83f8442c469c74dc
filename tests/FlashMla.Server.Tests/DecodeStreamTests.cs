using FlashMla.Client;
using Grpc.Core;

namespace FlashMla.Server.Tests;

/// <summary>The bidirectional Decode stream: pipelining, per-request errors, and merging of concurrent requests.</summary>
public sealed class DecodeStreamTests
{
    private static async Task<ulong[]> CreateSequencesAsync(FlashMlaClient client, int count, int length, int layer = 0)
    {
        var ids = new ulong[count];
        for (int i = 0; i < count; i++)
        {
            ids[i] = await client.CreateSequenceAsync();
            await client.AppendKvAsync(ids[i], layer, Random16.Bf16(new Random(i), length * 576));
        }
        return ids;
    }

    private static DecodeInput Step(ulong[] ids, int layer, int seed, int hQ = 4) =>
        new(layer, ids, 1, hQ, Random16.Bf16(new Random(seed), ids.Length * hQ * 576), Random16.Bf16(new Random(seed + 1), ids.Length * 576));

    [Fact]
    public async Task A_failed_request_gets_its_own_error_and_the_stream_goes_on()
    {
        await using var server = await TestServer.StartAsync();
        var ids = await CreateSequencesAsync(server.Client, 2, 10);
        await using var stream = server.Client.OpenDecodeStream();

        var bad = stream.DecodeAsync(Step([ids[0], 777], 0, 1));
        var good = stream.DecodeAsync(Step(ids, 0, 3));
        var error = await Assert.ThrowsAsync<RpcException>(() => bad);
        Assert.Equal(StatusCode.NotFound, error.StatusCode);
        var output = await good;
        Assert.Equal(2 * 4 * 512, output.Out.Length);
        var after = await stream.DecodeAsync(Step(ids, 0, 5));
        Assert.Equal(2 * 4, after.Lse.Length);
        Assert.Equal([12u, 0u], (await server.Client.GetSequenceAsync(ids[0])).LayerLengths);
    }

    [Fact]
    public async Task Pipelined_steps_of_one_sequence_apply_in_order()
    {
        await using var server = await TestServer.StartAsync();
        var ids = await CreateSequencesAsync(server.Client, 1, 5);
        await using var stream = server.Client.OpenDecodeStream();
        var steps = Enumerable.Range(0, 8).Select(i => Step(ids, 0, 100 + 2 * i)).ToArray();
        var results = await Task.WhenAll(steps.Select(s => stream.DecodeAsync(s)));
        Assert.Equal(8, results.Length);
        var rows = await server.Client.ReadKvAsync(ids[0], 0);
        Assert.Equal(13, rows.Length / 576);
        for (int i = 0; i < 8; i++)
            Assert.Equal(steps[i].NewKv.ToArray(), rows.AsSpan((5 + i) * 576, 576).ToArray());
    }

    [Fact]
    public async Task Concurrent_streams_of_one_layer_are_merged_into_one_backend_call()
    {
        // A long window so that requests from four clients arriving together surely share a batch.
        await using var server = await TestServer.StartAsync(("BatchWindowMicroseconds", 50_000));
        var clients = Enumerable.Range(0, 4).Select(_ => new FlashMlaClient(server.GrpcAddress)).ToArray();
        try
        {
            var perClient = new ulong[4][];
            for (int c = 0; c < 4; c++) perClient[c] = await CreateSequencesAsync(server.Client, 2, 30 + c);
            var before = await server.Client.GetStatsAsync();

            var streams = clients.Select(c => c.OpenDecodeStream()).ToArray();
            var outputs = await Task.WhenAll(Enumerable.Range(0, 4).Select(c => streams[c].DecodeAsync(Step(perClient[c], 0, 10 * c))));
            foreach (var s in streams) await s.DisposeAsync();

            var after = await server.Client.GetStatsAsync();
            Assert.Equal(before.DecodeRequests + 4, after.DecodeRequests);
            Assert.True(after.DecodeBatches - before.DecodeBatches < 4, $"4 requests ran in {after.DecodeBatches - before.DecodeBatches} batches");
            Assert.Contains(outputs, o => o.Timings.BatchRequests > 1);
            Assert.Contains(outputs, o => o.Timings.BatchSequences > 2);
        }
        finally
        {
            foreach (var c in clients) c.Dispose();
        }
    }

    [Fact]
    public async Task Merged_outputs_equal_the_outputs_of_separate_calls()
    {
        await using var merged = await TestServer.StartAsync(("BatchWindowMicroseconds", 50_000));
        await using var alone = await TestServer.StartAsync();
        var a1 = await CreateSequencesAsync(merged.Client, 3, 70);
        var a2 = await CreateSequencesAsync(alone.Client, 3, 70);
        var first = Step(a1[..2], 0, 500);
        var second = Step(a1[2..], 0, 600);

        var together = await Task.WhenAll(merged.Client.DecodeOnceAsync(first), merged.Client.DecodeOnceAsync(second));
        Assert.Equal(2u, together[0].Timings.BatchRequests);
        var one = await alone.Client.DecodeOnceAsync(first with { SequenceIds = a2[..2] });
        var two = await alone.Client.DecodeOnceAsync(second with { SequenceIds = a2[2..] });
        Assert.Equal(one.Out.ToArray(), together[0].Out.ToArray());
        Assert.Equal(two.Out.ToArray(), together[1].Out.ToArray());
        Assert.Equal(two.Lse.ToArray(), together[1].Lse.ToArray());
    }
}
