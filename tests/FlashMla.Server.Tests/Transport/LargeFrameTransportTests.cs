using FlashMla.Http2;
using System.Diagnostics;
using System.Net;
using FlashMla.Client;
using FlashMla.Client.Transport;
using FlashMla.Contracts.V1;
using Google.Protobuf;
using Grpc.Core;

namespace FlashMla.Server.Tests.Transport;

/// <summary>The real service (Kestrel on loopback) through <see cref="LargeFrameHttp2Handler"/>: every kind of gRPC call, errors, cancellation, shutdown.</summary>
public sealed class LargeFrameTransportTests
{
    private static FlashMlaClient LargeFrames(TestServer server, Http2TransportCounters counters, int connections = 1) =>
        new(server.GrpcAddress, new FlashMlaClientOptions { Transport = ClientTransport.LargeFrames, Counters = counters, Connections = connections });

    private static FlashMlaClient Sockets(TestServer server) =>
        new(server.GrpcAddress, new FlashMlaClientOptions { Transport = ClientTransport.SocketsHttpHandler });

    [Fact]
    public async Task Many_concurrent_unary_calls_share_one_connection()
    {
        await using var server = await TestServer.StartAsync();
        var counters = new Http2TransportCounters();
        using var client = LargeFrames(server, counters);
        var ids = await Task.WhenAll(Enumerable.Range(0, 64).Select(_ => client.CreateSequenceAsync()));
        Assert.Equal(64, ids.Distinct().Count());
        Assert.Equal(64u, (await client.GetStatsAsync()).Sequences);
        Assert.Equal(1, counters.ConnectionsOpened);
    }

    [Fact]
    public async Task Tens_of_megabytes_go_up_and_come_back_in_megabyte_frames()
    {
        await using var server = await TestServer.StartAsync(("TotalBlocks", 400));
        var counters = new Http2TransportCounters();
        using var client = LargeFrames(server, counters);
        const int rows = 20_000; // 23 MB in one message each way
        var kv = Random16.Bf16(new Random(11), rows * 576);
        ulong id = await client.CreateSequenceAsync();
        await client.AppendKvAsync(id, 0, kv, rowsPerChunk: rows);

        using var read = client.Cache.ReadKv(new ReadKvRequest { SequenceId = id, Layer = 0, RowsPerChunk = rows });
        Assert.True(await read.ResponseStream.MoveNext());
        var chunk = read.ResponseStream.Current;
        Assert.False(await read.ResponseStream.MoveNext());
        Assert.Equal(rows * 576 * 2, chunk.Kv.Data.Length);
        Assert.Equal(kv, TensorBytes.AsBf16(chunk.Kv).ToArray());

        // The point of the transport: both directions moved megabyte DATA frames, not 16 KiB ones.
        Assert.Equal(1024 * 1024, counters.LargestDataFrameSent);
        Assert.Equal(1024 * 1024, counters.LargestDataFrameReceived);
        Assert.True(counters.DataBytesReceived / counters.DataFramesReceived > 256 * 1024, counters.ToString());
        Assert.True(counters.DataBytesSent / counters.DataFramesSent > 256 * 1024, counters.ToString());
        Assert.Equal(kv, await client.ReadKvAsync(id, 0)); // the server's default chunking, many messages
    }

    [Fact]
    public async Task Pipelined_decode_outputs_are_bit_equal_to_the_SocketsHttpHandler_path()
    {
        await using var server = await TestServer.StartAsync();
        var counters = new Http2TransportCounters();
        using var large = LargeFrames(server, counters);
        using var sockets = Sockets(server);
        var ids = new ulong[8];
        for (int i = 0; i < ids.Length; i++)
        {
            ids[i] = await sockets.CreateSequenceAsync();
            await sockets.AppendKvAsync(ids[i], 0, Random16.Bf16(new Random(i), (20 + i) * 576));
        }
        // No new rows: every request reads the same cache, so the two paths must agree bit for bit.
        var inputs = Enumerable.Range(0, 6).Select(k => new DecodeInput(0, ids, 1, 128, Random16.Bf16(new Random(100 + k), ids.Length * 128 * 576))).ToArray();

        await using var viaLarge = large.OpenDecodeStream();
        await using var viaSockets = sockets.OpenDecodeStream();
        var fromLarge = await Task.WhenAll(inputs.Select(i => viaLarge.DecodeAsync(i))); // six in flight at once
        var fromSockets = await Task.WhenAll(inputs.Select(i => viaSockets.DecodeAsync(i)));
        for (int k = 0; k < inputs.Length; k++)
        {
            Assert.Equal(fromSockets[k].Out.ToArray(), fromLarge[k].Out.ToArray());
            Assert.Equal(fromSockets[k].Lse.ToArray(), fromLarge[k].Lse.ToArray());
            fromLarge[k].Dispose();
            fromSockets[k].Dispose();
        }
        Assert.True(counters.LargestDataFrameSent > 16 * 1024, counters.ToString());
    }

