using System.CommandLine;
using System.Diagnostics;
using System.Text;
using FlashMla.Client;
using FlashMla.Client.Transport;
using FlashMla.Core.Tensors;
using Spectre.Console;

namespace FlashMla.Cli;

/// <summary>
/// The data-plane benchmark: one prefilled set of sequences, then every combination of batch size, heads
/// and client connections, each for a few seconds with several requests in flight per stream, once per client
/// transport and per decode port (--decode-address: the server's gRPC port, its data-plane port, or both). Per row:
/// steps/s, KV tokens attended/s, tensor payload GB/s each way, step latency p50/p99, the server's backend
/// time per call (compute_us) and how busy the backend was, and (with --tcp-seconds) raw loopback TCP
/// throughput over the same number of connections measured in the same run.
/// Steps attend without appending, so every in-flight request can share the one set of sequences.
/// </summary>
internal static class BenchMatrixCommand
{
    public static Command Create(ConnectionArguments connection)
    {
        var batches = new Option<string>("--batch") { Description = "Sequences per request, comma-separated", DefaultValueFactory = _ => "32,128" };
        var heads = new Option<string>("--heads") { Description = "Query heads, comma-separated", DefaultValueFactory = _ => "16,128" };
        var connections = new Option<string>("--connections") { Description = "Client connections, comma-separated", DefaultValueFactory = _ => "1,2,4,8" };
        var context = new Option<int>("--context") { Description = "Tokens per sequence (s_k)", DefaultValueFactory = _ => 4096 };
        var streams = new Option<int>("--streams-per-connection") { Description = "Decode streams on each connection", DefaultValueFactory = _ => 1 };
        var inflight = new Option<int>("--inflight") { Description = "Requests in flight per stream", DefaultValueFactory = _ => 4 };
        var seconds = SecondsOption.Create("--seconds", "Measured seconds per row", 3);
        var warmup = SecondsOption.Create("--warmup", "Unmeasured seconds before each row", 0.5);
        var tcpSeconds = SecondsOption.Create("--tcp-seconds", "Raw TCP measurement per connection count (0: none)", 1.5);
        var output = new Option<string?>("--out") { Description = ResultsFile.OutDescription };
        var distinct = new Option<bool>("--distinct-sequences")
        {
            Description = "Every request in flight decodes its own b sequences (as separate model hosts would), so the server's batcher " +
                "can merge concurrent requests; default: all share one set, which never merges (a batch holds a sequence once)",
        };
        var grpcClient = new Option<bool>("--grpc-client")
            { Description = "Decode through Grpc.Net.Client (FlashMlaClientOptions.DirectDecode = false) instead of the library's direct gRPC path" };
        var streamWindow = new Option<int>("--client-stream-window-mib")
            { Description = "large-frames client: receive window per stream, MiB (the library's default: 16)", DefaultValueFactory = _ => 16 };
        var transports = TransportOption.Create("HTTP/2 client(s), comma-separated, each measured on every row: large-frames, sockets");
        var command = new Command("bench-matrix", "Data-plane benchmark: b x h_q x connections x transport x decode port, with raw TCP for reference. " +
            "--decode-address takes a comma-separated list here: 'grpc' (decode on --address) and/or the data-plane address(es), each measured on every row")
            { batches, heads, connections, context, streams, inflight, seconds, warmup, tcpSeconds, output, transports, streamWindow, grpcClient, distinct };
        command.SetAction((parse, token) => connection.RunAsync(parse, server =>
        {
            var chosen = TransportOption.ParseList(parse.GetValue(transports)!);
            string mainAddress = server.Address;
            var decodeTargets = ParseDecodeTargets(mainAddress, server.DecodeAddress);
            if (chosen is null || decodeTargets is null) return Task.FromResult(ConnectionArguments.UsageError);
            if (IntListOption.Parse("--batch", parse.GetValue(batches)!, min: 1) is not { } batchList
                || IntListOption.Parse("--heads", parse.GetValue(heads)!, min: 1) is not { } headList
                || IntListOption.Parse("--connections", parse.GetValue(connections)!, min: 1) is not { } connectionList)
                return Task.FromResult(ConnectionArguments.UsageError);
            return RunAsync(new Settings(mainAddress, batchList, headList, connectionList, parse.GetValue(context), parse.GetValue(streams),
                parse.GetValue(inflight), parse.GetValue(seconds), parse.GetValue(warmup), parse.GetValue(tcpSeconds), parse.GetValue(output), chosen,
                decodeTargets) { StreamWindowMiB = parse.GetValue(streamWindow), DirectDecode = !parse.GetValue(grpcClient), DistinctSequences = parse.GetValue(distinct),
                    Server = server }, token);
        }));
        return command;
    }

