using FlashMla.Client;
using FlashMla.Contracts.V1;
using Grpc.Core;

namespace FlashMla.Server.Tests;

/// <summary>flashmla_kv_appended_rows_total counts every row written into the cache: prefill uploads and decode appends.</summary>
[Collection(DataPlaneCollection.Name)] // reads a counter every test server in the process adds to
public sealed class AppendedRowsMetricTests
{
    [Fact]
    public async Task Appended_rows_count_the_rows_of_successful_uploads_and_decode_appends_and_nothing_refused()
    {
        await using var server = await TestServer.StartAsync(("MaxSequenceLength", 100));
        ulong a = await server.Client.CreateSequenceAsync(), b = await server.Client.CreateSequenceAsync();
        // One upload of two chunks (10 + 5 rows), then one of 7 rows to another sequence and layer.
        await server.Client.AppendKvAsync([new KvUpload(a, 0, Random16.Bf16(new Random(1), 10 * 576)), new KvUpload(a, 0, Random16.Bf16(new Random(2), 5 * 576))]);
        await server.Client.AppendKvAsync(b, 1, Random16.Bf16(new Random(3), 7 * 576));
        // Refused: past the length limit, so nothing of it is appended.
        await Assert.ThrowsAsync<RpcException>(() => server.Client.AppendKvAsync(a, 0, Random16.Bf16(new Random(4), 90 * 576)));
        // A decode step appending one row to each of two sequences.
        var request = new DecodeRequest
        {
            Layer = 0, SQ = 1, HQ = 2,
            Q = TensorBytes.Bf16(Random16.Bf16(new Random(5), 2 * 2 * 576), 2, 1, 2, 576),
            Kv = TensorBytes.Bf16(Random16.Bf16(new Random(6), 2 * 576), 2, 1, 576),
        };
        request.SequenceIds.Add([a, b]);
        await server.Client.Decoder.DecodeOnceAsync(request);

        var scrape = await PrometheusScrape.TakeAsync(server);
        Assert.Equal(10 + 5 + 7 + 2, scrape.Sum("flashmla_kv_appended_rows_total"));
        Assert.Equal([16u, 0u], (await server.Client.GetSequenceAsync(a)).LayerLengths);
    }
}

/// <summary>flashmla_decode_moved_bytes_total counts the KV bytes the attention read in the cache's own dtype.</summary>
[Collection(DataPlaneCollection.Name)] // reads a counter every test server in the process adds to
public sealed class MovedBytesMetricTests
{
    [Theory]
    [InlineData("bf16", 1152)]
    [InlineData("fp8", 656)]
    public async Task Moved_bytes_count_each_kv_token_at_the_dtypes_bytes_per_token(string dtype, int bytesPerToken)
    {
        await using var server = await TestServer.StartAsync(("KvDtype", dtype));
        ulong a = await server.Client.CreateSequenceAsync();
        await server.Client.AppendKvAsync(a, 0, Random16.Bf16(new Random(1), 99 * 576));
        var request = new DecodeRequest
        {
            Layer = 0, SQ = 1, HQ = 2,
            Q = TensorBytes.Bf16(Random16.Bf16(new Random(2), 2 * 576), 1, 1, 2, 576),
            Kv = TensorBytes.Bf16(Random16.Bf16(new Random(3), 576), 1, 1, 576),
        };
        request.SequenceIds.Add(a);
        await server.Client.Decoder.DecodeOnceAsync(request);

        var scrape = await PrometheusScrape.TakeAsync(server);
        // 100 KV tokens (99 uploaded, 1 appended by the step), then q and out of 2 query rows in bf16.
        Assert.Equal(100 * bytesPerToken + 2 * (576 + 512) * 2, scrape.Sum("flashmla_decode_moved_bytes_total"));
    }
}
