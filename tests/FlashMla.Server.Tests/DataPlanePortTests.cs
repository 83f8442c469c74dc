using System.Buffers.Binary;
using System.Net.Sockets;
using FlashMla.Client;
using FlashMla.Contracts.V1;
using FlashMla.Server.Hosting;
using Grpc.Core;
using Grpc.Net.Client;
using Xunit.Abstractions;

namespace FlashMla.Server.Tests;

/// <summary>
/// The data-plane port (DataPlanePort): flashmla.v1.Decoder served by the service's own HTTP/2 listener.
/// Everything is checked against the same server's Kestrel port, with both client transports (the library's
/// LargeFrameHttp2Handler and .NET's SocketsHttpHandler, which speaks 16 KiB frames and small windows).
/// </summary>
[Collection(DataPlaneCollection.Name)]
public sealed class DataPlanePortTests(ITestOutputHelper output)
{
    private static async Task<ulong[]> CreateSequencesAsync(FlashMlaClient client, int count, int length, int seed = 0)
    {
        var ids = new ulong[count];
        for (int i = 0; i < count; i++)
        {
            ids[i] = await client.CreateSequenceAsync();
            await client.AppendKvAsync(ids[i], 0, Random16.Bf16(new Random(seed + i), length * 576));
        }
        return ids;
    }

    /// <summary>The client's three decode paths: direct over the large-frame handler, and Grpc.Net.Client over either transport.</summary>
    public enum ClientPath
    {
        Direct,
        GrpcLargeFrames,
        GrpcSockets,
    }

    private static FlashMlaClient DataPlaneClient(TestServer server, ClientPath path, int connections = 1) =>
        new(server.GrpcAddress, new FlashMlaClientOptions
        {
            DecodeAddress = server.DataPlaneAddress,
            Transport = path == ClientPath.GrpcSockets ? ClientTransport.SocketsHttpHandler : ClientTransport.LargeFrames,
            DirectDecode = path == ClientPath.Direct,
            Connections = connections,
        });

    public static TheoryData<ClientPath> Transports => [ClientPath.Direct, ClientPath.GrpcLargeFrames, ClientPath.GrpcSockets];

    [Theory]
    [MemberData(nameof(Transports))]
    public async Task Decode_on_the_data_plane_port_is_bit_equal_to_the_grpc_port(ClientPath transport)
    {
        await using var server = await TestServer.StartAsync(("TotalBlocks", 256));
        Assert.NotNull(server.DataPlaneAddress);
        using var fast = DataPlaneClient(server, transport);
        var ids = await CreateSequencesAsync(server.Client, 8, 70);
        // h_q 128, b 8: 1.2 MB of q and 1 MB of out per step, many frames each way and past SocketsHttpHandler's first windows.
        var inputs = Enumerable.Range(0, 6).Select(k => new DecodeInput(0, ids, 1, k % 2 == 0 ? 128 : 5,
            Random16.Bf16(new Random(10 + k), ids.Length * (k % 2 == 0 ? 128 : 5) * 576))).ToArray();

        var expected = new List<DecodeOutput>();
        foreach (var input in inputs) expected.Add(await server.Client.DecodeOnceAsync(input));

        using (var once = await fast.DecodeOnceAsync(inputs[0]))
        {
            Assert.Equal(expected[0].Out.ToArray(), once.Out.ToArray());
            Assert.Equal(expected[0].Lse.ToArray(), once.Lse.ToArray());
        }
        await using (var stream = fast.OpenDecodeStream())
        {
            // All six in flight on one stream at once.
            var results = await Task.WhenAll(inputs.Select(input => stream.DecodeAsync(input)));
            for (int k = 0; k < inputs.Length; k++)
            {
                Assert.Equal(expected[k].Out.ToArray(), results[k].Out.ToArray());
                Assert.Equal(expected[k].Lse.ToArray(), results[k].Lse.ToArray());
                results[k].Dispose();
            }
        }
        foreach (var e in expected) e.Dispose();
    }

    [Fact]
    public async Task Appended_rows_through_the_data_plane_land_in_the_cache()
    {
        await using var server = await TestServer.StartAsync();
        using var fast = DataPlaneClient(server, ClientPath.Direct);
        var ids = await CreateSequencesAsync(server.Client, 2, 10);
        var kv = Random16.Bf16(new Random(3), 2 * 2 * 576);
        using var result = await fast.DecodeOnceAsync(new DecodeInput(0, ids, 2, 4, Random16.Bf16(new Random(4), 2 * 2 * 4 * 576), kv));
        Assert.Equal(2 * 2 * 4 * 512, result.Out.Length);
        var rows = await server.Client.ReadKvAsync(ids[1], 0);
        Assert.Equal(kv.AsSpan(2 * 576, 2 * 576).ToArray(), rows.AsSpan(10 * 576, 2 * 576).ToArray());
    }

