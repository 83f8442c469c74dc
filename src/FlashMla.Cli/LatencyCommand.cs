using System.CommandLine;
using System.Diagnostics;
using System.Reflection;
using System.Text;
using FlashMla.Client;
using FlashMla.Client.Transport;
using FlashMla.Core.Tensors;
using Spectre.Console;

namespace FlashMla.Cli;

/// <summary>
/// The per-call round trip (issue 15): for each shape, one request in flight on one decode stream, then 2, 3, 4 (each
/// in flight on its own set of sequences, as a model host's micro-batches are), a few seconds each. Per row: calls/s,
/// p50/p99 of the round trip as the client sees it, and where the time went per call from the response's timings
/// (receive, queue, compute, respond on the server; upload, kernel, download on the device; the wire and the
/// client as the rest). Beside each shape, in the same run, its floor: a raw loopback TCP ping-pong of the same
/// request and response sizes plus the kernel time, and the ratio of the p50 to that floor.
/// Steps attend without appending, so the lengths stay at s_k.
/// </summary>
internal static class LatencyCommand
{
    public static Command Create(ConnectionArguments connection)
    {
        var shapes = new Option<string>("--shapes")
            { Description = "Shapes, comma-separated, each BxH: b sequences per request, h_q heads", DefaultValueFactory = _ => "1x16,32x16,128x16,128x128" };
        var inflight = new Option<string>("--inflight") { Description = "Requests in flight on the one stream, comma-separated", DefaultValueFactory = _ => "1,2,3,4" };
        var context = new Option<int>("--context") { Description = "Tokens per sequence (s_k)", DefaultValueFactory = _ => 4096 };
        var seconds = SecondsOption.Create("--seconds", "Measured seconds per row", 2);
        var warmup = SecondsOption.Create("--warmup", "Unmeasured seconds before each row", 0.5);
        var floorSeconds = SecondsOption.Create("--floor-seconds", "Raw TCP ping-pong per shape, seconds", 1);
        var shared = new Option<bool>("--shared-sequences")
            { Description = "Every request in flight on the same b sequences (they then never merge in the batcher); default: a set each" };
        var commit = new Option<string?>("--commit") { Description = "The commit to name in the results (default: the one this CLI was built from)" };
        var output = new Option<string?>("--out") { Description = ResultsFile.OutDescription };
        var command = new Command("latency",
            "Round trip per decode call against a running server (put --decode-address on its data-plane port): 1..4 in flight on one stream, " +
            "p50/p99, the server's breakdown per call, and the floor (raw TCP ping-pong of the same sizes + kernel) measured in the same run")
            { shapes, inflight, context, seconds, warmup, floorSeconds, shared, commit, output };
        command.SetAction((parse, token) => connection.RunAsync(parse, server =>
        {
            var parsed = ParseShapes(parse.GetValue(shapes)!);
            if (parsed is null || IntListOption.Parse("--inflight", parse.GetValue(inflight)!, min: 1) is not { } inFlight)
                return Task.FromResult(ConnectionArguments.UsageError);
            return RunAsync(new Settings(server, parsed, inFlight,
                parse.GetValue(context), parse.GetValue(seconds), parse.GetValue(warmup), parse.GetValue(floorSeconds), parse.GetValue(shared),
                parse.GetValue(commit) is { Length: > 0 } named ? named : BuiltFromCommit(), parse.GetValue(output)), token);
        }));
        return command;
    }

    private sealed record Settings(ServerConnection Server, (int Batch, int Heads)[] Shapes, int[] InFlight, int Context,
        double Seconds, double Warmup, double FloorSeconds, bool SharedSequences, string Commit, string? Output)
    {
        public string Address => Server.Address;
        public string? DecodeAddress => Server.DecodeAddress;
    }

    /// <summary>"BxH" pairs, or null (after printing why).</summary>
    internal static (int Batch, int Heads)[]? ParseShapes(string text)
    {
        var result = new List<(int, int)>();
        foreach (string item in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var parts = item.Split('x', 'X');
            if (parts.Length != 2 || !int.TryParse(parts[0], out int b) || !int.TryParse(parts[1], out int h) || b < 1 || h < 1)
            {
                AnsiConsole.MarkupLine($"[red]--shapes: '{Markup.Escape(item)}' is not BxH with positive b and h_q (e.g. 32x16)[/]");
                return null;
            }
            result.Add((b, h));
        }
        if (result.Count == 0) AnsiConsole.MarkupLine("[red]--shapes names no shape[/]");
        return result.Count == 0 ? null : [.. result];
    }

    /// <summary>The commit in this assembly's informational version (the SDK adds it when building from git), or "unknown".</summary>
    internal static string BuiltFromCommit()
    {
        string? version = Assembly.GetExecutingAssembly().GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion;
        int plus = version?.IndexOf('+') ?? -1;
        if (version is null || plus < 0) return "unknown";
        string hash = version[(plus + 1)..];
        return hash.Length > 12 ? hash[..12] : hash;
    }