    [Fact]
    public async Task Refusals_arrive_as_their_status_codes_with_the_server_message_intact()
    {
        await using var server = await TestServer.StartAsync();
        using var client = LargeFrames(server, new Http2TransportCounters());
        var notFound = await Assert.ThrowsAsync<RpcException>(() => client.GetSequenceAsync(777));
        Assert.Equal(StatusCode.NotFound, notFound.StatusCode);
        Assert.Contains("777", notFound.Status.Detail);

        ulong id = await client.CreateSequenceAsync();
        var request = new DecodeRequest { Layer = 0, SQ = 1, HQ = 2, Q = TensorBytes.Bf16(new ushort[2 * 576], 1, 1, 2, 576) };
        request.SequenceIds.Add(id);
        request.Q.Dtype = DType.Fp32;
        var invalid = await Assert.ThrowsAsync<RpcException>(() => client.Decoder.DecodeOnceAsync(request).ResponseAsync);
        Assert.Equal(StatusCode.InvalidArgument, invalid.StatusCode);
        // The detail (spaces and punctuation) arrives intact through the HPACK decoder, Huffman-coded or not.
        Assert.Contains("q must be", invalid.Status.Detail);

        // The stream goes on after a per-request error, and the connection after a failed call.
        await using var stream = client.OpenDecodeStream();
        await Assert.ThrowsAsync<RpcException>(() => stream.DecodeAsync(new DecodeInput(0, [id, 999], 1, 2, new ushort[2 * 2 * 576])));
        Assert.Equal(1u, (await client.GetStatsAsync()).Sequences);
    }

    [Fact]
    public async Task Trailers_only_and_normal_responses_reach_the_HttpResponseMessage_where_gRPC_looks()
    {
        await using var server = await TestServer.StartAsync();
        using var invoker = new HttpMessageInvoker(new LargeFrameHttp2Handler());
        static HttpRequestMessage Call(string address, string method, IMessage message)
        {
            var body = new byte[5 + message.CalculateSize()];
            System.Buffers.Binary.BinaryPrimitives.WriteUInt32BigEndian(body.AsSpan(1), (uint)(body.Length - 5));
            message.WriteTo(body.AsSpan(5));
            var request = new HttpRequestMessage(HttpMethod.Post, $"{address}/flashmla.v1.KvCache/{method}")
            {
                Version = HttpVersion.Version20,
                Content = new ByteArrayContent(body),
            };
            request.Content.Headers.TryAddWithoutValidation("content-type", "application/grpc");
            request.Headers.TryAddWithoutValidation("te", "trailers");
            return request;
        }

        using var missing = await invoker.SendAsync(Call(server.GrpcAddress, "GetSequence", new GetSequenceRequest { SequenceId = 4242 }), default);
        Assert.Equal(HttpStatusCode.OK, missing.StatusCode);
        Assert.Equal("5", missing.Headers.GetValues("grpc-status").Single()); // trailers-only: status in the headers
        Assert.Empty(await missing.Content.ReadAsByteArrayAsync());
        Assert.Empty(missing.TrailingHeaders);
        Assert.Equal("application/grpc", missing.Content.Headers.ContentType?.MediaType);

        using var config = await invoker.SendAsync(Call(server.GrpcAddress, "GetConfig", new GetConfigRequest()), default);
        var bytes = await config.Content.ReadAsByteArrayAsync();
        Assert.Equal("cpu", ServiceConfig.Parser.ParseFrom(bytes.AsSpan(5)).Backend);
        Assert.False(config.Headers.Contains("grpc-status"));
        Assert.Equal("0", config.TrailingHeaders.GetValues("grpc-status").Single());
        Assert.Equal(HttpVersion.Version20, config.Version);
    }

