using FlashMla.Client;
using FlashMla.Contracts.V1;
using Google.Protobuf;
using Grpc.Core;

namespace FlashMla.Server.Tests;

/// <summary>Every malformed request gets its status code and leaves the cache exactly as it was.</summary>
public sealed class BadInputTests : IAsyncLifetime
{
    private TestServer _server = null!;
    private ulong _a, _b;
    private FlashMlaClient Client => _server.Client;

    public async Task InitializeAsync()
    {
        _server = await TestServer.StartAsync(("TotalBlocks", 8), ("MaxSequenceLength", 300), ("MaxHeads", 64), ("MaxQueryTokens", 4),
            ("MaxMessageBytes", 1024 * 1024), ("MaxBatchSequences", 4));
        _a = await Client.CreateSequenceAsync();
        _b = await Client.CreateSequenceAsync();
        await Client.AppendKvAsync([new KvUpload(_a, 0, Random16.Bf16(new Random(1), 100 * 576)),
            new KvUpload(_b, 0, Random16.Bf16(new Random(2), 64 * 576))]);
    }

    public async Task DisposeAsync() => await _server.DisposeAsync();

    private DecodeRequest GoodDecode(int b = 2, int sQ = 1, int hQ = 8, bool withKv = true)
    {
        var request = new DecodeRequest
        {
            Layer = 0, SQ = (uint)sQ, HQ = (uint)hQ,
            Q = TensorBytes.Bf16(Random16.Bf16(new Random(3), b * sQ * hQ * 576), b, sQ, hQ, 576),
        };
        request.SequenceIds.Add(new[] { _a, _b }.Take(b));
        if (withKv) request.Kv = TensorBytes.Bf16(Random16.Bf16(new Random(4), b * sQ * 576), b, sQ, 576);
        return request;
    }

    private async Task AssertRefusedAndUnchanged(StatusCode expected, Func<Task> call, string? messagePart = null)
    {
        var before = await CacheSnapshot.TakeAsync(Client, _a, _b);
        var error = await Assert.ThrowsAsync<RpcException>(call);
        Assert.Equal(expected, error.StatusCode);
        if (messagePart is not null) Assert.Contains(messagePart, error.Status.Detail);
        Assert.Equal(before, await CacheSnapshot.TakeAsync(Client, _a, _b));
    }

    private Task Decode(DecodeRequest request) => Client.Decoder.DecodeOnceAsync(request).ResponseAsync;

    [Fact]
    public async Task A_good_request_really_succeeds_so_the_refusals_below_mean_something()
    {
        var response = await Client.Decoder.DecodeOnceAsync(GoodDecode(withKv: false));
        Assert.Equal(2 * 8 * 512 * 2, response.Out.Data.Length);
    }

    [Fact]
    public Task Wrong_dtype_is_invalid_argument()
    {
        var request = GoodDecode();
        request.Q.Dtype = DType.Fp32;
        return AssertRefusedAndUnchanged(StatusCode.InvalidArgument, () => Decode(request), "q must be");
    }

    [Fact]
    public Task Wrong_shape_is_invalid_argument()
    {
        var request = GoodDecode();
        request.Q.Shape[3] = 512;
        return AssertRefusedAndUnchanged(StatusCode.InvalidArgument, () => Decode(request), "shape");
    }

    [Fact]
    public Task Wrong_byte_count_is_invalid_argument()
    {
        var request = GoodDecode();
        request.Kv.Data = ByteString.CopyFrom(new byte[request.Kv.Data.Length - 2]);
        return AssertRefusedAndUnchanged(StatusCode.InvalidArgument, () => Decode(request), "bytes");
    }

    [Fact]
    public Task Unknown_sequence_is_not_found_and_the_known_one_is_not_appended()
    {
        var request = GoodDecode();
        request.SequenceIds[1] = 999_999;
        return AssertRefusedAndUnchanged(StatusCode.NotFound, () => Decode(request), "999999");
    }

