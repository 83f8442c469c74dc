using System.Net;
using System.Net.NetworkInformation;
using FlashMla.Client;
using FlashMla.Contracts.V1;
using FlashMla.Contracts.Wire;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Reflection.V1Alpha;
using Xunit.Abstractions;

namespace FlashMla.Server.Tests;

/// <summary>Tests that read process-wide allocation counters or TCP tables: run alone.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class DataPlaneCollection
{
    public const string Name = "data plane (not parallel)";
}

/// <summary>
/// The decode data plane end to end: pooled marshallers on both sides, allocation per step, reuse of
/// input memory after the send, several connections from one client, and the contract as seen by
/// generated stubs and reflection.
/// </summary>
[Collection(DataPlaneCollection.Name)]
public sealed class DataPlaneTests(ITestOutputHelper output)
{
    private static async Task<ulong[]> CreateSequencesAsync(FlashMlaClient client, int count, int length)
    {
        var ids = new ulong[count];
        for (int i = 0; i < count; i++)
        {
            ids[i] = await client.CreateSequenceAsync();
            await client.AppendKvAsync(ids[i], 0, Random16.Bf16(new Random(i), length * 576));
        }
        return ids;
    }

    /// <summary>Bytes allocated by the whole process (server and client) per pipelined step over one stream.</summary>
    internal static async Task<double> BytesPerStepAsync(FlashMlaClient client, ulong[][] groups, int hQ, int steps)
    {
        var inputs = groups.Select((ids, k) => new DecodeInput(0, ids, 1, hQ, Random16.Bf16(new Random(k), ids.Length * hQ * 576))).ToArray();
        await using var stream = client.OpenDecodeStream();
        async Task RunAsync(int count)
        {
            // One worker per group keeps a request of every group in flight.
            await Task.WhenAll(inputs.Select(async input =>
            {
                for (int i = 0; i < count; i++)
                {
                    using var result = await stream.DecodeAsync(input);
                    Assert.Equal(input.SequenceIds.Count * hQ * 512, result.Out.Length);
                }
            }));
        }
        await RunAsync(10);
        long before = GC.GetTotalAllocatedBytes(precise: true);
        await RunAsync(steps);
        long after = GC.GetTotalAllocatedBytes(precise: true);
        return (after - before) / (double)(steps * inputs.Length);
    }

    /// <summary>
    /// Bytes per step at h_q 16 and 128 over groups of 8 sequences (the least of three runs: a pool that grows by one
    /// array mid-run would count megabytes once; what this measures is the steady state), and the growth between them
    /// as a share of the extra tensor bytes.
    /// </summary>
    internal static async Task<(double Small, double Large, double Growth)> AllocationGrowthAsync(FlashMlaClient client, ulong[][] groups, int steps)
    {
        // The least of five runs each: the counters are the process's, and whatever else runs in it (a finished test's
        // server still closing, the thread pool's own work) only ever adds (one run in six of three passed 2.4 %).
        double small = double.MaxValue, large = double.MaxValue;
        for (int run = 0; run < 5; run++)
        {
            small = Math.Min(small, await BytesPerStepAsync(client, groups, 16, steps));
            large = Math.Min(large, await BytesPerStepAsync(client, groups, 128, steps));
        }
        long tensorsSmall = 8L * 16 * (576 + 512) * 2, tensorsLarge = 8L * 128 * (576 + 512) * 2;
        return (small, large, (large - small) / (tensorsLarge - tensorsSmall));
    }

