using System.Text.RegularExpressions;
using FlashMla.Client;

namespace FlashMla.Server.Tests;

/// <summary>The dashboards and alert rules in deploy/ use only metrics the server really exports.</summary>
public sealed class DeployMetricsTests
{
    [Fact]
    public async Task Every_metric_used_by_the_dashboard_and_rules_is_exported()
    {
        string repo = RepositoryRoot();
        var used = File.ReadAllLines(Path.Combine(repo, "deploy", "metrics-used.txt"))
            .Select(l => l.Trim()).Where(l => l.Length > 0 && !l.StartsWith('#')).ToArray();
        Assert.NotEmpty(used);

        // A short lease so that a reclaim happens; every other counter and histogram gets an event below.
        await using var server = await TestServer.StartAsync(("SequenceLeaseSeconds", 3));
        ulong id = await server.Client.CreateSequenceAsync();
        await server.Client.AppendKvAsync(id, 0, Random16.Bf16(new Random(1), 5 * 576));
        await server.Client.DecodeOnceAsync(new DecodeInput(0, [id], 1, 2, Random16.Bf16(new Random(2), 2 * 576), Random16.Bf16(new Random(3), 576)));
        await Assert.ThrowsAsync<Grpc.Core.RpcException>(() => server.Client.FreeAsync(424242));
        await server.Client.CreateSequenceAsync();
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while ((await server.Client.GetStatsAsync()).ReclaimedSequences == 0 && DateTime.UtcNow < deadline) await Task.Delay(100);

        using var http = new HttpClient();
        string text = await http.GetStringAsync(server.MetricsAddress + "/metrics");
        var exported = Regex.Matches(text, @"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{| )", RegexOptions.Multiline).Select(m => m.Groups[1].Value).ToHashSet();
        var missing = used.Where(name => !exported.Contains(name)).ToArray();
        Assert.True(missing.Length == 0, "not exported: " + string.Join(", ", missing));
    }

    private static string RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "FlashMlaService.sln"))) return dir.FullName;
        throw new InvalidOperationException("FlashMlaService.sln not found above " + AppContext.BaseDirectory);
    }
}
