using System.CommandLine;
using System.Text;
using FlashMla.Client;
using FlashMla.Client.Transport;
using Spectre.Console;

namespace FlashMla.Cli;

/// <summary>
/// <c>flashmla ingest-bench</c>: decode latency with and without a concurrent KV ingest, and the ingest's GB/s
/// (<see cref="IngestUnderDecode"/>). Give <c>--decode-address</c> (the data-plane port) to measure the path a prefill
/// node's KV takes.
/// </summary>
internal static class IngestBenchCommand
{
    public static Command Create(ConnectionArguments connection)
    {
        var batch = new Option<int>("--batch") { Description = "Sequences per decode request (b)", DefaultValueFactory = _ => 32 };
        var heads = new Option<int>("--heads") { Description = "Query heads (h_q)", DefaultValueFactory = _ => 16 };
        var context = new Option<int>("--context") { Description = "Tokens per decoded sequence (s_k)", DefaultValueFactory = _ => 4096 };
        var tokens = new Option<int>("--ingest-tokens") { Description = "Rows per layer of each ingested sequence", DefaultValueFactory = _ => 32768 };
        var layers = new Option<int>("--ingest-layers") { Description = "Layers each ingested sequence fills", DefaultValueFactory = _ => 4 };
        var chunk = new Option<int>("--rows-per-chunk") { Description = "Rows per AppendKv message", DefaultValueFactory = _ => FlashMlaClient.DefaultRowsPerChunk };
        var seconds = SecondsOption.Create("--seconds", "Decode time per phase (alone, then beside ingest)", 10);
        var output = new Option<string?>("--out") { Description = ResultsFile.OutDescription };
        var command = new Command("ingest-bench", "Decode p50 alone and while another client streams AppendKv, and the ingest's GB/s")
            { batch, heads, context, tokens, layers, chunk, seconds, output };
        command.SetAction((parse, token) => connection.RunAsync(parse, server => RunAsync(server,
            new IngestSettings(parse.GetValue(batch), parse.GetValue(heads), parse.GetValue(context), parse.GetValue(tokens), parse.GetValue(layers),
                parse.GetValue(chunk), parse.GetValue(seconds)), parse.GetValue(output), token)));
        return command;
    }

    private static async Task<int> RunAsync(ServerConnection server, IngestSettings s, string? output, CancellationToken cancellationToken)
    {
        var (address, decodeAddress) = (server.Address, server.DecodeAddress);
        if (s.Batch < 1 || s.Heads < 1 || s.Context < 1 || s.IngestTokens < 1 || s.IngestLayers < 1 || s.RowsPerChunk < 1 || s.Seconds <= 0)
        {
            AnsiConsole.MarkupLine("[red]every size and --seconds must be positive[/]");
            return 2;
        }
        var options = server.ClientOptions();
        using var decoder = new FlashMlaClient(address, options);
        using var ingester = new FlashMlaClient(address, options);
        var config = await decoder.GetConfigAsync(cancellationToken);
        if (s.IngestLayers > config.NumLayers)
        {
            AnsiConsole.MarkupLine($"[red]the server has {config.NumLayers} layers, fewer than --ingest-layers {s.IngestLayers}[/]");
            return 2;
        }
        AnsiConsole.MarkupLine($"ingest-bench against [bold]{config.Backend}[/] ({Markup.Escape(config.Device)}): decode b={s.Batch} h_q={s.Heads} s_k={s.Context}, " +
            $"ingest {s.IngestTokens} tokens x {s.IngestLayers} layers in chunks of {s.RowsPerChunk}, {s.Seconds:F0} s per phase, via {Markup.Escape(decodeAddress ?? address)}");
        var report = await IngestUnderDecode.RunAsync(decoder, ingester, s, cancellationToken);

        var rows = new (string, string)[]
        {
            ("decode p50 alone (ms)", $"{report.AloneP50Us / 1000:F3}"),
            ("decode p50 beside ingest (ms)", $"{report.BesideP50Us / 1000:F3}"),
            ("decode p50 rise (%)", $"{report.P50RisePercent:F1}"),
            ("decode p99 alone / beside (ms)", $"{report.AloneP99Us / 1000:F3} / {report.BesideP99Us / 1000:F3}"),
            ("decode steps alone / beside", $"{report.AloneUs.Length} / {report.BesideUs.Length}"),
            ("ingest (GB/s)", $"{report.IngestGBps:F2}"),
            ("ingest calls (sequences)", $"{report.IngestCalls}"),
        };
        var table = new Table().AddColumns("figure", "value");
        foreach (var (name, value) in rows) table.AddRow(name, value);
        AnsiConsole.Write(table);
        if (output is not null)
        {
            var text = new StringBuilder();
            text.AppendLine($"## ingest-bench {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC on {Environment.MachineName} ({Environment.ProcessorCount} cores)");
            text.AppendLine();
            text.AppendLine($"Server: backend {config.Backend} ({config.Device}), via {decodeAddress ?? address}. {s}.");
            text.AppendLine();
            text.AppendLine("| figure | value |");
            text.AppendLine("| --- | --- |");
            foreach (var (name, value) in rows) text.AppendLine($"| {name} | {value} |");
            text.AppendLine();
            ResultsFile.Append(output, text.ToString());
            AnsiConsole.MarkupLine($"results appended to {Markup.Escape(output)}");
        }
        return 0;
    }
}
