using System.Buffers.Binary;
using FlashMla.Client;
using FlashMla.Contracts.V1;
using FlashMla.Core.Memory;
using FlashMla.Http2;
using Grpc.Core;
using Microsoft.Extensions.DependencyInjection;

namespace FlashMla.Server.Tests;

/// <summary>
/// What a client, or a thousand, can make the server hold (issue 13, items 2 and 3): the budget of request and
/// response tensor bytes on both ports, the idle bytes the pool keeps afterwards, and the streams one connection may open.
/// Each test reads the server's own pool (<see cref="PinnedTensorPool.HeldBytes"/>, <see cref="PinnedTensorPool.PeakHeldBytes"/>).
/// </summary>
[Collection(DataPlaneCollection.Name)] // heavy on the data plane: not beside the other data-plane tests
public sealed class MemoryBudgetTests
{
    // A minute: a 2-core CI machine running every test project at once takes more than 20 s to refuse 1000 calls.
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(60);

    public static TheoryData<string> Ports => ["grpc", "dataplane"];

    private static string Address(TestServer server, string port) => port == "grpc" ? server.GrpcAddress : server.DataPlaneAddress!;

    [Fact]
    public async Task Declared_lengths_a_client_never_sends_reserve_no_more_than_the_budget_and_all_of_it_comes_back()
    {
        const int streams = 64, declared = 64 << 20, budgetMiB = 128, retainedMiB = 32;
        await using var server = await TestServer.StartAsync(("MaxMessageBytes", declared), ("TensorBudgetMiB", budgetMiB),
            ("TensorPoolRetainedMiB", retainedMiB));
        var pool = server.Services.GetRequiredService<PinnedTensorPool>();
        var client = await RawHttp2Client.ConnectAsync(server.DataPlaneAddress!);
        // Every stream declares a 64 MiB message and sends its first 64 KB, then nothing.
        var start = new byte[64 * 1024];
        BinaryPrimitives.WriteUInt32BigEndian(start.AsSpan(1), declared);
        for (int i = 0; i < streams; i++)
        {
            int id = 2 * i + 1;
            await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, id, RawHttp2Client.RequestHeaders("/flashmla.v1.Decoder/DecodeOnce"));
            await client.SendMessageAsync(id, start, endStream: false);
        }

        // What the budget holds is received into; every other call is refused at once (trailers need no window).
        int admitted = (budgetMiB << 20) / declared;
        var ends = await client.ReadEndsAsync(streams - admitted);
        Assert.All(ends.Values, status => Assert.Equal(((int)StatusCode.ResourceExhausted).ToString(), status));
        Assert.Equal((long)admitted * declared, pool.HeldBytes);
        Assert.True(pool.PeakHeldBytes <= (long)budgetMiB << 20, $"peak {pool.PeakHeldBytes} bytes held, budget {budgetMiB} MiB");

