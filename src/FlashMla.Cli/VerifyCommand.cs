using System.CommandLine;
using FlashMla.Client;
using FlashMla.Core.Backends;
using FlashMla.Core.Backends.Cpu;
using FlashMla.Core.Tensors;
using Spectre.Console;

namespace FlashMla.Cli;

/// <summary>
/// Random workloads through a real server, each output compared with the CPU backend run here on the same
/// rows (varlen with 1, 63, 64, 65 and long sequences, s_q 1..4, h_q 1..128, new rows appended).
/// </summary>
internal static class VerifyCommand
{
    private static readonly int[] HeadChoices = [1, 8, 16, 32, 64, 128];

    public static Command Create(Option<string> address, Option<string?> decodeAddress)
    {
        var cases = new Option<int>("--cases") { Description = "Random cases", DefaultValueFactory = _ => 12 };
        var maxLength = new Option<int>("--max-length") { Description = "Longest random sequence", DefaultValueFactory = _ => 2048 };
        var longLength = new Option<int>("--long") { Description = "Add one sequence this long to every other case (0: none)", DefaultValueFactory = _ => 0 };
        var seed = new Option<int>("--seed") { DefaultValueFactory = _ => 1 };
        var command = new Command("verify", "Compare the server's decode with the CPU backend on random workloads") { cases, maxLength, longLength, seed };
        command.SetAction((parse, token) => RunAsync(parse.GetValue(address)!, parse.GetValue(decodeAddress), parse.GetValue(cases),
            parse.GetValue(maxLength), parse.GetValue(longLength), parse.GetValue(seed), token));
        return command;
    }

    private static async Task<int> RunAsync(string address, string? decodeAddress, int cases, int maxLength, int longLength, int seed,
        CancellationToken cancellationToken)
    {
        using var client = new FlashMlaClient(address, new FlashMlaClientOptions { DecodeAddress = decodeAddress });
        var config = await client.GetConfigAsync(cancellationToken);
        AnsiConsole.MarkupLine($"verify against [bold]{config.Backend}[/] ({Markup.Escape(config.Device)}) at {address}" +
            (decodeAddress is null ? "" : $", decode at {decodeAddress}"));
        var random = new Random(seed);
        var table = new Table().AddColumns("case", "layer", "b", "s_q", "h_q", "lengths", "out rel. err", "lse max abs err", "");
        double worstOut = 0, worstLse = 0;
        int failures = 0;
        for (int c = 0; c < cases; c++)
        {
            int layer = random.Next((int)config.NumLayers);
            int sQ = random.Next(1, Math.Min(4, (int)config.MaxQueryTokens) + 1);
            int hQ = HeadChoices[random.Next(HeadChoices.Length)];
            hQ = Math.Min(hQ, (int)config.MaxHeads);
            int b = random.Next(1, 9);
            var lengths = new List<int>();
            int[] edges = [1, 63, 64, 65];
            for (int i = 0; i < b; i++)
                lengths.Add(random.Next(3) == 0 ? edges[random.Next(edges.Length)] : random.Next(1, maxLength + 1));
            if (longLength > 0 && c % 2 == 1) lengths.Add(longLength);
            // The cached part: the new s_q rows come with the request. Shorter than s_q is allowed (rows that see nothing).
            var cached = lengths.Select(l => Math.Max(0, l - sQ)).ToArray();
            var (ids, rows) = await Workload.CreateAsync(client, random, cached, [layer], (int)config.NumLayers, cancellationToken);
            int n = ids.Length;
            var q = Workload.RandomBf16(random, (long)n * sQ * hQ * MlaDims.HeadDimK);
            var kv = Workload.RandomBf16(random, (long)n * sQ * MlaDims.HeadDimK);
            using var output = await client.DecodeOnceAsync(new DecodeInput(layer, ids, sQ, hQ, q, kv), cancellationToken);

            var (expectedOut, expectedLse) = RunOnCpu(rows, layer, cached, q, kv, sQ, hQ);
            double outErr = Workload.RelativeError(output.Out, expectedOut.Select(v => (double)Bf16.ToFloat(v)).ToArray());
            double lseErr = MaxAbsLseError(output.Lse, expectedLse);
            bool ok = outErr < 1e-2 && lseErr < 1e-2;
            if (!ok) failures++;
            worstOut = Math.Max(worstOut, outErr);
            worstLse = Math.Max(worstLse, lseErr);
            table.AddRow($"{c}", $"{layer}", $"{n}", $"{sQ}", $"{hQ}", Summary(cached.Select(l => l + sQ)), $"{outErr:E2}", $"{lseErr:E2}",
                ok ? "[green]ok[/]" : "[red]FAIL[/]");
            foreach (ulong id in ids) await client.FreeAsync(id, cancellationToken);
        }
        AnsiConsole.Write(table);
        AnsiConsole.MarkupLine($"verify: {cases - failures}/{cases} cases passed; worst out relative error {worstOut:E2}, worst lse error {worstLse:E2}");
        Console.WriteLine($"VERIFY {(failures == 0 ? "PASS" : "FAIL")} cases={cases} failures={failures} worst_out_rel_err={worstOut:E3} worst_lse_abs_err={worstLse:E3}");
        return failures == 0 ? 0 : 1;
    }

    /// <summary>The same batch on a CPU backend built here: contiguous pages, the cached rows written first.</summary>
    private static (ushort[] Out, float[] Lse) RunOnCpu(ushort[][][] rows, int layer, int[] cached, ushort[] q, ushort[] kv, int sQ, int hQ)
    {
        int n = cached.Length;
        int stride = cached.Max(l => MlaDims.BlocksFor(l + sQ));
        using var cpu = new CpuBackend(new KvPoolGeometry(1, n * stride));
        var table = new int[n * stride];
        var slots = new int[n * sQ];
        var lens = new int[n];
        for (int i = 0; i < n; i++)
        {
            for (int p = 0; p < stride; p++) table[i * stride + p] = i * stride + p;
            var cachedSlots = Enumerable.Range(0, cached[i]).Select(t => i * stride * MlaDims.BlockSize + t).ToArray();
            if (cached[i] > 0) cpu.WriteKv(0, cachedSlots, rows[i][layer]);
            for (int t = 0; t < sQ; t++) slots[i * sQ + t] = i * stride * MlaDims.BlockSize + cached[i] + t;
            lens[i] = cached[i] + sQ;
        }
        var output = new ushort[n * sQ * hQ * MlaDims.HeadDimV];
        var lse = new float[n * sQ * hQ];
        cpu.Decode(new DecodeBatch
        {
            Layer = 0, BatchSize = n, QueryTokens = sQ, Heads = hQ, SoftmaxScale = MlaDims.DefaultSoftmaxScale,
            Q = q, NewKv = kv, NewKvSlots = slots, SeqLens = lens, BlockTable = table, BlockTableStride = stride, Out = output, Lse = lse,
        });
        return (output, lse);
    }

    private static double MaxAbsLseError(ReadOnlySpan<float> actual, float[] expected)
    {
        double worst = 0;
        for (int i = 0; i < expected.Length; i++)
        {
            if (float.IsNegativeInfinity(expected[i]) && float.IsNegativeInfinity(actual[i])) continue;
            double d = Math.Abs(actual[i] - expected[i]);
            worst = double.IsNaN(d) ? double.PositiveInfinity : Math.Max(worst, d);
        }
        return worst;
    }

    private static string Summary(IEnumerable<int> lengths)
    {
        var all = lengths.ToArray();
        return all.Length <= 4 ? string.Join(",", all) : $"{string.Join(",", all.Take(3))},..({all.Length}) max {all.Max()}";
    }
}
