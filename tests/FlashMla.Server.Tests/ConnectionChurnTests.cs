using FlashMla.Client;
using FlashMla.Core.Memory;
using FlashMla.Http2;
using FlashMla.Server.DataPlane;
using Microsoft.Extensions.DependencyInjection;
using Xunit.Abstractions;

namespace FlashMla.Server.Tests;

/// <summary>
/// Connect, call, close, many times over, on the data-plane port, cleanly and abruptly: what the server holds
/// afterwards (open connections, their I/O buffers, the tensor arrays, the managed heap) is what it held before.
/// </summary>
// Alone (the non-parallel data-plane collection): the live heap it compares is the whole test process's.
[Collection(DataPlaneCollection.Name)]
public sealed class ConnectionChurnTests(ITestOutputHelper output)
{
    [Fact]
    public async Task Connection_churn_leaves_the_server_holding_what_it_held_before()
    {
        await using var server = await TestServer.StartAsync(("TotalBlocks", 64));
        var listener = server.Services.GetRequiredService<DataPlaneListener>();
        var tensors = server.Services.GetRequiredService<PinnedTensorPool>();
        var ids = await RawHttp2Client.SequencesAsync(server, 2, 64);
        var q = Random16.Bf16(new Random(1), 2 * 16 * 576);

        await ChurnAsync(server, ids, q, cycles: 200);
        await WaitUntilClosedAsync(listener);
        long heapBefore = LiveHeap();
        int tensorArraysBefore = tensors.OwnedArrays;

        await ChurnAsync(server, ids, q, cycles: 400);
        await WaitUntilClosedAsync(listener);
        long heapAfter = LiveHeap();
        output.WriteLine($"live heap {heapBefore >> 10} KiB -> {heapAfter >> 10} KiB; tensor arrays {tensorArraysBefore} -> {tensors.OwnedArrays}; " +
            $"I/O buffers kept {listener.IoBuffers.RetainedBytes >> 10} KiB (cap {listener.IoBuffers.MaxRetainedBytes >> 10} KiB)");

        Assert.Equal(0, listener.OpenConnections);
        Assert.Equal(0, listener.IoBuffers.Outstanding); // every closed connection gave its reader and writer buffers back
        Assert.InRange(listener.IoBuffers.RetainedBytes, 0, listener.IoBuffers.MaxRetainedBytes);
        // Half-received messages of reset connections went back too: the pool made no array per cycle, at most one
        // more per concurrent client at a new peak.
        Assert.InRange(tensors.OwnedArrays, 0, tensorArraysBefore + Workers);
        // 400 connections' worth of state (their buffers alone are 100 KiB each) would show; a few KiB of caches may not.
        Assert.True(heapAfter - heapBefore < 4 << 20, $"the live heap grew by {(heapAfter - heapBefore) >> 10} KiB over 400 connections");
    }

    private const int Workers = 4;

    /// <summary>Per cycle, a client that connects, decodes and disposes, and a raw one that breaks off inside a request message.</summary>
    private static async Task ChurnAsync(TestServer server, ulong[] ids, ushort[] q, int cycles)
    {
        var message = RawHttp2Client.GrpcMessage(ids, 16, 1);
        await Task.WhenAll(Enumerable.Range(0, Workers).Select(_ => Task.Run(async () =>
        {
            for (int i = 0; i < cycles / Workers; i++)
            {
                using (var client = new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { DecodeAddress = server.DataPlaneAddress, DirectDecode = true }))
                using (var output = await client.DecodeOnceAsync(new DecodeInput(0, ids, 1, 16, q)))
                    Assert.Equal(2 * 16, output.Lse.Length);
                await using var raw = await RawHttp2Client.ConnectAsync(server.DataPlaneAddress!);
                await raw.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, 1, RawHttp2Client.RequestHeaders("/flashmla.v1.Decoder/Decode"));
                await raw.SendMessageAsync(1, message[..(message.Length / 2)], endStream: false);
            }
        })));
    }

    // Up to 30 s: on a loaded 2-core CI machine the last raw connections close late; a leaked one never does.
    private static async Task WaitUntilClosedAsync(DataPlaneListener listener)
    {
        for (int i = 0; i < 1200 && (listener.OpenConnections > 0 || listener.IoBuffers.Outstanding > 0); i++) await Task.Delay(25);
    }

    private static long LiveHeap()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        return GC.GetTotalMemory(forceFullCollection: true);
    }
}