    [Fact]
    public async Task Bytes_allocated_per_step_through_grpc_do_not_grow_with_the_tensors()
    {
        await using var server = await TestServer.StartAsync(("TotalBlocks", 64), ("CpuThreads", 1));
        var groups = new[] { await CreateSequencesAsync(server.Client, 8, 20), await CreateSequencesAsync(server.Client, 8, 20) };
        const int steps = 40;
        double small = await BytesPerStepAsync(server.Client, groups, hQ: 16, steps);
        double large = await BytesPerStepAsync(server.Client, groups, hQ: 128, steps);
        long tensorsSmall = 8L * 16 * (576 + 512) * 2, tensorsLarge = 8L * 128 * (576 + 512) * 2;
        output.WriteLine($"b=8, 2 in flight: h_q=16 ({tensorsSmall} tensor bytes/step) {small:F0} B/step; h_q=128 ({tensorsLarge}) {large:F0} B/step");
        // The generated marshallers would allocate every tensor at least twice per step (the server's parse
        // of q, the client's parse of out): 200% of the tensor bytes. What may remain grows with the number
        // of HTTP/2 frames and pipe segments inside Kestrel and SocketsHttpHandler (one small object per
        // 16 KB frame or 4 KB segment, a few percent of the bytes); the service's own code adds nothing.
        double growth = (large - small) / (tensorsLarge - tensorsSmall);
        output.WriteLine($"growth: {growth:P1} of the extra tensor bytes");
        Assert.True(growth < 0.15, $"h_q=16: {small:F0} B/step, h_q=128: {large:F0} B/step, growth {growth:P1} of the tensor bytes");
    }

    [Fact]
    public async Task Input_memory_may_be_reused_once_SendAsync_completes()
    {
        await using var server = await TestServer.StartAsync();
        var ids = await CreateSequencesAsync(server.Client, 2, 30);
        var q = Random16.Bf16(new Random(9), 2 * 4 * 576);
        var original = q.ToArray();
        var expected = await server.Client.DecodeOnceAsync(new DecodeInput(0, ids, 1, 4, original));

        await using var stream = server.Client.OpenDecodeStream();
        var response = await stream.SendAsync(new DecodeInput(0, ids, 1, 4, q));
        Array.Fill(q, (ushort)0x7FC0); // NaN everywhere: had the request not been written yet, the output would show it
        using var result = await response;
        Assert.Equal(expected.Out.ToArray(), result.Out.ToArray());
        Assert.Equal(expected.Lse.ToArray(), result.Lse.ToArray());
    }

    [Fact]
    public async Task Wire_form_input_gives_the_same_output_and_outputs_copy_into_caller_buffers()
    {
        await using var server = await TestServer.StartAsync();
        var ids = await CreateSequencesAsync(server.Client, 3, 40);
        var q = Random16.Bf16(new Random(4), 3 * 2 * 576);
        var kv = Random16.Bf16(new Random(5), 3 * 576);
        var qBytes = new byte[q.Length * 2];
        var kvBytes = new byte[kv.Length * 2];
        Buffer.BlockCopy(q, 0, qBytes, 0, qBytes.Length);
        Buffer.BlockCopy(kv, 0, kvBytes, 0, kvBytes.Length);
        var twin = await CreateSequencesAsync(server.Client, 3, 40);

        using var typed = await server.Client.DecodeOnceAsync(new DecodeInput(0, ids, 1, 2, q, kv));
        using var wire = await server.Client.DecodeOnceAsync(DecodeInput.FromBytes(0, twin, 1, 2, qBytes, kvBytes));
        var outCopy = new ushort[3 * 2 * 512];
        var lseCopy = new float[3 * 2];
        wire.CopyOutTo(outCopy);
        wire.CopyLseTo(lseCopy);
        Assert.Equal(typed.Out.ToArray(), outCopy);
        Assert.Equal(typed.Lse.ToArray(), lseCopy);
        Assert.Equal([41u, 0u], (await server.Client.GetSequenceAsync(twin[2])).LayerLengths);

        wire.Dispose();
        Assert.Throws<ObjectDisposedException>(() => wire.Out.Length);
    }

    [Fact]
    public async Task A_client_with_three_connections_spreads_its_streams_over_three_sockets()
    {
        await using var server = await TestServer.StartAsync();
        int port = new Uri(server.GrpcAddress).Port;
        using var client = new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { Connections = 3 });
        var ids = await CreateSequencesAsync(client, 3, 10);
        Assert.Equal(3, client.Connections);

