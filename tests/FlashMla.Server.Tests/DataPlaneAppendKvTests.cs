using FlashMla.Client;
using FlashMla.Contracts.V1;
using FlashMla.Core.Tensors;
using Grpc.Core;
using Grpc.Net.Client;

namespace FlashMla.Server.Tests;

/// <summary>
/// KV ingest on the data-plane port (issue 15 item 4): AppendKv is served there with the same pooled receive path as
/// Decode, a client with a data-plane address sends it there, and a chunk waits only for work on its own sequence.
/// </summary>
// Its tests count flashmla_dataplane_calls_total, which every test server in the process adds to (the exporter
// listens to every meter of the name): beside TlsTests' uploads a count came out high on a loaded CI machine.
[Collection(DataPlaneCollection.Name)]
public sealed class DataPlaneAppendKvTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(10);

    [Fact]
    public async Task AppendKv_over_the_data_plane_port_lands_rows_that_read_back_exactly()
    {
        await using var server = await TestServer.StartAsync();
        using var channel = GrpcChannel.ForAddress(server.DataPlaneAddress!);
        var ingest = new KvCache.KvCacheClient(channel); // the generated stub, pointed at the data-plane port
        ulong id = await server.Client.CreateSequenceAsync();
        var rows = Random16.Bf16(new Random(5), 100 * 576);

        using (var call = ingest.AppendKv())
        {
            foreach (var (start, n) in new[] { (0, 64), (64, 36) })
                await call.RequestStream.WriteAsync(new AppendKvChunk
                {
                    SequenceId = id, Layer = 1, Kv = TensorBytes.Bf16(rows.AsSpan(start * 576, n * 576), n, 576),
                });
            await call.RequestStream.CompleteAsync();
            var response = await call;
            Assert.Equal(2ul, response.Chunks);
            Assert.Equal(100ul, response.Rows);
        }
        Assert.Equal(rows, await server.Client.ReadKvAsync(id, 1));
        Assert.Equal(new uint[] { 0, 100 }, (await server.Client.GetSequenceAsync(id)).LayerLengths);
    }

    [Fact]
    public async Task A_refused_chunk_on_the_data_plane_gets_its_status_and_changes_nothing()
    {
        await using var server = await TestServer.StartAsync();
        using var channel = GrpcChannel.ForAddress(server.DataPlaneAddress!);
        var ingest = new KvCache.KvCacheClient(channel);

        using var call = ingest.AppendKv();
        await call.RequestStream.WriteAsync(new AppendKvChunk { SequenceId = 999, Layer = 0, Kv = TensorBytes.Bf16(new ushort[576], 1, 576) });
        await call.RequestStream.CompleteAsync();
        var error = await Assert.ThrowsAsync<RpcException>(() => call.ResponseAsync);
        Assert.Equal(StatusCode.NotFound, error.StatusCode);
        Assert.Equal(64u, (await server.Client.GetStatsAsync()).FreeBlocks);
    }

    [Fact]
    public async Task A_client_with_a_data_plane_address_sends_AppendKv_there()
    {
        await using var server = await TestServer.StartAsync();
        using var client = new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { DecodeAddress = server.DataPlaneAddress });
        ulong id = await client.CreateSequenceAsync();
        var rows = Random16.Bf16(new Random(6), 3000 * 576);

        var response = await client.AppendKvAsync(id, 0, rows, rowsPerChunk: 1024);
        Assert.Equal(3ul, response.Chunks);
        Assert.Equal(rows, await client.ReadKvAsync(id, 0));

        using var http = new HttpClient();
        string text = await http.GetStringAsync(server.MetricsAddress + "/metrics");
        Assert.Matches(@"flashmla_dataplane_calls_total\{[^}]*code=""OK""[^}]*method=""/flashmla.v1.KvCache/AppendKv""[^}]*\} 1", text);
    }

    [Fact]
    public async Task An_fp8_cache_takes_bf16_and_fp8_rows_on_the_data_plane_port_as_on_the_grpc_port()
    {
        await using var server = await TestServer.StartAsync(("KvDtype", "fp8"));
        using var client = new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { DecodeAddress = server.DataPlaneAddress });
        ulong id = await client.CreateSequenceAsync();
        var rng = new Random(7);
        var bf16 = Random16.Bf16(rng, 70 * 576);
        var raw = new byte[40 * Fp8KvFormat.TokenBytes];
        rng.NextBytes(raw); // the server does not interpret stored rows

        var quantizedOnes = await client.AppendKvAsync(id, 0, bf16, rowsPerChunk: 32);
        var storedOnes = await client.AppendFp8KvAsync(id, 0, raw, rowsPerChunk: 16);
        Assert.Equal((3ul, 70ul), (quantizedOnes.Chunks, quantizedOnes.Rows));
        Assert.Equal((3ul, 40ul), (storedOnes.Chunks, storedOnes.Rows));

        var quantized = new byte[70 * Fp8KvFormat.TokenBytes];
        Fp8KvFormat.Quantize(bf16, quantized);
        var (dtype, stored) = await client.ReadStoredKvAsync(id, 0);
        Assert.Equal(DType.Fp8E4M3Scaled, dtype);
        Assert.Equal([.. quantized, .. raw], stored);

        using var http = new HttpClient();
        string text = await http.GetStringAsync(server.MetricsAddress + "/metrics");
        Assert.Matches(@"flashmla_dataplane_calls_total\{[^}]*code=""OK""[^}]*method=""/flashmla.v1.KvCache/AppendKv""[^}]*\} 2", text);
    }

    [Fact]
    public async Task Fp8_rows_on_the_data_plane_port_are_refused_by_a_bf16_cache_and_change_nothing()
    {
        await using var server = await TestServer.StartAsync();
        using var client = new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { DecodeAddress = server.DataPlaneAddress });
        ulong id = await client.CreateSequenceAsync();

        var error = await Assert.ThrowsAsync<RpcException>(() => client.AppendFp8KvAsync(id, 0, new byte[2 * Fp8KvFormat.TokenBytes]));
        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Contains("bf16", error.Status.Detail);
        Assert.Equal(new uint[] { 0, 0 }, (await client.GetSequenceAsync(id)).LayerLengths);
        Assert.Equal(64u, (await client.GetStatsAsync()).FreeBlocks);
    }

    [Fact]
    public async Task AppendKv_to_one_sequence_completes_while_a_decode_of_another_holds_the_backend()
    {
        HeldBackend? backend = null;
        await using var server = await TestServer.StartAsync(HeldBackend.Install(b => backend = b));
        using var client = new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { DecodeAddress = server.DataPlaneAddress });
        ulong decoding = await client.CreateSequenceAsync(), ingesting = await client.CreateSequenceAsync();
        await client.AppendKvAsync(decoding, 0, Random16.Bf16(new Random(1), 16 * 576));

        var decode = client.DecodeOnceAsync(new DecodeInput(0, [decoding], 1, 4, Random16.Bf16(new Random(2), 4 * 576)));
        await backend!.WaitForSubmittedAsync(1);
        await client.AppendKvAsync(ingesting, 0, Random16.Bf16(new Random(3), 500 * 576), rowsPerChunk: 128).WaitAsync(Patience);
        Assert.Equal(500u, (await client.GetSequenceAsync(ingesting)).LayerLengths[0]);

        // A chunk for the sequence being decoded waits for that decode, then lands after it.
        var behind = client.AppendKvAsync(decoding, 0, Random16.Bf16(new Random(4), 2 * 576));
        await Task.Delay(200);
        Assert.False(behind.IsCompleted);
        backend.Release();
        (await decode.WaitAsync(Patience)).Dispose();
        await behind.WaitAsync(Patience);
        Assert.Equal(18u, (await client.GetSequenceAsync(decoding)).LayerLengths[0]);
    }
}
