using FlashMla.Client;
using Grpc.Core;

namespace FlashMla.Server.Tests;

/// <summary>
/// Issue 13 item 6 over a real server: a decode that holds the backend does not stall other clients' cache calls,
/// a request past MaxKvTokensPerCall is refused before it runs, and a queued request whose deadline passes is
/// answered at once and never computed.
/// </summary>
[Collection(DataPlaneCollection.Name)] // its deadline test adds to the failure counter DeadlineFailureCountTests reads
public sealed class LongDecodeIsolationTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(10);

    private static async Task<ulong[]> SequencesAsync(FlashMlaClient client, int count, int rows)
    {
        var ids = new ulong[count];
        for (int i = 0; i < count; i++)
        {
            ids[i] = await client.CreateSequenceAsync();
            await client.AppendKvAsync(ids[i], 0, Random16.Bf16(new Random(i), rows * 576));
        }
        return ids;
    }

    private static DecodeInput Step(ulong[] ids, int heads = 4) => new(0, ids, 1, heads, Random16.Bf16(new Random(7), ids.Length * heads * 576));

    [Fact]
    public async Task Cache_calls_answer_while_a_decode_holds_the_backend()
    {
        HeldBackend? backend = null;
        await using var server = await TestServer.StartAsync(HeldBackend.Install(b => backend = b));
        var client = server.Client;
        var ids = await SequencesAsync(client, 2, 16);

        var decode = client.DecodeOnceAsync(Step([ids[0]]));
        await backend!.WaitForSubmittedAsync(1);

        var stats = await client.GetStatsAsync().WaitAsync(Patience);
        Assert.Equal(2u, stats.Sequences);
        ulong created = await client.CreateSequenceAsync().WaitAsync(Patience);
        await client.AppendKvAsync(created, 1, Random16.Bf16(new Random(3), 5 * 576)).WaitAsync(Patience);
        Assert.Equal(5u, (await client.GetSequenceAsync(created).WaitAsync(Patience)).LayerLengths[1]);
        Assert.Equal(16u, (await client.GetSequenceAsync(ids[0]).WaitAsync(Patience)).LayerLengths[0]);
        await client.ForkAsync(ids[1]).WaitAsync(Patience);
        await client.FreeAsync(created).WaitAsync(Patience);
        Assert.False(decode.IsCompleted);

        backend.Release();
        using var output = await decode.WaitAsync(Patience);
        Assert.Equal(4 * 512, output.Out.Length);
    }

    [Fact]
    public async Task A_decode_past_MaxKvTokensPerCall_is_refused_with_resource_exhausted_before_it_runs()
    {
        HeldBackend? backend = null;
        await using var server = await TestServer.StartAsync(HeldBackend.Install(b => backend = b),
            ("MaxSequenceLength", 64), ("MaxKvTokensPerCall", 100));
        backend!.Release();
        var ids = await SequencesAsync(server.Client, 2, 64);

        var error = await Assert.ThrowsAsync<RpcException>(() => server.Client.DecodeOnceAsync(Step(ids)).WaitAsync(Patience));
        Assert.Equal(StatusCode.ResourceExhausted, error.StatusCode);
        Assert.Contains("MaxKvTokensPerCall", error.Status.Detail);
        Assert.Equal(0, backend.Submitted);
        using var alone = await server.Client.DecodeOnceAsync(Step([ids[0]])).WaitAsync(Patience);
        Assert.Equal(1, backend.Submitted);
    }

    [Fact]
    public async Task A_queued_decode_whose_deadline_passes_is_answered_at_once_and_never_computed()
    {
        HeldBackend? backend = null;
        await using var server = await TestServer.StartAsync(HeldBackend.Install(b => backend = b), ("DecodeBatchesInFlight", 1));
        var client = server.Client;
        var ids = await SequencesAsync(client, 2, 16);

        var running = client.DecodeOnceAsync(Step([ids[0]]));
        await backend!.WaitForSubmittedAsync(1);
        var started = DateTime.UtcNow;
        var error = await Assert.ThrowsAsync<RpcException>(() =>
            client.DecodeOnceAsync(Step([ids[1]]), deadline: DateTime.UtcNow.AddMilliseconds(300)).WaitAsync(Patience));
        Assert.Equal(StatusCode.DeadlineExceeded, error.StatusCode);
        Assert.True(DateTime.UtcNow - started < TimeSpan.FromSeconds(5));
        Assert.False(running.IsCompleted);

        // The client's timer may fire a little before the server's: give the server's deadline time to pass too.
        await Task.Delay(300);
        backend.Release();
        (await running.WaitAsync(Patience)).Dispose();
        await Task.Delay(200);
        Assert.Equal(1, backend.Submitted);
        Assert.Equal(1ul, (await client.GetStatsAsync()).DecodeRequests);
    }
}
