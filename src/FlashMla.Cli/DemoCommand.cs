using System.CommandLine;
using FlashMla.Client;
using FlashMla.Core.Tensors;
using Spectre.Console;

namespace FlashMla.Cli;

/// <summary>
/// A guided tour: create two sequences, prefill every layer, decode a few steps layer by layer with new rows,
/// check every output against the double-precision reference computed here, fork, truncate, free.
/// </summary>
internal static class DemoCommand
{
    public static Command Create(ConnectionArguments connection)
    {
        var heads = new Option<int>("--heads") { Description = "Query heads h_q", DefaultValueFactory = _ => 16 };
        var steps = new Option<int>("--steps") { Description = "Decode steps", DefaultValueFactory = _ => 3 };
        var queryTokens = new Option<int>("--sq") { Description = "Query tokens per step s_q", DefaultValueFactory = _ => 1 };
        var command = new Command("demo", "Create, prefill, decode a few steps, check against the local reference, fork, truncate, free") { heads, steps, queryTokens };
        command.SetAction((parse, token) => connection.RunAsync(parse, server => RunAsync(server, parse.GetValue(heads),
            parse.GetValue(steps), parse.GetValue(queryTokens), token)));
        return command;
    }

    private static async Task<int> RunAsync(ServerConnection server, int heads, int steps, int sQ, CancellationToken cancellationToken)
    {
        string address = server.Address;
        using var client = new FlashMlaClient(address, server.CacheClientOptions());
        var config = await client.GetConfigAsync(cancellationToken);
        AnsiConsole.MarkupLine($"Connected to [bold]{address}[/]: backend [green]{config.Backend}[/] ({Markup.Escape(config.Device)}), " +
            $"{config.NumLayers} layers, {config.TotalBlocks} blocks of {config.BlockSize} tokens, {KvCacheDescription.Of(config)}");
        // An fp8 cache attends over the rows as the codec quantizes and dequantizes them: so does the reference.
        bool fp8 = KvCacheDescription.DtypeName(config) == "fp8";

        var random = new Random(2025);
        int layers = (int)config.NumLayers;
        int[] lengths = [100, 37];
        var (ids, rows) = await Workload.CreateAsync(client, random, lengths, Enumerable.Range(0, layers).ToArray(), layers, cancellationToken);
        AnsiConsole.MarkupLine($"Created sequences {string.Join(", ", ids)} and prefilled {string.Join(" and ", lengths)} tokens into each of {layers} layers");

        var table = new Table().AddColumns("step", "layer", "b", "s_q", "h_q", "server us", "out rel. err", "lse rel. err");
        bool ok = true;
        await using var stream = client.OpenDecodeStream(cancellationToken);
        for (int step = 0; step < steps; step++)
        {
            for (int layer = 0; layer < layers; layer++)
            {
                var q = Workload.RandomBf16(random, (long)ids.Length * sQ * heads * MlaDims.HeadDimK);
                var kv = Workload.RandomBf16(random, (long)ids.Length * sQ * MlaDims.HeadDimK);
                using var output = await stream.DecodeAsync(new DecodeInput(layer, ids, sQ, heads, q, kv), cancellationToken);
                for (int i = 0; i < ids.Length; i++)
                    rows[i][layer] = [.. rows[i][layer], .. kv.AsSpan(i * sQ * MlaDims.HeadDimK, sQ * MlaDims.HeadDimK)];
                var cached = rows.Select(r => fp8 ? Fp8KvFormat.RoundTrip(r[layer]) : r[layer]).ToArray();
                var (expectedOut, expectedLse) = ReferenceOutputs.Decode(cached, q, sQ, heads);
                int outPer = sQ * heads * MlaDims.HeadDimV, lsePer = heads * sQ;
                double worstOut = 0, worstLse = 0;
                for (int i = 0; i < ids.Length; i++)
                {
                    worstOut = Math.Max(worstOut, Workload.RelativeError(output.Out.Slice(i * outPer, outPer), expectedOut.AsSpan(i * outPer, outPer)));
                    worstLse = Math.Max(worstLse, Workload.RelativeError(output.Lse.Slice(i * lsePer, lsePer), expectedLse.AsSpan(i * lsePer, lsePer)));
                }
                bool good = worstOut < 1e-2 && worstLse < 1e-3;
                ok &= good;
                string color = good ? "green" : "red";
                table.AddRow($"{step}", $"{layer}", $"{ids.Length}", $"{sQ}", $"{heads}", $"{output.Timings.ComputeUs:F0}",
                    $"[{color}]{worstOut:E2}[/]", $"[{color}]{worstLse:E2}[/]");
            }
        }
        AnsiConsole.Write(table);

        var fork = await client.ForkAsync(ids[0], cancellationToken);
        AnsiConsole.MarkupLine($"Forked sequence {ids[0]} into {fork.SequenceId}: {fork.SharedBlocks} pages shared, {fork.CopiedBlocks} copied");
        uint released = await client.TruncateAsync(fork.SequenceId, 64, cancellationToken);
        var (_, readBack) = await client.ReadStoredKvAsync(fork.SequenceId, 0, cancellationToken: cancellationToken);
        // The parent's first 64 rows as the cache stores what was sent: the bf16 bytes, or the codec's fp8 rows.
        var sent = rows[0][0].AsSpan(0, 64 * MlaDims.HeadDimK);
        byte[] expected = new byte[64 * config.KvBytesPerToken];
        if (fp8) Fp8KvFormat.Quantize(sent, expected);
        else System.Runtime.InteropServices.MemoryMarshal.AsBytes(sent).CopyTo(expected);
        bool forkOk = readBack.AsSpan().SequenceEqual(expected);
        ok &= forkOk;
        AnsiConsole.MarkupLine($"Truncated the fork to 64 tokens ({released} pages released); its rows read back {(forkOk ? "[green]equal[/]" : "[red]DIFFERENT[/]")} to the parent's first 64");
        foreach (ulong id in ids.Append(fork.SequenceId)) await client.FreeAsync(id, cancellationToken);
        var stats = await client.GetStatsAsync(cancellationToken);
        AnsiConsole.MarkupLine($"Freed everything: {stats.FreeBlocks} of {stats.TotalBlocks} blocks free, {stats.DecodeRequests} decode requests served in {stats.DecodeBatches} batches");
        AnsiConsole.MarkupLine(ok ? "[green]demo passed[/]" : "[red]demo FAILED: outputs differ from the reference[/]");
        return ok ? 0 : 1;
    }
}