    [Fact]
    public Task Duplicate_sequence_is_invalid_argument()
    {
        var request = GoodDecode();
        request.SequenceIds[1] = _a;
        return AssertRefusedAndUnchanged(StatusCode.InvalidArgument, () => Decode(request), "twice");
    }

    [Fact]
    public Task Layer_out_of_range_is_invalid_argument()
    {
        var request = GoodDecode();
        request.Layer = 2;
        return AssertRefusedAndUnchanged(StatusCode.InvalidArgument, () => Decode(request), "layer");
    }

    [Theory]
    [InlineData(0, 8)]
    [InlineData(5, 8)]
    [InlineData(1, 0)]
    [InlineData(1, 65)]
    public Task S_q_or_h_q_out_of_range_is_invalid_argument(int sQ, int hQ)
    {
        var request = GoodDecode(sQ: Math.Max(sQ, 1), hQ: Math.Max(hQ, 1));
        request.SQ = (uint)sQ;
        request.HQ = (uint)hQ;
        return AssertRefusedAndUnchanged(StatusCode.InvalidArgument, () => Decode(request));
    }

    [Fact]
    public Task Empty_batch_is_invalid_argument()
    {
        var request = GoodDecode();
        request.SequenceIds.Clear();
        return AssertRefusedAndUnchanged(StatusCode.InvalidArgument, () => Decode(request), "no sequences");
    }

    [Fact]
    public Task Batch_over_the_limit_is_invalid_argument()
    {
        var request = new DecodeRequest { Layer = 0, SQ = 1, HQ = 1, Q = TensorBytes.Bf16(new ushort[5 * 576], 5, 1, 1, 576) };
        request.SequenceIds.Add([_a, _b, 3, 4, 5]);
        return AssertRefusedAndUnchanged(StatusCode.InvalidArgument, () => Decode(request), "limit");
    }

    [Fact]
    public Task Append_past_the_length_limit_is_invalid_argument()
    {
        return AssertRefusedAndUnchanged(StatusCode.InvalidArgument,
            () => Client.AppendKvAsync(_a, 0, Random16.Bf16(new Random(5), 201 * 576)), "limit");
    }

    [Fact]
    public Task Append_of_a_wrong_row_width_is_invalid_argument()
    {
        return AssertRefusedAndUnchanged(StatusCode.InvalidArgument, async () =>
        {
            using var call = Client.Cache.AppendKv();
            await call.RequestStream.WriteAsync(new AppendKvChunk
            {
                SequenceId = _a, Layer = 0, Kv = TensorBytes.Bf16(new ushort[3 * 512], 3, 512),
            });
            await call.RequestStream.CompleteAsync();
            await call;
        });
    }

    [Fact]
    public Task Append_whose_shape_overflows_64_bits_is_invalid_argument()
    {
        return AssertRefusedAndUnchanged(StatusCode.InvalidArgument, async () =>
        {
            using var call = Client.Cache.AppendKv();
            var kv = TensorBytes.Bf16(new ushort[576], 1, 576);
            kv.Shape[0] = 1L << 55; // times 576 wraps a signed 64-bit count
            await call.RequestStream.WriteAsync(new AppendKvChunk { SequenceId = _a, Layer = 0, Kv = kv });
            await call.RequestStream.CompleteAsync();
            await call;
        }, "64 bits");
    }

    [Fact]
    public Task Append_of_two_rows_whose_shape_claims_2_plus_2_pow_58_rows_is_invalid_argument()
    {
        // (2 + 2^58) * 576 * 2 bytes wraps to exactly the 2 rows sent: only an overflow-checked product refuses it.
        return AssertRefusedAndUnchanged(StatusCode.InvalidArgument, async () =>
        {
            using var call = Client.Cache.AppendKv();
            var kv = TensorBytes.Bf16(Random16.Bf16(new Random(6), 2 * 576), 2, 576);
            kv.Shape[0] = 2 + (1L << 58);
            await call.RequestStream.WriteAsync(new AppendKvChunk { SequenceId = _a, Layer = 0, Kv = kv });
            await call.RequestStream.CompleteAsync();
            await call;
        }, "64 bits");
    }

