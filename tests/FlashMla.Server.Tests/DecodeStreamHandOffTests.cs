using FlashMla.Client;
using FlashMla.Client.Transport;

namespace FlashMla.Server.Tests;

/// <summary>
/// A response's task completes on the thread that read it, so the caller's code runs there: code that blocks must stall
/// neither the next response of its own stream nor another stream's on the same connection; and a request leaves as one
/// DATA frame.
/// </summary>
public sealed class DecodeStreamHandOffTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(20);

    private static DecodeInput Step(ulong[] ids, int seed) =>
        new(0, ids, 1, 4, Random16.Bf16(new Random(seed), ids.Length * 4 * 576), Random16.Bf16(new Random(seed + 1), ids.Length * 576));

    private static async Task<ulong[]> SequencesAsync(FlashMlaClient client, int count)
    {
        var ids = new ulong[count];
        for (int i = 0; i < count; i++)
        {
            ids[i] = await client.CreateSequenceAsync();
            await client.AppendKvAsync(ids[i], 0, Random16.Bf16(new Random(i), 8 * 576));
        }
        return ids;
    }

    [Fact]
    public async Task A_caller_that_blocks_in_its_continuation_stalls_neither_its_streams_next_response_nor_another_stream()
    {
        HeldBackend backend = null!;
        await using var server = await TestServer.StartAsync(HeldBackend.Install(b => backend = b));
        using var client = new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { DecodeAddress = server.DataPlaneAddress });
        var ids = await SequencesAsync(client, 2);
        await using var own = client.OpenDecodeStream();
        await using var other = client.OpenDecodeStream(); // same client, same connection

        using var blocking = new ManualResetEventSlim();
        using var secondDone = new ManualResetEventSlim();
        using var otherDone = new ManualResetEventSlim();
        bool sawSecond = false, sawOther = false;
        var first = await own.SendAsync(Step([ids[0]], 1));
        // Held on the server, so this is registered before the response exists: it runs inline where the response's task
        // completes (the thread that read it), and blocks that thread until the stream's next response and one on the
        // other stream have both arrived.
        var blocked = first.ContinueWith(response =>
        {
            blocking.Set();
            sawSecond = secondDone.Wait(Patience);
            sawOther = otherDone.Wait(Patience);
            response.Result.Dispose();
        }, TaskContinuationOptions.ExecuteSynchronously);
        await backend.WaitForSubmittedAsync(1);
        backend.Release();
        Assert.True(await Task.Run(() => blocking.Wait(Patience)), "the first response never came");

        var second = await own.SendAsync(Step([ids[1]], 3));
        _ = second.ContinueWith(_ => secondDone.Set(), TaskContinuationOptions.ExecuteSynchronously);
        using (var answer = await other.DecodeAsync(Step([ids[1]], 5)).WaitAsync(Patience))
            Assert.Equal(4 * 512, answer.Out.Length);
        otherDone.Set();

        await blocked.WaitAsync(Patience);
        Assert.True(sawSecond, "the second response on the stream waited behind the first one's blocked caller");
        Assert.True(sawOther);
        using var output = await second;
        Assert.Equal(4 * 512, output.Out.Length);
    }

    [Fact]
    public async Task Each_request_leaves_as_one_DATA_frame()
    {
        await using var server = await TestServer.StartAsync();
        var counters = new Http2TransportCounters();
        using var client = new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { DecodeAddress = server.DataPlaneAddress, Counters = counters });
        var ids = await SequencesAsync(client, 2);
        await using var stream = client.OpenDecodeStream();
        using (await stream.DecodeAsync(Step(ids, 7))) { } // the stream's HEADERS and the connection are up
        long framesBefore = counters.DataFramesSent, bytesBefore = counters.DataBytesSent;
        for (int i = 0; i < 3; i++)
            using (await stream.DecodeAsync(Step(ids, 9 + 2 * i))) { }
        // Prefix and envelope, q, the kv envelope and kv were four frames (and four sends) per request.
        Assert.Equal(3, counters.DataFramesSent - framesBefore);
        Assert.True(counters.DataBytesSent - bytesBefore > 3 * 2 * 4 * 576 * 2, counters.ToString());
    }
}
