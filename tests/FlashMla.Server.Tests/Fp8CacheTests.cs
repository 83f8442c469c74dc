using FlashMla.Client;
using FlashMla.Contracts.V1;
using FlashMla.Core.Tensors;
using FlashMla.Server.Hosting;
using Grpc.Core;

namespace FlashMla.Server.Tests;

/// <summary>A server with KvDtype=fp8 end to end: config, quantized writes, raw fp8 rows, stored reads, fork and truncate.</summary>
public sealed class Fp8CacheTests : IAsyncLifetime
{
    private const int Dk = MlaDims.HeadDimK, RowBytes = Fp8KvFormat.TokenBytes;
    private TestServer _server = null!;
    private FlashMlaClient Client => _server.Client;

    public async Task InitializeAsync() => _server = await TestServer.StartAsync(("KvDtype", "fp8"));
    public async Task DisposeAsync() => await _server.DisposeAsync();

    private static byte[] Quantized(ushort[] rows)
    {
        var stored = new byte[rows.Length / Dk * RowBytes];
        Fp8KvFormat.Quantize(rows, stored);
        return stored;
    }

    [Fact]
    public async Task Config_reports_the_fp8_dtype_its_bytes_per_token_and_the_token_capacity()
    {
        var config = await Client.GetConfigAsync();
        Assert.Equal(DType.Fp8E4M3Scaled, config.KvDtype);
        Assert.Equal(656u, config.KvBytesPerToken);
        Assert.Equal(64u * 64, config.TokenCapacity);
        Assert.Equal(64u, config.TotalBlocks);
    }

    [Fact]
    public async Task Bf16_rows_are_quantized_by_the_codec_and_read_back_in_the_stored_format()
    {
        ulong id = await Client.CreateSequenceAsync();
        var rows = Random16.Bf16(new Random(1), 150 * Dk);
        await Client.AppendKvAsync(id, 1, rows, rowsPerChunk: 40);

        var (dtype, stored) = await Client.ReadStoredKvAsync(id, 1);
        Assert.Equal(DType.Fp8E4M3Scaled, dtype);
        Assert.Equal(Quantized(rows), stored);
        var (_, part) = await Client.ReadStoredKvAsync(id, 1, start: 70, count: 30);
        Assert.Equal(stored.AsSpan(70 * RowBytes, 30 * RowBytes).ToArray(), part);
        Assert.Equal([0u, 150u], (await Client.GetSequenceAsync(id)).LayerLengths);
    }

    [Fact]
    public async Task Rows_already_in_fp8_are_stored_as_they_are_after_quantized_ones()
    {
        ulong id = await Client.CreateSequenceAsync();
        var rng = new Random(2);
        var bf16 = Random16.Bf16(rng, 10 * Dk);
        var raw = new byte[70 * RowBytes];
        rng.NextBytes(raw); // the server does not interpret stored rows
        await Client.AppendKvAsync(id, 0, bf16);
        var appended = await Client.AppendFp8KvAsync(id, 0, raw, rowsPerChunk: 32);
        Assert.Equal((3ul, 70ul), (appended.Chunks, appended.Rows));

        var (_, stored) = await Client.ReadStoredKvAsync(id, 0);
        Assert.Equal([.. Quantized(bf16), .. raw], stored);
    }

    [Fact]
    public async Task Fp8_rows_of_the_wrong_shape_are_refused_and_change_nothing()
    {
        ulong id = await Client.CreateSequenceAsync();
        using var call = Client.Cache.AppendKv();
        var tensor = new Tensor { Dtype = DType.Fp8E4M3Scaled, Data = Google.Protobuf.ByteString.CopyFrom(new byte[2 * 576]) };
        tensor.Shape.Add(2);
        tensor.Shape.Add(576);
        await call.RequestStream.WriteAsync(new AppendKvChunk { SequenceId = id, Layer = 0, Kv = tensor });
        await call.RequestStream.CompleteAsync();
        var error = await Assert.ThrowsAsync<RpcException>(async () => await call);
        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Contains("656", error.Status.Detail);
        Assert.Equal([0u, 0u], (await Client.GetSequenceAsync(id)).LayerLengths);
    }

    [Fact]
    public async Task Fork_truncate_and_copy_on_write_keep_the_stored_rows()
    {
        ulong parent = await Client.CreateSequenceAsync();
        var rows = Random16.Bf16(new Random(3), 100 * Dk);
        await Client.AppendKvAsync([new KvUpload(parent, 0, rows), new KvUpload(parent, 1, rows)]);
        var fork = await Client.ForkAsync(parent); // the full block shared, the partial one copied
        Assert.Equal((1u, 1u), (fork.SharedBlocks, fork.CopiedBlocks));

        var extra = Random16.Bf16(new Random(4), 5 * Dk);
        await Client.AppendKvAsync(fork.SequenceId, 1, extra);
        Assert.Equal(Quantized(rows), (await Client.ReadStoredKvAsync(parent, 1)).Rows);
        var forkRows = (await Client.ReadStoredKvAsync(fork.SequenceId, 1)).Rows;
        Assert.Equal(Quantized(rows).Concat(Quantized(extra)), forkRows);

        await Client.TruncateAsync(fork.SequenceId, 30); // back into the shared block: the rewrite copies it first
        var rewrite = Random16.Bf16(new Random(5), 40 * Dk);
        await Client.AppendKvAsync(fork.SequenceId, 1, rewrite);
        Assert.Equal(Quantized(rows), (await Client.ReadStoredKvAsync(parent, 1)).Rows);
        forkRows = (await Client.ReadStoredKvAsync(fork.SequenceId, 1)).Rows;
        Assert.Equal(Quantized(rows).Take(30 * RowBytes).Concat(Quantized(rewrite)), forkRows);
    }

