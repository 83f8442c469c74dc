using System.CommandLine;
using System.Diagnostics;
using System.Runtime.InteropServices;
using FlashMla.Client;
using Spectre.Console;

namespace FlashMla.Cli.Soak;

/// <summary>
/// The soak (issue 13): mixed load against a running server for <c>--minutes</c>, a line every <c>--interval</c> seconds
/// with the server's RSS, live GC heap, tensor-pool bytes and connections (from its /metrics) and the client's call
/// counts, then min/max/last of each figure and the slope of RSS over the last 20 minutes. scripts/soak.sh starts a
/// server on the CPU backend and runs it. Not a test: it runs for as long as it is told.
/// </summary>
internal static class SoakCommand
{
    public static Command Create(ConnectionArguments connection)
    {
        var minutes = new Option<double>("--minutes") { Description = "How long the load runs", DefaultValueFactory = _ => 30 };
        var interval = SecondsOption.Create("--interval", "Seconds between lines", 10);
        var metrics = new Option<string?>("--metrics-address") { Description = "The server's metrics port (default: --address's host, port 9090)" };
        var batch = new Option<int>("--batch") { Description = "Sequences per decode", DefaultValueFactory = _ => 4 };
        var heads = new Option<int>("--heads") { Description = "h_q of the decodes", DefaultValueFactory = _ => 8 };
        var context = new Option<int>("--context") { Description = "Tokens per sequence the decodes attend over", DefaultValueFactory = _ => 256 };
        var pause = new Option<int>("--pause-ms") { Description = "Pause between calls in each load task (keeps the CPU backend's compute small)", DefaultValueFactory = _ => 20 };
        var abuseEvery = SecondsOption.Create("--abuse-every", "Seconds between abusive acts", 2);
        var flat = new Option<double>("--flat-mb") { Description = "Largest RSS and heap slope over the last 20 minutes, MB per 10 minutes, that counts as flat", DefaultValueFactory = _ => 10 };
        var secondToken = new Option<string?>("--second-token") { Description = "A second tenant's token: the load runs once per tenant" };
        var quotaToken = new Option<string?>("--quota-token") { Description = "A tenant with a small sequence quota, for the abusive client to exhaust" };
        var abuseActs = new Option<string>("--abuse-acts")
            { Description = "Abusive acts to run in turn, comma-separated: 0 cancelled unary, 1 cancelled stream, 2/3 dropped connection mid-stream (data plane/gRPC), 4 refused decodes, 5 quota, 6 another tenant's sequence, 7 unknown token", DefaultValueFactory = _ => "0,1,2,3,4,5,6,7" };
        var tableEvery = SecondsOption.Create("--table-every", "Seconds between the results file's rows", 60);
        var commit = new Option<string?>("--commit") { Description = "The commit to name in the results (default: the one this CLI was built from)" };
        var output = new Option<string?>("--out") { Description = ResultsFile.OutDescription };
        var command = new Command("soak",
            "Mixed load (both ports, cache commands, connection churn, abusive clients) for --minutes against a running server; " +
            "prints its RSS, GC heap, pool bytes, call counts and connections every --interval s, then a summary; exit 1 when calls failed or memory grew")
            { minutes, interval, metrics, batch, heads, context, pause, abuseEvery, abuseActs, flat, secondToken, quotaToken, tableEvery, commit, output };
        command.SetAction((parse, token) => connection.RunAsync(parse, server =>
        {
            if (IntListOption.Parse("--abuse-acts", parse.GetValue(abuseActs)!, min: 0, max: SoakAbuse.AllActs.Length - 1) is not { } acts)
                return Task.FromResult(ConnectionArguments.UsageError);
            string grpc = server.Address;
            var settings = new SoakSettings(grpc, server.DecodeAddress ?? WithPort(grpc, +1), parse.GetValue(metrics) ?? WithPort(grpc, 9090, absolute: true),
                parse.GetValue(minutes), parse.GetValue(interval), parse.GetValue(batch), parse.GetValue(heads), parse.GetValue(context), parse.GetValue(pause),
                parse.GetValue(abuseEvery), parse.GetValue(flat), parse.GetValue(commit) is { Length: > 0 } named ? named : LatencyCommand.BuiltFromCommit(),
                parse.GetValue(output))
            {
                Tokens = parse.GetValue(secondToken) is { Length: > 0 } second ? [server.BearerToken, second] : [server.BearerToken],
                QuotaToken = parse.GetValue(quotaToken) is { Length: > 0 } quota ? quota : null,
                AbuseActs = acts,
                Tls = server.Tls,
            };
            if (settings.Problem() is { } problem)
            {
                AnsiConsole.MarkupLine($"[red]{Markup.Escape(problem)}[/]");
                return Task.FromResult(ConnectionArguments.UsageError);
            }
            return RunAsync(settings, parse.GetValue(tableEvery), token);
        }));
        return command;
    }