    [Fact]
    public async Task Cancelling_a_server_stream_midway_ends_it_promptly_and_the_connection_goes_on()
    {
        await using var server = await TestServer.StartAsync(("TotalBlocks", 200));
        var counters = new Http2TransportCounters();
        using var client = LargeFrames(server, counters);
        ulong id = await client.CreateSequenceAsync();
        await client.AppendKvAsync(id, 0, Random16.Bf16(new Random(3), 10_000 * 576));

        using var cancel = new CancellationTokenSource();
        using var call = client.Cache.ReadKv(new ReadKvRequest { SequenceId = id, Layer = 0, RowsPerChunk = 16 }, cancellationToken: cancel.Token);
        Assert.True(await call.ResponseStream.MoveNext());
        Assert.True(await call.ResponseStream.MoveNext());
        var clock = Stopwatch.StartNew();
        cancel.Cancel();
        var error = await Assert.ThrowsAsync<RpcException>(async () =>
        {
            while (await call.ResponseStream.MoveNext())
            {
            }
        });
        Assert.Equal(StatusCode.Cancelled, error.StatusCode);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(5), $"took {clock.Elapsed}");

        // A bidirectional call cancelled while its response is awaited.
        using var cancelDecode = new CancellationTokenSource();
        using var decode = client.Decoder.Decode(cancellationToken: cancelDecode.Token);
        var next = decode.ResponseStream.MoveNext();
        cancelDecode.CancelAfter(100);
        Assert.Equal(StatusCode.Cancelled, (await Assert.ThrowsAsync<RpcException>(() => next)).StatusCode);

        Assert.Equal(10_000u, (await client.GetSequenceAsync(id)).LayerLengths[0]);
        Assert.Equal(1, counters.ConnectionsOpened);
    }

    [Fact]
    public async Task A_deadline_that_passes_ends_the_call_with_deadline_exceeded()
    {
        await using var server = await TestServer.StartAsync();
        using var client = LargeFrames(server, new Http2TransportCounters());
        using var call = client.Decoder.Decode(deadline: DateTime.UtcNow.AddMilliseconds(300));
        var clock = Stopwatch.StartNew();
        var error = await Assert.ThrowsAsync<RpcException>(() => call.ResponseStream.MoveNext());
        Assert.Equal(StatusCode.DeadlineExceeded, error.StatusCode);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(5), $"took {clock.Elapsed}");
        Assert.NotEmpty((await client.GetConfigAsync()).Backend);
    }

    [Fact]
    public async Task After_the_server_shuts_down_calls_fail_as_unavailable_instead_of_hanging()
    {
        var server = await TestServer.StartAsync();
        var counters = new Http2TransportCounters();
        using var client = LargeFrames(server, counters);
        Assert.Equal("cpu", (await client.GetConfigAsync()).Backend);
        await server.StopAsync(); // GOAWAY to the idle connection, then the listener closes
        var clock = Stopwatch.StartNew();
        var error = await Assert.ThrowsAsync<RpcException>(() => client.GetConfigAsync());
        Assert.Equal(StatusCode.Unavailable, error.StatusCode);
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), $"took {clock.Elapsed}");
        await server.DisposeAsync();
    }

    [Fact]
    public async Task Nothing_listening_is_unavailable_over_http_and_https_and_another_scheme_is_refused_by_the_handler()
    {
        foreach (string address in new[] { "http://127.0.0.1:9", "https://127.0.0.1:9" })
        {
            using var client = new FlashMlaClient(address, new FlashMlaClientOptions { Transport = ClientTransport.LargeFrames });
            var error = await Assert.ThrowsAsync<RpcException>(() => client.GetConfigAsync());
            Assert.Equal(StatusCode.Unavailable, error.StatusCode);
        }

        using var invoker = new HttpMessageInvoker(new LargeFrameHttp2Handler());
        var refusal = await Assert.ThrowsAsync<NotSupportedException>(() =>
            invoker.SendAsync(new HttpRequestMessage(HttpMethod.Post, "ws://127.0.0.1:9/x"), default));
        Assert.Contains("http:// (h2c) and https:// (TLS)", refusal.Message);
    }
}