    [Theory]
    [MemberData(nameof(Transports))]
    public async Task Bad_requests_get_the_grpc_ports_status_codes_and_a_stream_goes_on(ClientPath transport)
    {
        await using var server = await TestServer.StartAsync();
        using var fast = DataPlaneClient(server, transport);
        var ids = await CreateSequencesAsync(server.Client, 2, 10);

        var unknown = await Assert.ThrowsAsync<RpcException>(() => fast.DecodeOnceAsync(
            new DecodeInput(0, [ids[0], 999], 1, 4, Random16.Bf16(new Random(1), 2 * 4 * 576))));
        Assert.Equal(StatusCode.NotFound, unknown.StatusCode);
        var badShape = await Assert.ThrowsAsync<RpcException>(() => fast.DecodeOnceAsync(
            new DecodeInput(0, ids, 1, 4, Random16.Bf16(new Random(1), 2 * 4 * 576 - 1))));
        Assert.Equal(StatusCode.InvalidArgument, badShape.StatusCode);
        Assert.Contains("q", badShape.Status.Detail);

        await using var stream = fast.OpenDecodeStream();
        var bad = stream.DecodeAsync(new DecodeInput(7, ids, 1, 4, Random16.Bf16(new Random(1), 2 * 4 * 576)));
        var good = stream.DecodeAsync(new DecodeInput(0, ids, 1, 4, Random16.Bf16(new Random(2), 2 * 4 * 576)));
        Assert.Equal(StatusCode.InvalidArgument, (await Assert.ThrowsAsync<RpcException>(() => bad)).StatusCode);
        using var ok = await good;
        Assert.Equal(2 * 4 * 512, ok.Out.Length);
        Assert.Equal([10u, 0u], (await server.Client.GetSequenceAsync(ids[0])).LayerLengths); // nothing appended by either
    }

    [Fact]
    public async Task Other_services_on_the_data_plane_port_are_unimplemented_and_say_where_to_go()
    {
        await using var server = await TestServer.StartAsync();
        using var channel = GrpcChannel.ForAddress(server.DataPlaneAddress!);
        var cache = new KvCache.KvCacheClient(channel);
        var error = await Assert.ThrowsAsync<RpcException>(async () => await cache.CreateSequenceAsync(new CreateSequenceRequest()));
        Assert.Equal(StatusCode.Unimplemented, error.StatusCode);
        Assert.Contains("gRPC port", error.Status.Detail);
        Assert.Equal(0u, (await server.Client.GetStatsAsync()).Sequences);
    }

    [Fact]
    public async Task A_message_over_the_size_limit_is_refused_with_resource_exhausted()
    {
        await using var server = await TestServer.StartAsync(("MaxMessageBytes", 1024 * 1024));
        using var fast = DataPlaneClient(server, ClientPath.Direct);
        var ids = await CreateSequencesAsync(server.Client, 8, 10);
        var error = await Assert.ThrowsAsync<RpcException>(() => fast.DecodeOnceAsync(
            new DecodeInput(0, ids, 1, 128, Random16.Bf16(new Random(1), 8 * 128 * 576))));
        Assert.Equal(StatusCode.ResourceExhausted, error.StatusCode);
        // The connection is still good.
        using var small = await fast.DecodeOnceAsync(new DecodeInput(0, ids, 1, 2, Random16.Bf16(new Random(2), 8 * 2 * 576)));
        Assert.Equal(8 * 2 * 512, small.Out.Length);
    }

