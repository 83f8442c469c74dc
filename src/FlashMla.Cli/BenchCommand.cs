using System.CommandLine;
using System.Diagnostics;
using System.Text;
using FlashMla.Client;
using FlashMla.Client.Transport;
using FlashMla.Core.Tensors;
using Spectre.Console;

namespace FlashMla.Cli;

/// <summary>
/// Load generator: N concurrent decode streams (each on its own connection), each with several requests in
/// flight over its own groups of sequences prefilled to the context length. Prints live progress, then
/// steps/s, tokens/s, latency percentiles and payload MB/s, and can write a results file.
/// </summary>
internal static class BenchCommand
{
    public static Command Create(ConnectionArguments connection)
    {
        var streams = new Option<int>("--streams") { Description = "Concurrent decode streams (one connection each)", DefaultValueFactory = _ => 4 };
        var inflight = new Option<int>("--inflight") { Description = "Requests in flight per stream", DefaultValueFactory = _ => 2 };
        var batch = new Option<int>("--batch") { Description = "Sequences per request (b)", DefaultValueFactory = _ => 8 };
        var context = new Option<int>("--context") { Description = "Tokens per sequence before the run (s_k)", DefaultValueFactory = _ => 1024 };
        var heads = new Option<int>("--heads") { Description = "Query heads (h_q)", DefaultValueFactory = _ => 16 };
        var queryTokens = new Option<int>("--sq") { Description = "Query tokens per sequence per step (s_q)", DefaultValueFactory = _ => 1 };
        var seconds = SecondsOption.Create("--seconds", "How long to run", 10);
        var append = new Option<bool>("--append") { Description = "Send the new KV rows with each step (the sequences grow)", DefaultValueFactory = _ => false };
        var output = new Option<string?>("--out") { Description = ResultsFile.OutDescription };
        var transport = TransportOption.Create("HTTP/2 client: large-frames or sockets");
        var command = new Command("bench", "Decode load: concurrent streams, pipelined requests, latency and throughput")
            { streams, inflight, batch, context, heads, queryTokens, seconds, append, output, transport };
        command.SetAction((parse, token) => connection.RunAsync(parse, server =>
        {
            var chosen = TransportOption.ParseList(parse.GetValue(transport)!);
            if (chosen is not [var single])
            {
                if (chosen is not null) AnsiConsole.MarkupLine("[red]bench takes one --transport; bench-matrix compares several[/]");
                return Task.FromResult(2);
            }
            return RunAsync(new Settings(server, parse.GetValue(streams), parse.GetValue(inflight),
                parse.GetValue(batch), parse.GetValue(context), parse.GetValue(heads), parse.GetValue(queryTokens), parse.GetValue(seconds),
                parse.GetValue(append), parse.GetValue(output), single), token);
        }));
        return command;
    }

    private sealed record Settings(ServerConnection Server, int Streams, int InFlight, int Batch, int Context, int Heads, int QueryTokens,
        double Seconds, bool Append, string? Output, ClientTransport Transport)
    {
        public string Address => Server.Address;
        public string? DecodeAddress => Server.DecodeAddress;
    }