    [Fact]
    public Task Empty_upload_is_invalid_argument()
    {
        return AssertRefusedAndUnchanged(StatusCode.InvalidArgument, async () =>
        {
            using var call = Client.Cache.AppendKv();
            await call.RequestStream.CompleteAsync();
            await call;
        }, "no chunks");
    }

    [Fact]
    public Task Message_over_the_size_limit_is_resource_exhausted()
    {
        // 2 MB of q in one unary request, over the server's 1 MiB limit: refused before it is parsed.
        var request = GoodDecode();
        request.Q.Data = ByteString.CopyFrom(new byte[2 * 1024 * 1024]);
        return AssertRefusedAndUnchanged(StatusCode.ResourceExhausted, () => Decode(request));
    }

    [Fact]
    public async Task Out_of_pages_is_resource_exhausted_for_the_whole_request()
    {
        // 8 blocks: _a holds 2, _b holds 1. A third sequence takes all but one.
        ulong big = await Client.CreateSequenceAsync();
        await Client.AppendKvAsync(big, 0, Random16.Bf16(new Random(7), 4 * 64 * 576));
        var stats = await Client.GetStatsAsync();
        Assert.Equal(1u, stats.FreeBlocks);
        // _a (100 tokens) has room for one more row; _b (64 tokens, full page) needs a new block, and big needs one too:
        // the request needs 2 blocks and only 1 is free, so none of the three may change.
        var request = GoodDecode();
        request.SequenceIds.Add(big);
        request.Q = TensorBytes.Bf16(Random16.Bf16(new Random(8), 3 * 8 * 576), 3, 1, 8, 576);
        request.Kv = TensorBytes.Bf16(Random16.Bf16(new Random(9), 3 * 576), 3, 1, 576);
        var before = await CacheSnapshot.TakeAsync(Client, _a, _b, big);
        var error = await Assert.ThrowsAsync<RpcException>(() => Decode(request));
        Assert.Equal(StatusCode.ResourceExhausted, error.StatusCode);
        Assert.Equal(before, await CacheSnapshot.TakeAsync(Client, _a, _b, big));
        Assert.Equal(stats.RejectedNoSpace + 1, (await Client.GetStatsAsync()).RejectedNoSpace);
        await Client.FreeAsync(big);
    }

    [Fact]
    public Task Fork_without_a_free_page_is_resource_exhausted()
    {
        return AssertRefusedAndUnchanged(StatusCode.ResourceExhausted, async () =>
        {
            var filler = new List<ulong>();
            try
            {
                // Take every free block, then fork _a, whose partial last page needs a copy.
                var stats = await Client.GetStatsAsync();
                for (int i = 0; i < stats.FreeBlocks; i++)
                {
                    ulong id = await Client.CreateSequenceAsync();
                    filler.Add(id);
                    await Client.AppendKvAsync(id, 0, Random16.Bf16(new Random(i), 576));
                }
                await Client.ForkAsync(_a);
            }
            finally
            {
                foreach (ulong id in filler) await Client.FreeAsync(id);
            }
        });
    }

    [Fact]
    public Task Truncate_past_the_length_is_invalid_argument() =>
        AssertRefusedAndUnchanged(StatusCode.InvalidArgument, () => Client.TruncateAsync(_a, 101), "truncate");

    [Fact]
    public Task Read_past_the_length_is_invalid_argument() =>
        AssertRefusedAndUnchanged(StatusCode.InvalidArgument, () => Client.ReadKvAsync(_a, 0, start: 90, count: 11));

    [Fact]
    public Task Unknown_sequence_in_cache_calls_is_not_found() =>
        AssertRefusedAndUnchanged(StatusCode.NotFound, () => Client.ForkAsync(424242));

    [Fact]
    public Task Free_of_an_unknown_sequence_is_not_found() =>
        AssertRefusedAndUnchanged(StatusCode.NotFound, () => Client.FreeAsync(424242));
}
