using System.CommandLine;
using FlashMla.Client;
using Spectre.Console;

namespace FlashMla.Cli;

/// <summary>
/// <c>flashmla verify</c>: random workloads through a real server (<see cref="VerifyRun"/>), every output held to the
/// double-precision reference, with the table and one machine-readable line scripts grep for.
/// </summary>
internal static class VerifyCommand
{
    public static Command Create(ConnectionArguments connection)
    {
        var cases = new Option<int>("--cases") { Description = "Random cases", DefaultValueFactory = _ => 12 };
        var maxLength = new Option<int>("--max-length") { Description = "Longest random sequence", DefaultValueFactory = _ => 2048 };
        var longLength = new Option<int>("--long") { Description = "Add one sequence this long to every other case (0: none)", DefaultValueFactory = _ => 0 };
        var seed = new Option<int>("--seed") { DefaultValueFactory = _ => 1 };
        var command = new Command("verify", "Compare the server's decode outputs with the double-precision reference on random workloads")
            { cases, maxLength, longLength, seed };
        command.SetAction((parse, token) => connection.RunAsync(parse, server => RunAsync(server,
            new VerifySettings(parse.GetValue(cases), parse.GetValue(maxLength), parse.GetValue(longLength), parse.GetValue(seed)), token)));
        return command;
    }

    private static async Task<int> RunAsync(ServerConnection server, VerifySettings settings, CancellationToken cancellationToken)
    {
        var (address, decodeAddress) = (server.Address, server.DecodeAddress);
        using var client = new FlashMlaClient(address, server.ClientOptions());
        var config = await client.GetConfigAsync(cancellationToken);
        AnsiConsole.MarkupLine($"verify the [bold]{config.Backend}[/] backend ({Markup.Escape(config.Device)}; {KvCacheDescription.Of(config)}) at {address}" +
            (decodeAddress is null ? "" : $", decode at {decodeAddress}") +
            $" against {ReferenceOutputs.Description}; a case passes when out and lse are both within " +
            $"{VerifyRun.Bf16RelativeErrorLimit:0.##E+0} relative error (bf16) for every sequence");
        bool fp8 = config.KvDtype == Contracts.V1.DType.Fp8E4M3Scaled;
        if (fp8)
            AnsiConsole.MarkupLine("the cache is [bold]fp8[/]: the reference attends over the rows as the CPU codec quantizes and dequantizes them, " +
                "and every stored row must be the codec's bytes; 'vs bf16' is the error against the unquantized rows (reported, not a bar)");

        var table = new Table().AddColumns("case", "layer", "b", "s_q", "h_q", "lengths", "out rel. err", "lse rel. err");
        if (fp8) table.AddColumns("rows != codec", "out vs bf16");
        table.AddColumn("");
        var report = await VerifyRun.RunAsync(client, settings, cancellationToken, onCase: c => table.AddRow(
        [
            $"{c.Index}", $"{c.Layer}", $"{c.BatchSize}", $"{c.QueryTokens}", $"{c.Heads}", Summary(c.Lengths),
            $"{c.OutRelativeError:E2}", $"{c.LseRelativeError:E2}",
            .. fp8 ? (string[])[$"{c.QuantizationMismatchRows}", $"{c.OutRelativeErrorVsBf16:E2}"] : [],
            c.Passed ? "[green]ok[/]" : "[red]FAIL[/]",
        ]));
        AnsiConsole.Write(table);
        AnsiConsole.MarkupLine($"verify: {report.Cases.Count - report.Failures}/{report.Cases.Count} cases passed against the float64 reference; " +
            $"worst out relative error {report.WorstOut:E2}, worst lse relative error {report.WorstLse:E2}" +
            (fp8 ? $"; {report.QuantizationMismatchRows} stored rows differ from the codec; worst out error against the bf16 rows {report.WorstOutVsBf16:E2}" : ""));
        Console.WriteLine($"VERIFY {(report.Passed ? "PASS" : "FAIL")} reference=float64 backend={report.Backend} kv_dtype={report.KvDtype} cases={report.Cases.Count} " +
            $"failures={report.Failures} worst_out_rel_err={report.WorstOut:E3} worst_lse_rel_err={report.WorstLse:E3} limit={VerifyRun.Bf16RelativeErrorLimit:E0}" +
            (fp8 ? $" quant_mismatch_rows={report.QuantizationMismatchRows} worst_out_rel_err_vs_bf16={report.WorstOutVsBf16:E3}" : ""));
        return report.Passed ? 0 : 1;
    }

    private static string Summary(int[] lengths) =>
        lengths.Length <= 4 ? string.Join(",", lengths) : $"{string.Join(",", lengths.Take(3))},..({lengths.Length}) max {lengths.Max()}";
}