    private static async Task<int> RunAsync(Settings s, CancellationToken cancellationToken)
    {
        if (s.Streams < 1 || s.InFlight < 1 || s.Batch < 1 || s.Context < 1 || s.Heads < 1 || s.QueryTokens < 1 || s.Seconds <= 0)
        {
            AnsiConsole.MarkupLine("[red]streams, inflight, batch, context, heads, sq and seconds must be positive[/]");
            return 2;
        }
        var clients = Enumerable.Range(0, s.Streams).Select(_ => new FlashMlaClient(s.Address, s.Server.ClientOptions() with { Transport = s.Transport })).ToArray();
        try
        {
            var config = await clients[0].GetConfigAsync(cancellationToken);
            AnsiConsole.MarkupLine($"bench against [bold]{config.Backend}[/] ({Markup.Escape(config.Device)}; {KvCacheDescription.Of(config)}): {s.Streams} streams x {s.InFlight} in flight, " +
                $"b={s.Batch} s_k={s.Context} h_q={s.Heads} s_q={s.QueryTokens}, {s.Seconds:F0} s");

            // Each (stream, slot) owns its own sequences, so in-flight requests never wait on each other's appends.
            var random = new Random(7);
            var groups = new ulong[s.Streams][][];
            await AnsiConsole.Status().StartAsync("prefilling", async ctx =>
            {
                for (int c = 0; c < s.Streams; c++)
                {
                    groups[c] = new ulong[s.InFlight][];
                    for (int k = 0; k < s.InFlight; k++)
                    {
                        ctx.Status($"prefilling stream {c + 1}/{s.Streams}, group {k + 1}/{s.InFlight}");
                        var lengths = Enumerable.Repeat(s.Context, s.Batch).ToArray();
                        groups[c][k] = (await Workload.CreateAsync(clients[c], random, lengths, [0], (int)config.NumLayers, cancellationToken)).Ids;
                    }
                }
            });

            long qCount = (long)s.Batch * s.QueryTokens * s.Heads * MlaDims.HeadDimK;
            var q = Workload.RandomBf16(random, qCount);
            var kv = s.Append ? Workload.RandomBf16(random, (long)s.Batch * s.QueryTokens * MlaDims.HeadDimK) : [];
            long bytesUp = (q.Length + kv.Length) * 2L;
            var recorder = new Recorder();
            using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            stop.CancelAfter(TimeSpan.FromSeconds(s.Seconds));
            var clock = Stopwatch.StartNew();
            var workers = new List<Task>();
            var decodeStreams = clients.Select(c => c.OpenDecodeStream(cancellationToken)).ToArray();
            for (int c = 0; c < s.Streams; c++)
                for (int k = 0; k < s.InFlight; k++)
                {
                    var stream = decodeStreams[c];
                    var input = new DecodeInput(0, groups[c][k], s.QueryTokens, s.Heads, q, kv);
                    workers.Add(Task.Run(async () =>
                    {
                        while (!stop.IsCancellationRequested)
                        {
                            long start = Stopwatch.GetTimestamp();
                            using var result = await stream.DecodeAsync(input, cancellationToken);
                            recorder.Add(Stopwatch.GetElapsedTime(start).TotalMicroseconds, bytesUp, result.PayloadBytes, result.Timings.ComputeUs,
                                result.Timings.BatchSequences);
                        }
                    }, cancellationToken));
                }
            var all = Task.WhenAll(workers);
            await AnsiConsole.Status().StartAsync("running", async ctx =>
            {
                while (!all.IsCompleted)
                {
                    await Task.WhenAny(all, Task.Delay(500, CancellationToken.None));
                    var snap = recorder.Snapshot();
                    ctx.Status($"{clock.Elapsed.TotalSeconds:F1} s: {snap.Count} steps, {snap.Count / clock.Elapsed.TotalSeconds:F0} steps/s, " +
                        $"p50 {snap.Percentile(0.5) / 1000:F2} ms");
                }
            });
            await all;
            double elapsed = clock.Elapsed.TotalSeconds;
            foreach (var stream in decodeStreams) await stream.DisposeAsync();

            var final = recorder.Snapshot();
            double steps = final.Count / elapsed;
            var table = new Table().AddColumns("figure", "value");
            var rows = new (string, string)[]
            {
                ("steps/s", $"{steps:F1}"),
                ("query tokens/s", $"{steps * s.Batch * s.QueryTokens:F0}"),
                ("KV tokens attended/s", $"{steps * s.Batch * (double)s.Context:E3}"),
                ($"KV cache bytes attended/s ({KvCacheDescription.DtypeName(config)}, {config.KvBytesPerToken} B/token)",
                    $"{steps * s.Batch * (double)s.Context * config.KvBytesPerToken:E3}"),
                ("latency p50 (ms)", $"{final.Percentile(0.5) / 1000:F2}"),
                ("latency p99 (ms)", $"{final.Percentile(0.99) / 1000:F2}"),
                ("server compute per batch, mean (ms)", $"{final.MeanComputeUs / 1000:F2}"),
                ("sequences per backend batch, mean", $"{final.MeanBatchSequences:F1}"),
                ("payload up (MB/s)", $"{final.BytesUp / elapsed / 1e6:F1}"),
                ("payload down (MB/s)", $"{final.BytesDown / elapsed / 1e6:F1}"),
            };
            foreach (var (name, value) in rows) table.AddRow(name, value);
            AnsiConsole.Write(table);
            if (s.Output is { } path) WriteResults(path, s, config, elapsed, rows);
            foreach (var group in groups.SelectMany(g => g))
                foreach (ulong id in group) await clients[0].FreeAsync(id, CancellationToken.None);
            return 0;
        }
        finally
        {
            foreach (var c in clients) c.Dispose();
        }
    }

    private static void WriteResults(string path, Settings s, Contracts.V1.ServiceConfig config, double elapsed, (string, string)[] rows)
    {
        var text = new StringBuilder();
        text.AppendLine($"## bench {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC on {Environment.MachineName} ({Environment.ProcessorCount} cores, {System.Runtime.InteropServices.RuntimeInformation.OSDescription})");
        text.AppendLine();
        text.AppendLine($"Server: backend {config.Backend} ({config.Device}), {KvCacheDescription.Of(config)}, {s.Address}, transport {TransportOption.Name(s.Transport)}. Load: {s.Streams} streams x {s.InFlight} in flight, " +
            $"b={s.Batch}, s_k={s.Context}, h_q={s.Heads}, s_q={s.QueryTokens}, append={s.Append}, {elapsed:F1} s.");
        text.AppendLine();
        text.AppendLine("| figure | value |");
        text.AppendLine("| --- | --- |");
        foreach (var (name, value) in rows) text.AppendLine($"| {name} | {value} |");
        text.AppendLine();
        ResultsFile.Append(path, text.ToString());
        AnsiConsole.MarkupLine($"results appended to {Markup.Escape(path)}");
    }

    /// <summary>Latencies and byte counts from many workers; locked, since it is touched once per step.</summary>
    private sealed class Recorder
    {
        private readonly List<double> _latencies = [];
        private long _bytesUp, _bytesDown;
        private double _computeUs, _batchSequences;

        public void Add(double latencyUs, long up, long down, double computeUs, uint batchSequences)
        {
            lock (_latencies)
            {
                _latencies.Add(latencyUs);
                _bytesUp += up;
                _bytesDown += down;
                _computeUs += computeUs;
                _batchSequences += batchSequences;
            }
        }

        public Snap Snapshot()
        {
            lock (_latencies)
            {
                var sorted = _latencies.ToArray();
                Array.Sort(sorted);
                int n = Math.Max(sorted.Length, 1);
                return new Snap(sorted, _bytesUp, _bytesDown, _computeUs / n, _batchSequences / n);
            }
        }
    }

    private sealed record Snap(double[] Sorted, long BytesUp, long BytesDown, double MeanComputeUs, double MeanBatchSequences)
    {
        public int Count => Sorted.Length;
        public double Percentile(double p) => Sorted.Length == 0 ? 0 : Sorted[Math.Min(Sorted.Length - 1, (int)(p * Sorted.Length))];
    }
}
