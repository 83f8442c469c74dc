using FlashMla.Client;
using Grpc.Core;
using Grpc.Health.V1;

namespace FlashMla.Server.Tests;

/// <summary>Lease reclaim, health, draining and metrics of a running server.</summary>
public sealed class OperationsTests
{
    [Fact]
    public async Task An_idle_sequence_is_reclaimed_after_its_lease_and_counted()
    {
        await using var server = await TestServer.StartAsync(("SequenceLeaseSeconds", 1.5));
        ulong id = await server.Client.CreateSequenceAsync();
        await server.Client.AppendKvAsync(id, 0, Random16.Bf16(new Random(1), 70 * 576));
        Assert.Equal(62u, (await server.Client.GetStatsAsync()).FreeBlocks);

        var deadline = DateTime.UtcNow.AddSeconds(20);
        while ((await server.Client.GetStatsAsync()).ReclaimedSequences == 0 && DateTime.UtcNow < deadline) await Task.Delay(100);

        var stats = await server.Client.GetStatsAsync();
        Assert.Equal(1ul, stats.ReclaimedSequences);
        Assert.Equal(64u, stats.FreeBlocks);
        var error = await Assert.ThrowsAsync<RpcException>(() => server.Client.GetSequenceAsync(id));
        Assert.Equal(StatusCode.NotFound, error.StatusCode);
    }

    [Fact]
    public async Task Health_is_serving_then_not_serving_while_draining_and_new_work_is_unavailable()
    {
        await using var server = await TestServer.StartAsync();
        var health = new Health.HealthClient(server.Client.Channel);
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving,
            (await health.CheckAsync(new HealthCheckRequest { Service = "flashmla.v1.Decoder" })).Status);

        await server.Scheduler.DrainAsync();

        Assert.Equal(HealthCheckResponse.Types.ServingStatus.NotServing,
            (await health.CheckAsync(new HealthCheckRequest { Service = "" })).Status);
        var error = await Assert.ThrowsAsync<RpcException>(() => server.Client.CreateSequenceAsync());
        Assert.Equal(StatusCode.Unavailable, error.StatusCode);
    }

    [Fact]
    public async Task Shutdown_finishes_work_already_queued()
    {
        // A long batch window keeps the request queued in the scheduler while the host is told to stop.
        await using var server = await TestServer.StartAsync(("BatchWindowMicroseconds", 100_000));
        ulong id = await server.Client.CreateSequenceAsync();
        await server.Client.AppendKvAsync(id, 0, Random16.Bf16(new Random(4), 30 * 576));
        // Warm the decode path first, so that the request below reaches the scheduler well inside the window.
        await server.Client.DecodeOnceAsync(new DecodeInput(0, [id], 1, 8, Random16.Bf16(new Random(7), 8 * 576)));
        var inFlight = server.Client.DecodeOnceAsync(new DecodeInput(0, [id], 1, 8, Random16.Bf16(new Random(5), 8 * 576),
            Random16.Bf16(new Random(6), 576)));
        await Task.Delay(40);
        var stopping = server.StopAsync();

        var output = await inFlight;
        Assert.Equal(8 * 512, output.Out.Length);
        Assert.Equal(8, output.Lse.Length);
        await stopping;
        Assert.False(server.Scheduler.IsServing);
    }

    [Fact]
    public async Task Metrics_endpoint_exports_decode_and_cache_metrics()
    {
        await using var server = await TestServer.StartAsync();
        ulong id = await server.Client.CreateSequenceAsync();
        await server.Client.AppendKvAsync(id, 0, Random16.Bf16(new Random(2), 10 * 576));
        await server.Client.DecodeOnceAsync(new DecodeInput(0, [id], 1, 2, Random16.Bf16(new Random(3), 2 * 576)));
        await Assert.ThrowsAsync<RpcException>(() => server.Client.FreeAsync(999));

        using var http = new HttpClient();
        string text = await http.GetStringAsync(server.MetricsAddress + "/metrics");
        Assert.Contains("flashmla_decode_requests_total", text);
        Assert.Contains("flashmla_decode_queue_wait_seconds_bucket", text);
        Assert.Contains("flashmla_kv_blocks_used", text);
        Assert.Matches("flashmla_requests_failed_total\\{[^}]*code=\"NotFound\"", text);
        Assert.Equal("Healthy", await http.GetStringAsync(server.MetricsAddress + "/healthz"));
    }
}