    // Not GrpcLargeFrames: Grpc.Net.Client over LargeFrameHttp2Handler reports this refusal as UNAVAILABLE (the handler
    // resets the stream when the request body throws, and the original status is lost), a defect of that older path.
    [Theory]
    [InlineData(ClientPath.Direct)]
    [InlineData(ClientPath.GrpcSockets)]
    public async Task The_client_refuses_to_send_a_message_over_its_own_size_limit(ClientPath path)
    {
        await using var server = await TestServer.StartAsync();
        var ids = await CreateSequencesAsync(server.Client, 8, 10);
        using var limited = new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions
        {
            DecodeAddress = server.DataPlaneAddress,
            Transport = path == ClientPath.GrpcSockets ? ClientTransport.SocketsHttpHandler : ClientTransport.LargeFrames,
            DirectDecode = path == ClientPath.Direct,
            MaxMessageBytes = 300_000,
        });
        // q of 8 x 64 x 576 bf16 = 590 KB. (A response is always smaller than its request, so only this way can be tested.)
        var up = await Assert.ThrowsAsync<RpcException>(() => limited.DecodeOnceAsync(new DecodeInput(0, ids, 1, 64, Random16.Bf16(new Random(1), 8 * 64 * 576))));
        Assert.Equal(StatusCode.ResourceExhausted, up.StatusCode);
        using var fits = await limited.DecodeOnceAsync(new DecodeInput(0, ids, 1, 16, Random16.Bf16(new Random(3), 8 * 16 * 576)));
        Assert.Equal(8 * 16 * 512, fits.Out.Length);
    }

    [Fact]
    public async Task A_deadline_ends_an_idle_stream_with_deadline_exceeded()
    {
        await using var server = await TestServer.StartAsync();
        using var channel = GrpcChannel.ForAddress(server.DataPlaneAddress!);
        var decoder = new Decoder.DecoderClient(channel);
        using var call = decoder.Decode(deadline: DateTime.UtcNow.AddMilliseconds(300));
        var error = await Assert.ThrowsAsync<RpcException>(() => call.ResponseStream.MoveNext());
        Assert.Equal(StatusCode.DeadlineExceeded, error.StatusCode);
    }

    [Fact]
    public async Task Generated_stubs_over_SocketsHttpHandler_work_on_the_data_plane_port()
    {
        await using var server = await TestServer.StartAsync();
        var ids = await CreateSequencesAsync(server.Client, 2, 30);
        using var channel = GrpcChannel.ForAddress(server.DataPlaneAddress!);
        var decoder = new Decoder.DecoderClient(channel);
        var input = new DecodeInput(0, ids, 1, 3, Random16.Bf16(new Random(6), 2 * 3 * 576));
        using var expected = await server.Client.DecodeOnceAsync(input);

        using var call = decoder.Decode();
        await call.RequestStream.WriteAsync(input.ToRequest(41));
        await call.RequestStream.WriteAsync(input.ToRequest(42));
        await call.RequestStream.CompleteAsync();
        var ids2 = new List<ulong>();
        while (await call.ResponseStream.MoveNext())
        {
            var response = call.ResponseStream.Current;
            ids2.Add(response.RequestId);
            Assert.Equal(System.Runtime.InteropServices.MemoryMarshal.AsBytes(expected.Out).ToArray(), response.Out.Data.ToByteArray());
            Assert.Equal(new long[] { 2, 1, 3, 512 }, response.Out.Shape);
            Assert.Equal(new long[] { 2, 3, 1 }, response.Lse.Shape);
        }
        Assert.Equal([41ul, 42ul], ids2.Order());
        Assert.Equal(StatusCode.OK, call.GetStatus().StatusCode);
    }

    [Fact]
    public async Task Bytes_allocated_per_step_through_the_data_plane_do_not_grow_with_the_tensors()
    {
        await using var server = await TestServer.StartAsync(("TotalBlocks", 64), ("CpuThreads", 1));
        using var fast = DataPlaneClient(server, ClientPath.Direct);
        var groups = new[] { await CreateSequencesAsync(server.Client, 8, 20), await CreateSequencesAsync(server.Client, 8, 20, seed: 8) };
        var (small, large, growth) = await DataPlaneTests.AllocationGrowthAsync(fast, groups, steps: 40);
        output.WriteLine($"data plane, b=8, 2 in flight: h_q=16 {small:F0} B/step; h_q=128 {large:F0} B/step; growth {growth:P2} of the extra tensor bytes");
        // Neither side copies a tensor into a fresh array, and the frames are large: what grows is a few small
        // objects per 1 MiB frame at most.
        Assert.True(growth < 0.02, $"h_q=16: {small:F0} B/step, h_q=128: {large:F0} B/step, growth {growth:P2}");
    }

    [Fact]
    public async Task Shutdown_ends_an_open_stream_with_unavailable_after_answering_what_was_in_flight()
    {
        var server = await TestServer.StartAsync(("DrainTimeoutSeconds", 5));
        try
        {
            using var fast = DataPlaneClient(server, ClientPath.Direct);
            var ids = await CreateSequencesAsync(server.Client, 2, 10);
            await using var stream = fast.OpenDecodeStream();
            using (var first = await stream.DecodeAsync(new DecodeInput(0, ids, 1, 4, Random16.Bf16(new Random(1), 2 * 4 * 576))))
                Assert.Equal(2 * 4 * 512, first.Out.Length);
            var stopping = server.StopAsync();
            var error = await Assert.ThrowsAnyAsync<Exception>(async () =>
            {
                for (int i = 0; i < 100; i++)
                {
                    using var _ = await stream.DecodeAsync(new DecodeInput(0, ids, 1, 4, Random16.Bf16(new Random(2), 2 * 4 * 576)));
                    await Task.Delay(20);
                }
            });
            var rpc = Assert.IsType<RpcException>(error);
            Assert.Equal(StatusCode.Unavailable, rpc.StatusCode);
            await stopping.WaitAsync(TimeSpan.FromSeconds(10));
        }
        finally
        {
            await server.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_client_that_does_not_speak_http2_gets_goaway_and_a_closed_socket()
    {
        await using var server = await TestServer.StartAsync();
        var uri = new Uri(server.DataPlaneAddress!);
        using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync("127.0.0.1", uri.Port);
        await socket.SendAsync("GET / HTTP/1.1\r\nHost: x\r\n\r\n"u8.ToArray());
        var received = new List<byte>();
        var buffer = new byte[4096];
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        int n;
        while ((n = await socket.ReceiveAsync(buffer, SocketFlags.None, timeout.Token)) > 0) received.AddRange(buffer.AsSpan(0, n).ToArray());
        // The server's SETTINGS may come first; the last frame is GOAWAY with PROTOCOL_ERROR.
        var bytes = received.ToArray();
        Assert.True(bytes.Length >= 17, $"got {bytes.Length} bytes");
        var last = bytes.AsSpan(bytes.Length - 17);
        Assert.Equal(7, last[3]); // GOAWAY
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32BigEndian(last[13..])); // PROTOCOL_ERROR
        using var fast = DataPlaneClient(server, ClientPath.Direct);
        var ids = await CreateSequencesAsync(server.Client, 1, 3);
        using var ok = await fast.DecodeOnceAsync(new DecodeInput(0, ids, 1, 1, Random16.Bf16(new Random(1), 576)));
        Assert.Single(ok.Lse.ToArray());
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task The_direct_client_carries_deadlines_to_either_port(bool dataPlane)
    {
        await using var server = await TestServer.StartAsync();
        var address = new Uri(dataPlane ? server.DataPlaneAddress! : server.GrpcAddress);
        using var invoker = new FlashMla.Client.Direct.DirectDecodeInvoker(
            new HttpMessageInvoker(new FlashMla.Client.Transport.LargeFrameHttp2Handler()), address, System.Buffers.ArrayPool<byte>.Shared, 1 << 26);
        var methods = new FlashMla.Contracts.Wire.DecodeMarshallers(System.Buffers.ArrayPool<byte>.Shared);
        using var call = invoker.AsyncDuplexStreamingCall(methods.Decode, null, new CallOptions(deadline: DateTime.UtcNow.AddMilliseconds(300)));
        var error = await Assert.ThrowsAsync<RpcException>(() => call.ResponseStream.MoveNext());
        Assert.Equal(StatusCode.DeadlineExceeded, error.StatusCode);
    }

    [Fact]
    public async Task A_cancelled_direct_call_ends_with_cancelled_and_the_client_goes_on()
    {
        await using var server = await TestServer.StartAsync();
        using var fast = DataPlaneClient(server, ClientPath.Direct);
        var ids = await CreateSequencesAsync(server.Client, 2, 10);
        var input = new DecodeInput(0, ids, 1, 4, Random16.Bf16(new Random(1), 2 * 4 * 576));
        using var cancelled = new CancellationTokenSource();
        cancelled.Cancel();
        var error = await Assert.ThrowsAsync<RpcException>(() => fast.DecodeOnceAsync(input, cancelled.Token));
        Assert.Equal(StatusCode.Cancelled, error.StatusCode);
        using var ok = await fast.DecodeOnceAsync(input);
        Assert.Equal(2 * 4 * 512, ok.Out.Length);
    }

    [Theory]
    [InlineData(0.0005)]
    [InlineData(0.3)]
    [InlineData(42.0)]
    [InlineData(7200.0)]
    [InlineData(1e9)]
    public void Grpc_timeouts_written_by_the_client_read_back_on_the_server_no_shorter(double seconds)
    {
        var timeout = TimeSpan.FromSeconds(seconds);
        string text = FlashMla.Client.Direct.DirectDecodeCall.FormatTimeout(timeout);
        Assert.InRange(text.Length, 2, 9);
        var parsed = FlashMla.Server.DataPlane.GrpcWireHeaders.ParseTimeout(text);
        Assert.True(parsed >= timeout || text == "99999999H", $"{seconds} s -> {text} -> {parsed}");
        Assert.True(parsed - timeout < TimeSpan.FromSeconds(Math.Max(1e-6, seconds * 1e-6) + 3600) , $"{text}");
    }

    [Theory]
    [InlineData("")]
    [InlineData("5")]
    [InlineData("123456789S")]
    [InlineData("10x")]
    [InlineData("-1S")]
    public void Malformed_grpc_timeouts_are_refused(string text) =>
        Assert.Equal(StatusCode.Internal, Assert.Throws<RpcException>(() => FlashMla.Server.DataPlane.GrpcWireHeaders.ParseTimeout(text)).StatusCode);

    [Fact]
    public async Task A_cluster_given_the_data_plane_port_decodes_there_and_its_metrics_count_the_calls()
    {
        await using var server = await TestServer.StartAsync();
        int port = new Uri(server.DataPlaneAddress!).Port;
        using var cluster = new FlashMla.Client.Routing.FlashMlaCluster([server.GrpcAddress], decodePort: port);
        Assert.Equal(server.DataPlaneAddress, FlashMla.Client.Routing.FlashMlaCluster.DataPlaneAddress(server.GrpcAddress, port));
        var sequences = new List<FlashMla.Client.Routing.RoutedSequence>();
        for (int i = 0; i < 2; i++)
        {
            var sequence = await cluster.CreateSequenceAsync($"conversation-{i}"); // cache calls on the gRPC port
            await cluster.AppendKvAsync(sequence, 0, Random16.Bf16(new Random(i), 10 * 576));
            sequences.Add(sequence);
        }
        for (int i = 0; i < 3; i++)
        {
            var (output, _) = await cluster.DecodeAsync(0, sequences, 1, 2, Random16.Bf16(new Random(i), 2 * 2 * 576));
            Assert.Equal(2 * 2 * 512, output.Length);
        }
        var stranger = sequences[0] with { Id = 4242 };
        await Assert.ThrowsAsync<RpcException>(() => cluster.DecodeAsync(0, [sequences[0], stranger], 1, 2, Random16.Bf16(new Random(9), 2 * 2 * 576)));

        using var http = new HttpClient();
        string text = await http.GetStringAsync(server.MetricsAddress + "/metrics");
        Assert.Matches(@"flashmla_dataplane_calls_total\{[^}]*code=""OK""[^}]*method=""/flashmla.v1.Decoder/DecodeOnce""[^}]*\} 3", text);
        Assert.Matches(@"flashmla_dataplane_calls_total\{[^}]*code=""NotFound""[^}]*\} 1", text);
        Assert.Matches(@"flashmla_dataplane_connections(_ratio)?(\{[^}]*\})? 1", text);

        Assert.Throws<ArgumentOutOfRangeException>(() => new FlashMla.Client.Routing.FlashMlaCluster([server.GrpcAddress], decodePort: 0));
        Assert.Throws<ArgumentException>(() => new FlashMla.Client.Routing.FlashMlaCluster([server.GrpcAddress],
            new FlashMlaClientOptions { DecodeAddress = server.DataPlaneAddress }));
        Assert.Throws<ArgumentException>(() => new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { DecodeAddress = "50052" }));
    }

    [Fact]
    public async Task The_data_plane_port_can_be_turned_off_and_is_validated()
    {
        await using var server = await TestServer.StartAsync(("DataPlanePort", -1));
        Assert.Null(server.DataPlaneAddress);
        Assert.Contains(new FlashMlaOptions { DataPlanePort = -2 }.Validate(), p => p.Contains("DataPlanePort"));
        Assert.Contains(new FlashMlaOptions { DataPlanePort = 50051 }.Validate(), p => p.Contains("DataPlanePort"));
        Assert.Empty(new FlashMlaOptions().Validate());
    }
}