    private static async Task<int> RunAsync(Settings s, CancellationToken cancellationToken)
    {
        if (s.InFlight.Length == 0 || s.InFlight.Any(n => n < 1) || s.Context < 1 || s.Seconds <= 0 || s.Warmup < 0 || s.FloorSeconds <= 0)
        {
            AnsiConsole.MarkupLine("[red]inflight, context, seconds and floor-seconds must be positive[/]");
            return 2;
        }
        using var admin = new FlashMlaClient(s.Address, s.Server.CacheClientOptions());
        var config = await admin.GetConfigAsync(cancellationToken);
        string port = s.DecodeAddress is null ? $"the gRPC port ({s.Address})" : $"{s.DecodeAddress}";
        AnsiConsole.MarkupLine($"latency against [bold]{config.Backend}[/] ({Markup.Escape(config.Device)}): decode on {Markup.Escape(port)}, s_k={s.Context}, " +
            $"one stream, {string.Join("/", s.InFlight)} in flight, {s.Seconds:F1} s per row, commit {Markup.Escape(s.Commit)}");

        int maxBatch = s.Shapes.Max(shape => shape.Batch);
        int sets = s.SharedSequences ? 1 : s.InFlight.Max();
        var random = new Random(7);
        var prefill = Stopwatch.StartNew();
        var ids = await Workload.PrefillAsync(admin, random, sets * maxBatch, s.Context, cancellationToken);
        AnsiConsole.MarkupLine($"prefilled {ids.Length} sequences x {s.Context} tokens in {prefill.Elapsed.TotalSeconds:F1} s");

        var rows = new List<LatencyRow>();
        try
        {
            foreach (var (b, h) in s.Shapes)
            {
                var q = Workload.RandomBf16(random, (long)b * h * MlaDims.HeadDimK);
                var inputs = Enumerable.Range(0, sets).Select(k => new DecodeInput(0, ids[(k * maxBatch)..(k * maxBatch + b)], 1, h, q)).ToArray();
                // The floor's sizes: the tensors each way (the messages' few other bytes do not count at these sizes).
                int requestBytes = b * h * MlaDims.HeadDimK * sizeof(ushort);
                int responseBytes = b * h * (MlaDims.HeadDimV * sizeof(ushort) + sizeof(float));
                var pingPong = Percentiles.Of(await TcpBenchCommand.PingPongAsync(requestBytes, responseBytes, s.FloorSeconds, cancellationToken));
                foreach (int n in s.InFlight)
                {
                    var calls = await RunRowAsync(s, inputs, n, cancellationToken);
                    var row = LatencyRow.From(b, h, n, s.Seconds, calls, pingPong.P50);
                    rows.Add(row);
                    AnsiConsole.MarkupLine($"b={b} h_q={h} in flight {n}: {row.CallsPerSecond:F0} calls/s, p50 {row.P50Us:F0} us, p99 {row.P99Us:F0} us; " +
                        $"server {row.Mean.Server:F0} (receive {row.Mean.Receive:F0}, queue {row.Mean.Queue:F0}, compute {row.Mean.Compute:F0}, respond {row.Mean.Respond:F0}), " +
                        $"wire+client {row.Mean.WireAndClient:F0}; floor {row.FloorUs:F0} us (TCP {row.PingPongP50Us:F0} + kernel {row.KernelP50Us:F0}), p50/floor {row.Ratio:F2}");
                }
            }
        }
        finally
        {
            foreach (ulong id in ids) await admin.FreeAsync(id, CancellationToken.None);
        }

        if (s.Output is { } path)
        {
            ResultsFile.Append(path, LatencyReport.Markdown(s.Context, s.Seconds, s.Warmup, s.FloorSeconds, s.SharedSequences, s.Commit,
                $"{config.Backend} ({config.Device})", port, rows));
            AnsiConsole.MarkupLine($"results appended to {Markup.Escape(path)}");
        }
        var table = new Table().AddColumns(LatencyReport.ShortColumns);
        foreach (var row in rows) table.AddRow(LatencyReport.ShortCells(row));
        AnsiConsole.Write(table);
        return 0;
    }

    /// <summary>One row: <paramref name="inFlight"/> workers on one stream, each sending its next request as soon as its last returns.</summary>
    private static async Task<List<CallTiming>> RunRowAsync(Settings s, DecodeInput[] inputs, int inFlight, CancellationToken cancellationToken)
    {
        using var client = new FlashMlaClient(s.Address, s.Server.ClientOptions());
        await using var stream = client.OpenDecodeStream(cancellationToken);
        var calls = new List<CallTiming>();
        bool measuring = false;
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var workers = Enumerable.Range(0, inFlight).Select(k => Task.Run(async () =>
        {
            var input = inputs[k % inputs.Length];
            var local = new List<CallTiming>();
            while (!stop.IsCancellationRequested)
            {
                long start = Stopwatch.GetTimestamp();
                using var result = await stream.DecodeAsync(input, cancellationToken);
                double roundTrip = Stopwatch.GetElapsedTime(start).TotalMicroseconds;
                if (Volatile.Read(ref measuring)) local.Add(CallTiming.Of(roundTrip, result.Timings));
            }
            lock (calls) calls.AddRange(local);
        }, cancellationToken)).ToArray();
        await Task.Delay(TimeSpan.FromSeconds(s.Warmup), cancellationToken);
        Volatile.Write(ref measuring, true);
        await Task.Delay(TimeSpan.FromSeconds(s.Seconds), cancellationToken);
        Volatile.Write(ref measuring, false);
        stop.Cancel();
        await Task.WhenAll(workers);
        return calls;
    }
}