        await client.DisposeAsync();
        await WaitUntilAsync(() => pool.HeldBytes == 0, () => $"{pool.HeldBytes} bytes still held after the connection closed");
        Assert.True(pool.IdleBytes <= (long)retainedMiB << 20, $"the pool keeps {pool.IdleBytes} idle bytes, {retainedMiB} MiB allowed");
    }

    [Theory]
    [MemberData(nameof(Ports))]
    public async Task A_thousand_concurrent_unary_decodes_are_not_all_held_the_excess_is_refused_with_resource_exhausted(string port)
    {
        const int calls = 1000, budgetMiB = 1;
        using var gate = new ManualResetEventSlim();
        // No decode finishes until the gate opens (a minute at most).
        await using var server = await HookedBackend.StartServerAsync(before: _ => gate.Wait(TimeSpan.FromMinutes(1)), after: null,
            "test: decodes wait for the gate", ("QueueCapacity", 8), ("MaxMessageBytes", 1 << 20), ("TensorBudgetMiB", budgetMiB));
        var pool = server.Services.GetRequiredService<PinnedTensorPool>();
        ulong id = await server.Client.CreateSequenceAsync();
        await server.Client.AppendKvAsync(id, 0, Random16.Bf16(new Random(1), 10 * 576));
        using var client = port == "grpc" ? null : new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { DecodeAddress = server.DataPlaneAddress });
        var decoder = client ?? server.Client;
        var input = new DecodeInput(0, [id], 1, 16, Random16.Bf16(new Random(2), 16 * 576)); // 18 KB of q: a 32 KiB buffer

        int refused = 0;
        var runs = Enumerable.Range(0, calls).Select(async _ =>
        {
            try
            {
                using var output = await decoder.DecodeOnceAsync(input);
                return StatusCode.OK;
            }
            catch (RpcException ex)
            {
                if (ex.StatusCode == StatusCode.ResourceExhausted) Interlocked.Increment(ref refused);
                return ex.StatusCode;
            }
        }).ToArray();
        // With no decode finishing, the budget holds at most 32 requests' buffers: every other call is refused while they wait.
        int mostAdmitted = (budgetMiB << 20) / (32 << 10);
        await WaitUntilAsync(() => Volatile.Read(ref refused) >= calls - mostAdmitted, () => $"{refused} of {calls} refused");
        gate.Set();
        var codes = await Task.WhenAll(runs);

        int served = codes.Count(c => c == StatusCode.OK);
        Assert.Equal(calls, served + codes.Count(c => c == StatusCode.ResourceExhausted));
        Assert.InRange(served, 1, mostAdmitted);
        // Admission keeps what is held within the budget; the outputs of admitted requests (never refused) come on top.
        Assert.True(pool.PeakHeldBytes <= 2L * (budgetMiB << 20), $"peak {pool.PeakHeldBytes} bytes held, budget {budgetMiB} MiB");
        await WaitUntilAsync(() => pool.HeldBytes == 0, () => $"{pool.HeldBytes} bytes still held after every call ended");
    }

    [Theory]
    [MemberData(nameof(Ports))]
    public async Task A_client_that_never_reads_responses_cannot_make_the_server_hold_past_its_budget(string port)
    {
        const int streams = 4, requestsPerStream = 150, budgetMiB = 1;
        await using var server = await TestServer.StartAsync(("MaxMessageBytes", 1 << 20), ("TensorBudgetMiB", budgetMiB));
        var pool = server.Services.GetRequiredService<PinnedTensorPool>();
        var ids = await RawHttp2Client.SequencesAsync(server, 1, 10);
        // A window of 0: the server may send headers, never a byte of a response message.
        var client = await RawHttp2Client.ConnectAsync(Address(server, port), [(Http2Setting.InitialWindowSize, 0u)]);
        for (int s = 0; s < streams; s++)
            await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, 2 * s + 1, RawHttp2Client.RequestHeaders("/flashmla.v1.Decoder/Decode"));
        for (int r = 0; r < requestsPerStream; r++)
            for (int s = 0; s < streams; s++)
                await client.SendMessageAsync(2 * s + 1, RawHttp2Client.GrpcMessage(ids, 16, (ulong)r), endStream: false);

        // 600 requests of 32 KiB buffers, and their responses, would be 19 MB held; the budget is 1 MiB.
        await WaitUntilAsync(() => pool.PeakHeldBytes >= (budgetMiB << 20) / 2, () => $"peak {pool.PeakHeldBytes}: the requests never arrived");
        // Streams refused for the budget end with RESOURCE_EXHAUSTED, and what they had not sent is let go; a stream
        // whose response is stuck behind the window keeps only what it held within the budget.
        await Task.Delay(500);
        Assert.True(pool.PeakHeldBytes <= 2L * (budgetMiB << 20), $"peak {pool.PeakHeldBytes} bytes held, budget {budgetMiB} MiB");

        await client.DisposeAsync();
        await WaitUntilAsync(() => pool.HeldBytes == 0, () => $"{pool.HeldBytes} bytes still held after the connection closed");
    }

    [Theory]
    [MemberData(nameof(Ports))]
    public async Task Streams_past_max_streams_per_connection_are_refused_and_the_limit_is_advertised(string port)
    {
        const int limit = 5;
        await using var server = await TestServer.StartAsync(("MaxStreamsPerConnection", limit));
        await using var client = await RawHttp2Client.ConnectAsync(Address(server, port));
        var settings = await client.ReadUntilAsync(h => h.Type == Http2FrameType.Settings && !h.Has(Http2FrameFlags.Ack));
        Assert.Equal((uint)limit, SettingOf(settings!.Value.Payload, Http2Setting.MaxConcurrentStreams));
        await client.SendAsync(Http2FrameType.Settings, Http2FrameFlags.Ack, 0, []);
        // Open calls (no END_STREAM): the one past the limit is refused.
        for (int i = 0; i <= limit; i++)
            await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, 2 * i + 1, RawHttp2Client.RequestHeaders("/flashmla.v1.Decoder/Decode"));
        var reset = await client.ReadUntilAsync(h => h.Type == Http2FrameType.RstStream);
        Assert.Equal(2 * limit + 1, reset!.Value.Header.StreamId);
        Assert.Equal((uint)Http2ErrorCode.RefusedStream, BinaryPrimitives.ReadUInt32BigEndian(reset.Value.Payload));
    }

    private static uint? SettingOf(byte[] payload, Http2Setting setting)
    {
        for (int i = 0; i + 6 <= payload.Length; i += 6)
            if (BinaryPrimitives.ReadUInt16BigEndian(payload.AsSpan(i)) == (ushort)setting) return BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(i + 2));
        return null;
    }

    private static async Task WaitUntilAsync(Func<bool> condition, Func<string> failure)
    {
        var until = DateTime.UtcNow + Patience;
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < until, failure());
            await Task.Delay(20);
        }
    }
}