        var streams = Enumerable.Range(0, 3).Select(_ => client.OpenDecodeStream()).ToArray();
        var outputs = await Task.WhenAll(streams.Select((s, k) => s.DecodeAsync(new DecodeInput(0, [ids[k]], 1, 2, Random16.Bf16(new Random(k), 2 * 576)))));
        Assert.All(outputs, o => Assert.Equal(2 * 512, o.Out.Length));

        int sockets = IPGlobalProperties.GetIPGlobalProperties().GetActiveTcpConnections()
            .Count(c => c.State == TcpState.Established && c.RemoteEndPoint.Port == port && IPAddress.IsLoopback(c.RemoteEndPoint.Address));
        Assert.Equal(3, sockets);
        foreach (var s in streams) await s.DisposeAsync();
    }

    [Fact]
    public async Task Generated_stubs_and_the_pooled_client_see_one_contract()
    {
        await using var server = await TestServer.StartAsync();
        var ids = await CreateSequencesAsync(server.Client, 2, 50);
        var input = new DecodeInput(0, ids, 1, 3, Random16.Bf16(new Random(6), 2 * 3 * 576));

        using var pooled = await server.Client.DecodeOnceAsync(input);
        var generated = await server.Client.Decoder.DecodeOnceAsync(input.ToRequest(5));
        Assert.Equal(MemoryMarshalBytes(pooled.Out), generated.Out.Data.ToByteArray());
        Assert.Equal(new long[] { 2, 1, 3, 512 }, generated.Out.Shape);
        Assert.Equal(new long[] { 2, 3, 1 }, generated.Lse.Shape);

        // The pooled parser reads what the generated writer wrote, field for field, repeated fields merged.
        var request = input.ToRequest(77);
        request.Q.Shape.Add(9);
        var bytes = request.ToByteArray();
        var twice = bytes.Concat(new DecodeRequest { Q = new Tensor { Data = ByteString.CopyFrom(1, 2, 3, 4) }, SoftmaxScale = 0.5f }.ToByteArray()).ToArray();
        foreach (var wire in new[] { bytes, twice })
        {
            using var parsed = DecodeMarshallers.ParseRequest(new System.Buffers.ReadOnlySequence<byte>(wire), System.Buffers.ArrayPool<byte>.Shared);
            Assert.Equal(DecodeRequest.Parser.ParseFrom(wire), parsed.Message);
        }
        var truncated = bytes[..^3];
        Assert.Throws<InvalidProtocolBufferException>(() =>
            DecodeMarshallers.ParseRequest(new System.Buffers.ReadOnlySequence<byte>(truncated), System.Buffers.ArrayPool<byte>.Shared));

        var reflection = new ServerReflection.ServerReflectionClient(server.Client.Channel);
        using var call = reflection.ServerReflectionInfo();
        await call.RequestStream.WriteAsync(new ServerReflectionRequest { ListServices = "" });
        await call.RequestStream.CompleteAsync();
        Assert.True(await call.ResponseStream.MoveNext());
        Assert.Contains("flashmla.v1.Decoder", call.ResponseStream.Current.ListServicesResponse.Service.Select(s => s.Name));

        // grpc.reflection.v1 (what current grpcurl and grpcio tools ask first) lists the same services.
        var reflectionV1 = new Grpc.Reflection.V1.ServerReflection.ServerReflectionClient(server.Client.Channel);
        using var callV1 = reflectionV1.ServerReflectionInfo();
        await callV1.RequestStream.WriteAsync(new Grpc.Reflection.V1.ServerReflectionRequest { ListServices = "" });
        await callV1.RequestStream.CompleteAsync();
        Assert.True(await callV1.ResponseStream.MoveNext());
        var v1Names = callV1.ResponseStream.Current.ListServicesResponse.Service.Select(s => s.Name).ToList();
        Assert.Contains("flashmla.v1.Decoder", v1Names);
        Assert.Contains("flashmla.v1.KvCache", v1Names);
    }

    private static byte[] MemoryMarshalBytes(ReadOnlySpan<ushort> values) => System.Runtime.InteropServices.MemoryMarshal.AsBytes(values).ToArray();
}
