using FlashMla.Cli;
using FlashMla.Client;

namespace FlashMla.Server.Tests;

/// <summary>The ingest-under-decode bench (flashmla ingest-bench) runs on the CPU backend over the data-plane port.</summary>
public sealed class IngestBenchTests
{
    [Fact]
    public async Task Ingest_bench_decodes_alone_and_beside_ingest_and_counts_the_rows_it_streamed()
    {
        await using var server = await TestServer.StartAsync(("TotalBlocks", 256), ("Layers", 2));
        var options = new FlashMlaClientOptions { DecodeAddress = server.DataPlaneAddress };
        using var decoder = new FlashMlaClient(server.GrpcAddress, options);
        using var ingester = new FlashMlaClient(server.GrpcAddress, options);
        var settings = new IngestSettings(Batch: 4, Heads: 16, Context: 128, IngestTokens: 1024, IngestLayers: 2, RowsPerChunk: 256, Seconds: 0.3);

        var report = await IngestUnderDecode.RunAsync(decoder, ingester, settings, CancellationToken.None).WaitAsync(TimeSpan.FromSeconds(60));

        Assert.True(report.AloneUs.Length >= 5 && report.BesideUs.Length >= 5);
        Assert.True(report.AloneP50Us > 0 && report.BesideP50Us > 0);
        Assert.True(report.IngestCalls >= 1);
        Assert.Equal(report.IngestCalls * 1024L * 2 * 1152, report.IngestBytes);
        Assert.True(report.IngestGBps > 0);
        // Everything it made is gone again: the decoded sequences and every ingested one.
        var stats = await server.Client.GetStatsAsync();
        Assert.Equal(0u, stats.Sequences);
        Assert.Equal(stats.TotalBlocks, stats.FreeBlocks);
    }
}