    /// <summary><paramref name="address"/> with its port moved by <paramref name="port"/> (or set to it), path dropped; the address itself when unparsable (Problem says so).</summary>
    internal static string WithPort(string address, int port, bool absolute = false)
    {
        if (!Uri.TryCreate(address, UriKind.Absolute, out var uri)) return address;
        var builder = new UriBuilder(uri) { Port = absolute ? port : uri.Port + port, Path = "" };
        if (absolute) builder.Scheme = Uri.UriSchemeHttp; // the metrics port is cleartext HTTP/1.1
        return builder.Uri.ToString().TrimEnd('/');
    }

    private static async Task<int> RunAsync(SoakSettings s, double tableEvery, CancellationToken cancellationToken)
    {
        using var probe = new FlashMlaClient(s.Address, s.ClientOptions(s.Tokens[0], dataPlane: false));
        var config = await probe.GetConfigAsync(cancellationToken);
        string server = $"{config.Backend} ({config.Device})";
        string machine = $"{Environment.MachineName}, {Environment.ProcessorCount} cores, {RuntimeInformation.OSDescription}";
        Console.WriteLine($"soak against {server} for {s.Minutes} min: {s.Tokens.Count} tenant(s), b={s.Batch} h_q={s.Heads} s_k={s.Context}, commit {s.Commit}");

        var tally = new SoakTally();
        var abuseTally = new SoakTally();
        var tenants = s.Tokens.Select((token, i) => new SoakLoad(s, token, tally, seed: 7 + i)).ToList();
        foreach (var tenant in tenants) await tenant.PrepareAsync(cancellationToken);
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var churn = new SoakChurn(s, s.Tokens[0], () => new DecodeInput(0, tenants[0].SharedSequences, 1, s.Heads,
            Workload.RandomBf16(Random.Shared, (long)s.Batch * s.Heads * Core.Tensors.MlaDims.HeadDimK)), tally);
        var tasks = tenants.SelectMany(t => t.Start(stop.Token)).Append(churn.Start(stop.Token)).Append(new SoakAbuse(s, tenants, abuseTally).Start(stop.Token)).ToArray();

        var samples = new List<SoakSample>();
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
        int metricsPort = new Uri(s.MetricsAddress).Port;
        var clock = Stopwatch.StartNew();
        using (var timer = new PeriodicTimer(TimeSpan.FromSeconds(s.IntervalSeconds)))
        {
            try
            {
                while (clock.Elapsed.TotalMinutes < s.Minutes && await timer.WaitForNextTickAsync(cancellationToken))
                {
                    var figures = await ScrapeAsync(http, s.MetricsAddress, metricsPort, cancellationToken);
                    var abuseFailed = abuseTally.FailedSnapshot();
                    var sample = new SoakSample(clock.Elapsed.TotalSeconds, figures, tally.OkCount, tally.FailedSnapshot(),
                        abuseTally.OkCount + abuseFailed.Values.Sum(), abuseFailed);
                    samples.Add(sample);
                    Console.WriteLine(sample.Line());
                }
            }
            catch (OperationCanceledException)
            {
                // Ctrl-C: summarise what ran.
            }
        }
        stop.Cancel();
        await Task.WhenAll(tasks);
        foreach (var tenant in tenants) await tenant.CleanUpAsync();

        if (samples.Count == 0)
        {
            Console.WriteLine("no samples taken");
            return 1;
        }
        var summary = SoakSummary.Of(samples, s.FlatMbPer10Min);
        Console.WriteLine($"connect/call/close cycles: {churn.Cycles}");
        foreach (string line in summary.Lines()) Console.WriteLine(line);
        if (s.Output is { } path)
        {
            ResultsFile.Append(path, SoakReport.Markdown(s, server, machine, samples, summary, churn.Cycles, tableEvery));
            Console.WriteLine($"results appended to {path}");
        }
        return summary.Flat && summary.Failed == 0 ? 0 : 1;
    }

    /// <summary>The server's figures now; every figure NaN (and a line saying why) when the scrape fails.</summary>
    private static async Task<ServerFigures> ScrapeAsync(HttpClient http, string metricsAddress, int metricsPort, CancellationToken cancellationToken)
    {
        try
        {
            return ServerFigures.Parse(await http.GetStringAsync(metricsAddress + "/metrics", cancellationToken), metricsPort);
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException && !cancellationToken.IsCancellationRequested)
        {
            Console.WriteLine($"scrape of {metricsAddress}/metrics failed: {e.Message}");
            return new ServerFigures(double.NaN, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN);
        }
    }
}