    /// <summary>
    /// Where one row's decode calls go: <see cref="Address"/> is null for the main address (the server's gRPC port),
    /// else the data-plane address handed to <see cref="FlashMlaClientOptions.DecodeAddress"/>; <see cref="Label"/> names it in the tables.
    /// </summary>
    private sealed record DecodeTarget(string? Address, string Label);

    /// <summary>
    /// The decode targets named in <paramref name="text"/> (comma-separated: 'grpc' for the main address, or absolute
    /// http(s) URIs; absent: the main address only), or null (after printing why) when one is neither.
    /// </summary>
    private static DecodeTarget[]? ParseDecodeTargets(string mainAddress, string? text)
    {
        if (!Uri.TryCreate(mainAddress, UriKind.Absolute, out var main))
        {
            AnsiConsole.MarkupLine($"[red]--address '{Markup.Escape(mainAddress)}' is not an absolute URI[/]");
            return null;
        }
        // Rows over TLS say so: a TLS and a cleartext run of the same rows sit side by side in one results file.
        static string Over(Uri uri) => uri.Scheme == Uri.UriSchemeHttps ? " tls" : "";
        var grpc = new DecodeTarget(null, $"grpc{Over(main)} :{main.Port}");
        if (text is null) return [grpc];
        var result = new List<DecodeTarget>();
        foreach (string name in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (string.Equals(name, "grpc", StringComparison.OrdinalIgnoreCase)) { result.Add(grpc); continue; }
            if (!Uri.TryCreate(name, UriKind.Absolute, out var uri) || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps))
            {
                AnsiConsole.MarkupLine($"[red]--decode-address '{Markup.Escape(name)}' is neither 'grpc' nor an http(s) URI[/]");
                return null;
            }
            // The main address spelled out is the gRPC port, not a second listener: same channel set-up as 'grpc'.
            bool isMain = Uri.Compare(uri, main, UriComponents.SchemeAndServer, UriFormat.Unescaped, StringComparison.OrdinalIgnoreCase) == 0;
            result.Add(isMain ? grpc : new DecodeTarget(name, $"data-plane{Over(uri)} :{uri.Port}"));
        }
        if (result.Count == 0) AnsiConsole.MarkupLine("[red]--decode-address names no address[/]");
        return result.Count == 0 ? null : [.. result];
    }

    private sealed record Settings(string Address, int[] Batches, int[] Heads, int[] Connections, int Context, int StreamsPerConnection,
        int InFlight, double Seconds, double Warmup, double TcpSeconds, string? Output, ClientTransport[] Transports, DecodeTarget[] DecodeTargets)
    {
        public int StreamWindowMiB { get; init; } = 16;
        public bool DirectDecode { get; init; } = true;
        public bool DistinctSequences { get; init; }
        public required ServerConnection Server { get; init; }

        /// <summary>Requests in flight at once in the widest row: the sets of sequences --distinct-sequences needs.</summary>
        public int MaxWorkers => Connections.Max() * StreamsPerConnection * InFlight;
    }

    private sealed record Row(int Batch, int Heads, int Connections, ClientTransport Transport, string DecodePort, double StepsPerSecond, double KvTokensPerSecond, double UpGBps,
        double DownGBps, double P50Ms, double P99Ms, double ComputeMs, double BackendBusy, double SequencesPerCall, double TcpGBps,
        double FrameDownKiB, double FrameUpKiB, double KernelMs);

    private static async Task<int> RunAsync(Settings s, CancellationToken cancellationToken)
    {
        if (s.Batches.Length == 0 || s.Heads.Length == 0 || s.Connections.Length == 0 || s.Batches.Concat(s.Heads).Concat(s.Connections).Any(v => v < 1)
            || s.Context < 1 || s.StreamsPerConnection < 1 || s.InFlight < 1 || s.Seconds <= 0 || s.Warmup < 0 || s.TcpSeconds < 0 || s.StreamWindowMiB is < 1 or > 1024)
        {
            AnsiConsole.MarkupLine("[red]every list value, context, streams, inflight and seconds must be positive[/]");
            return 2;
        }
        using var admin = new FlashMlaClient(s.Address, s.Server.CacheClientOptions());
        var config = await admin.GetConfigAsync(cancellationToken);
        AnsiConsole.MarkupLine($"bench-matrix against [bold]{config.Backend}[/] ({Markup.Escape(config.Device)}; {KvCacheDescription.Of(config)}): s_k={s.Context}, " +
            $"{s.StreamsPerConnection} stream(s) per connection x {s.InFlight} in flight, {s.Seconds:F1} s per row, " +
            $"decode on {Markup.Escape(DescribeTargets(s.DecodeTargets))}");

        // One set of sequences for every row (the longest batch, all with the same rows: content does not matter
        // here), or with --distinct-sequences one set per request in flight.
        int maxBatch = s.Batches.Max();
        int sets = s.DistinctSequences ? s.MaxWorkers : 1;
        var random = new Random(7);
        var prefill = Stopwatch.StartNew();
        var ids = await Workload.PrefillAsync(admin, random, sets * maxBatch, s.Context, cancellationToken);
        AnsiConsole.MarkupLine($"prefilled {ids.Length} sequences x {s.Context} tokens in {prefill.Elapsed.TotalSeconds:F1} s");

        var tcp = new Dictionary<int, double>();
        var results = new List<Row>();
        try
        {
            foreach (int b in s.Batches)
                foreach (int h in s.Heads)
                {
                    var q = Workload.RandomBf16(random, (long)b * h * MlaDims.HeadDimK);
                    var inputs = Enumerable.Range(0, sets).Select(k => new DecodeInput(0, ids[(k * maxBatch)..(k * maxBatch + b)], 1, h, q)).ToArray();
                    foreach (int n in s.Connections)
                    {
                        if (s.TcpSeconds > 0 && !tcp.ContainsKey(n)) tcp[n] = await TcpBenchCommand.MeasureAsync(n, s.TcpSeconds, 4 * 1024 * 1024, cancellationToken);
                        foreach (var transport in s.Transports)
                            foreach (var target in s.DecodeTargets)
                            {
                                var row = await RunRowAsync(s, inputs, b, h, n, transport, target, tcp.GetValueOrDefault(n, double.NaN), cancellationToken);
                                results.Add(row);
                                AnsiConsole.MarkupLine($"b={b} h_q={h} conns={n} {TransportOption.Name(transport)} {target.Label}: {row.StepsPerSecond:F0} steps/s, " +
                                    $"up {row.UpGBps:F2} GB/s, down {row.DownGBps:F2} GB/s, p50 {row.P50Ms:F2} ms, p99 {row.P99Ms:F2} ms, " +
                                    $"compute {row.ComputeMs:F3} ms/call (kernels {row.KernelMs:F3}), backend busy {row.BackendBusy:P0}, TCP {row.TcpGBps:F2} GB/s, " +
                                    $"DATA frames down/up {row.FrameDownKiB:F0}/{row.FrameUpKiB:F0} KiB");
                            }
                    }
                }
        }
        finally
        {
            foreach (ulong id in ids) await admin.FreeAsync(id, CancellationToken.None);
        }

        var table = new Table().AddColumns("b", "h_q", "conns", "transport", "decode port", "steps/s", "KV tok/s", "up GB/s", "down GB/s", "p50 ms", "p99 ms",
            "compute ms/call", "backend busy", "seqs/call", "raw TCP GB/s", "frame down KiB", "frame up KiB", "kernel ms/call");
        foreach (var r in results) table.AddRow(Cells(r));
        AnsiConsole.Write(table);
        if (s.Output is { } path) WriteResults(path, s, config, results);
        return 0;
    }

    private static string[] Cells(Row r) =>
    [
        $"{r.Batch}", $"{r.Heads}", $"{r.Connections}", TransportOption.Name(r.Transport), r.DecodePort, $"{r.StepsPerSecond:F0}", $"{r.KvTokensPerSecond:E2}", $"{r.UpGBps:F2}", $"{r.DownGBps:F2}",
        $"{r.P50Ms:F2}", $"{r.P99Ms:F2}", $"{r.ComputeMs:F3}", $"{r.BackendBusy:P0}", $"{r.SequencesPerCall:F0}", $"{r.TcpGBps:F2}",
        double.IsNaN(r.FrameDownKiB) ? "n/a" : $"{r.FrameDownKiB:F0}", double.IsNaN(r.FrameUpKiB) ? "n/a" : $"{r.FrameUpKiB:F0}",
        r.KernelMs > 0 ? $"{r.KernelMs:F3}" : "n/a",
    ];

    private static async Task<Row> RunRowAsync(Settings s, DecodeInput[] inputs, int b, int h, int connections, ClientTransport transport, DecodeTarget target,
        double tcpGBps, CancellationToken cancellationToken)
    {
        var counters = new Http2TransportCounters();
        using var client = new FlashMlaClient(s.Address,
            s.Server.ClientOptions() with
            {
                Connections = connections, Transport = transport, Counters = counters, DecodeAddress = target.Address, DirectDecode = s.DirectDecode,
                LargeFrames = new LargeFrameHttp2Options
                {
                    StreamWindowSize = s.StreamWindowMiB << 20,
                    ConnectionWindowSize = Math.Max(64, 4 * s.StreamWindowMiB) << 20,
                },
            });
        var streams = Enumerable.Range(0, connections * s.StreamsPerConnection).Select(_ => client.OpenDecodeStream(cancellationToken)).ToArray();
        long qBytes = inputs[0].QBytes.Length;
        int nextWorker = -1;
        var latencies = new List<double>();
        long steps = 0, bytesDown = 0;
        double computeShare = 0, computeSum = 0, kernelSum = 0, sequencesSum = 0;
        bool measuring = false;
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var workers = streams.SelectMany(stream => Enumerable.Range(0, s.InFlight).Select(_ => Task.Run(async () =>
        {
            var input = inputs[Interlocked.Increment(ref nextWorker) % inputs.Length];
            var local = new List<double>();
            long localSteps = 0, localDown = 0;
            double localShare = 0, localCompute = 0, localKernel = 0, localSequences = 0;
            while (!stop.IsCancellationRequested)
            {
                long start = Stopwatch.GetTimestamp();
                using var result = await stream.DecodeAsync(input, cancellationToken);
                if (!Volatile.Read(ref measuring)) continue;
                local.Add(Stopwatch.GetElapsedTime(start).TotalMilliseconds);
                localSteps++;
                localDown += result.PayloadBytes;
                var t = result.Timings;
                localCompute += t.ComputeUs;
                localKernel += t.KernelUs;
                localShare += t.ComputeUs / Math.Max(1u, t.BatchRequests);
                localSequences += t.BatchSequences;
            }
            lock (latencies)
            {
                latencies.AddRange(local);
                steps += localSteps;
                bytesDown += localDown;
                computeShare += localShare;
                computeSum += localCompute;
                kernelSum += localKernel;
                sequencesSum += localSequences;
            }
        }, cancellationToken))).ToArray();

        await Task.Delay(TimeSpan.FromSeconds(s.Warmup), cancellationToken);
        Volatile.Write(ref measuring, true);
        var clock = Stopwatch.StartNew();
        long framesDown = counters.DataFramesReceived, framesUp = counters.DataFramesSent, payloadDown = counters.DataBytesReceived, payloadUp = counters.DataBytesSent;
        await Task.Delay(TimeSpan.FromSeconds(s.Seconds), cancellationToken);
        Volatile.Write(ref measuring, false);
        double elapsed = clock.Elapsed.TotalSeconds;
        framesDown = counters.DataFramesReceived - framesDown;
        framesUp = counters.DataFramesSent - framesUp;
        double frameDownKiB = framesDown == 0 ? double.NaN : (counters.DataBytesReceived - payloadDown) / (double)framesDown / 1024;
        double frameUpKiB = framesUp == 0 ? double.NaN : (counters.DataBytesSent - payloadUp) / (double)framesUp / 1024;
        stop.Cancel();
        await Task.WhenAll(workers);
        foreach (var stream in streams) await stream.DisposeAsync();

        var sorted = latencies.ToArray();
        Array.Sort(sorted);
        double Percentile(double p) => sorted.Length == 0 ? double.NaN : sorted[Math.Min(sorted.Length - 1, (int)(p * sorted.Length))];
        double n = Math.Max(1, steps);
        return new Row(b, h, connections, transport, target.Label, steps / elapsed, steps * (double)b * s.Context / elapsed, steps * (double)qBytes / elapsed / 1e9,
            bytesDown / elapsed / 1e9, Percentile(0.5), Percentile(0.99), computeSum / n / 1000, computeShare / 1e6 / elapsed, sequencesSum / n, tcpGBps,
            frameDownKiB, frameUpKiB, kernelSum / n / 1000);
    }

    private static string DescribeTargets(DecodeTarget[] targets) =>
        string.Join(", ", targets.Select(t => t.Address is null ? t.Label : $"{t.Label} ({t.Address})"));

    private static void WriteResults(string path, Settings s, Contracts.V1.ServiceConfig config, List<Row> rows)
    {
        var text = new StringBuilder();
        text.AppendLine($"## bench-matrix {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC on {Environment.MachineName} ({Environment.ProcessorCount} cores, {System.Runtime.InteropServices.RuntimeInformation.OSDescription})");
        text.AppendLine();
        text.AppendLine($"Server: backend {config.Backend} ({config.Device}), {KvCacheDescription.Of(config)}, at {s.Address}, decode on {DescribeTargets(s.DecodeTargets)}. s_k={s.Context}, s_q=1, no append; " +
            $"{s.StreamsPerConnection} stream(s) per connection, {s.InFlight} requests in flight per stream; " +
            $"decode client: {(s.DirectDecode ? "direct (the library's own gRPC over large-frames; Grpc.Net.Client over sockets)" : "Grpc.Net.Client")}, " +
            $"client stream window {s.StreamWindowMiB} MiB; " +
            $"{(s.DistinctSequences ? "every request in flight on its own sequences (they can merge in the batcher)" : "all requests on one set of sequences (they never merge)")}; " +
            $"{s.Warmup:F1} s warm-up, {s.Seconds:F1} s measured per row. " +
            "up = q bytes sent, down = out+lse bytes received (GB = 1e9 B); compute = the server's backend time per call (compute_us); " +
            "backend busy = sum over calls of compute / wall time; raw TCP = loopback, one way, 4 MiB sends, same connection count, same run; " +
            "transport = the client's HTTP/2 stack (large-frames: LargeFrameHttp2Handler, sockets: SocketsHttpHandler); frame KiB = mean DATA payload " +
            "per frame as counted by LargeFrameHttp2Handler (n/a for sockets); decode port = where the decode calls went (grpc: the server's gRPC port, " +
            "--address, served by Kestrel; data-plane: the --decode-address given, the server's data-plane listener); cache calls always go to the gRPC port; " +
            "kernel ms/call = the device time of the kernels alone for the same batches (kernel_us, from device events; n/a on the CPU backend).");
        text.AppendLine();
        text.AppendLine("| b | h_q | conns | transport | decode port | steps/s | KV tok/s | up GB/s | down GB/s | p50 ms | p99 ms | compute ms/call | backend busy | seqs/call | raw TCP GB/s | frame down KiB | frame up KiB | kernel ms/call |");
        text.AppendLine("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        foreach (var r in rows) text.AppendLine("| " + string.Join(" | ", Cells(r)) + " |");
        text.AppendLine();
        ResultsFile.Append(path, text.ToString());
        AnsiConsole.MarkupLine($"results appended to {Markup.Escape(path)}");
    }
}