    [Fact]
    public async Task A_decode_step_takes_its_new_rows_in_bf16_only_and_quantizes_them()
    {
        ulong id = await Client.CreateSequenceAsync();
        await Client.AppendKvAsync(id, 0, Random16.Bf16(new Random(7), 10 * Dk));
        var decoder = new Decoder.DecoderClient(Client.Channel);
        var q = TensorBytes.Bf16(Random16.Bf16(new Random(8), 16 * Dk), 1, 1, 16, Dk);
        var request = new DecodeRequest { RequestId = 1, Layer = 0, SQ = 1, HQ = 16, Q = q, Kv = TensorBytes.Fp8Rows(new byte[RowBytes]) };
        request.SequenceIds.Add(id);
        var error = await Assert.ThrowsAsync<RpcException>(async () => await decoder.DecodeOnceAsync(request));
        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Equal([10u, 0u], (await Client.GetSequenceAsync(id)).LayerLengths);

        var newRow = Random16.Bf16(new Random(9), Dk);
        using var output = await Client.DecodeOnceAsync(new DecodeInput(0, [id], 1, 16, Random16.Bf16(new Random(10), 16 * Dk), newRow));
        Assert.Equal(16 * 512, output.Out.Length);
        var (_, stored) = await Client.ReadStoredKvAsync(id, 0, start: 10, count: 1);
        Assert.Equal(Quantized(newRow), stored);
    }

    [Fact]
    public async Task Reading_an_fp8_cache_as_bf16_says_to_read_the_stored_rows()
    {
        ulong id = await Client.CreateSequenceAsync();
        await Client.AppendKvAsync(id, 0, Random16.Bf16(new Random(6), 3 * Dk));
        var error = await Assert.ThrowsAsync<InvalidOperationException>(() => Client.ReadKvAsync(id, 0));
        Assert.Contains("ReadStoredKvAsync", error.Message);
    }
}

/// <summary>The bf16 cache (the default) and the KvDtype option itself.</summary>
public sealed class KvDtypeOptionTests
{
    [Fact]
    public async Task A_bf16_cache_reports_1152_bytes_a_token_and_refuses_fp8_rows_with_invalid_argument()
    {
        await using var server = await TestServer.StartAsync();
        var config = await server.Client.GetConfigAsync();
        Assert.Equal(DType.Bf16, config.KvDtype);
        Assert.Equal(1152u, config.KvBytesPerToken);
        Assert.Equal(64u * 64, config.TokenCapacity);

        ulong id = await server.Client.CreateSequenceAsync();
        var error = await Assert.ThrowsAsync<RpcException>(() => server.Client.AppendFp8KvAsync(id, 0, new byte[3 * 656]));
        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Contains("bf16", error.Status.Detail);
        Assert.Equal([0u, 0u], (await server.Client.GetSequenceAsync(id)).LayerLengths);
    }

    [Fact]
    public async Task The_start_up_log_says_the_kv_dtype_its_bytes_a_token_and_the_token_capacity()
    {
        var log = new LogCapture();
        await using var server = await TestServer.StartAsync([.. log.ServerOptions, ("Serilog:MinimumLevel:Default", "Information"), ("KvDtype", "fp8")]);
        var started = log.Events.Select(e => e.RenderMessage()).Single(m => m.StartsWith("FlashMLA service on", StringComparison.Ordinal));
        Assert.Contains("KV fp8 at 656 bytes a token: 4096 tokens a layer", started);
    }

    [Fact]
    public void The_same_cpu_memory_holds_1_756_times_the_blocks_in_fp8()
    {
        var bf16 = new FlashMlaOptions { Backend = "cpu", Layers = 4, TotalBlocks = 0, CpuMemoryMiB = 1000, MemoryFraction = 0.5 };
        var fp8 = new FlashMlaOptions { Backend = "cpu", Layers = 4, TotalBlocks = 0, CpuMemoryMiB = 1000, MemoryFraction = 0.5, KvDtype = "fp8" };
        Assert.Equal(500 * 1024 * 1024 / (4 * 73_728), BackendSelector.CpuBlockCount(bf16));
        Assert.Equal(500 * 1024 * 1024 / (4 * 41_984), BackendSelector.CpuBlockCount(fp8));
        Assert.InRange(BackendSelector.CpuBlockCount(fp8) / (double)BackendSelector.CpuBlockCount(bf16), 1.75, 1.76);
    }

    [Theory]
    [InlineData("fp16")]
    [InlineData("")]
    [InlineData("e4m3")]
    public void An_unknown_KvDtype_is_refused_at_start_up(string value)
    {
        var problems = new FlashMlaOptions { KvDtype = value }.Validate().ToList();
        Assert.Contains(problems, p => p.Contains("KvDtype must be bf16 or fp8"));
        Assert.Empty(new FlashMlaOptions { KvDtype = "fp8" }.Validate());
    }
}
