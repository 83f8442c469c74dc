using FlashMla.Client;
using FlashMla.Contracts.V1;
using FlashMla.Core.Tensors;

namespace FlashMla.Cli;

/// <summary>The shape of a verify run: how many random cases and how long their sequences are.</summary>
internal sealed record VerifySettings(int Cases, int MaxLength, int LongLength, int Seed);

/// <summary>
/// One case of a verify run: its shape and the worst relative error of any of its sequences. With an fp8 cache also
/// the rows the server stored differently from the CPU codec's quantization (must be 0) and, for the record, the worst
/// out error against the reference on the unquantized bf16 rows (what fp8 costs; not a bar; NaN for a bf16 cache).
/// </summary>
internal sealed record VerifyCase(int Index, int Layer, int BatchSize, int QueryTokens, int Heads, int[] Lengths,
    double OutRelativeError, double LseRelativeError, int QuantizationMismatchRows = 0, double OutRelativeErrorVsBf16 = double.NaN)
{
    /// <summary>Both errors under the bf16 limit (NaN fails) and every stored row as the codec quantizes it.</summary>
    public bool Passed => OutRelativeError < VerifyRun.Bf16RelativeErrorLimit && LseRelativeError < VerifyRun.Bf16RelativeErrorLimit
        && QuantizationMismatchRows == 0;
}

/// <summary>What a verify run compared, case by case.</summary>
internal sealed record VerifyReport(string Backend, string Device, IReadOnlyList<VerifyCase> Cases, string KvDtype = "bf16")
{
    public int Failures => Cases.Count(c => !c.Passed);
    public bool Passed => Failures == 0 && Cases.Count > 0;
    public double WorstOut => Cases.Count == 0 ? 0 : Cases.Max(c => c.OutRelativeError);
    public double WorstLse => Cases.Count == 0 ? 0 : Cases.Max(c => c.LseRelativeError);
    public int QuantizationMismatchRows => Cases.Sum(c => c.QuantizationMismatchRows);
    public double WorstOutVsBf16 => Cases.Count == 0 ? double.NaN : Cases.Max(c => c.OutRelativeErrorVsBf16);
}

/// <summary>
/// Random decode workloads through a real server (varlen with 1, 63, 64, 65 and long sequences, s_q 1..4, h_q 1..128,
/// new rows appended), each sequence's out and lse compared with <see cref="ReferenceOutputs"/>: the server's
/// backend, whichever it is, against double precision, never against another backend's output. With an fp8 cache
/// (kv_dtype DTYPE_FP8_E4M3_SCALED) the reference attends over the rows as the CPU codec (<see cref="Fp8KvFormat"/>)
/// quantizes and dequantizes them, and every row the server stored, the AppendKv uploads and the decode's new rows,
/// is read back and compared with the codec's bytes.
/// </summary>
internal static class VerifyRun
{
    /// <summary>Relative error <c>||x - ref|| / ||ref||</c> a bf16 decode must stay under, for out and for lse.</summary>
    public const double Bf16RelativeErrorLimit = 1e-2;

    private static readonly int[] HeadChoices = [1, 8, 16, 32, 64, 128];
    private static readonly int[] EdgeLengths = [1, 63, 64, 65];

    public static async Task<VerifyReport> RunAsync(FlashMlaClient client, VerifySettings settings, CancellationToken cancellationToken,
        Action<VerifyCase>? onCase = null)
    {
        var config = await client.GetConfigAsync(cancellationToken);
        bool fp8 = config.KvDtype == DType.Fp8E4M3Scaled;
        var random = new Random(settings.Seed);
        var cases = new List<VerifyCase>();
        for (int c = 0; c < settings.Cases; c++)
        {
            int layer = random.Next((int)config.NumLayers);
            int sQ = random.Next(1, Math.Min(4, (int)config.MaxQueryTokens) + 1);
            int hQ = Math.Min(HeadChoices[random.Next(HeadChoices.Length)], (int)config.MaxHeads);
            int b = random.Next(1, 9);
            var lengths = new List<int>();
            for (int i = 0; i < b; i++)
                lengths.Add(random.Next(3) == 0 ? EdgeLengths[random.Next(EdgeLengths.Length)] : random.Next(1, settings.MaxLength + 1));
            if (settings.LongLength > 0 && c % 2 == 1) lengths.Add(settings.LongLength);
            // The cached part: the new s_q rows come with the request.
            var cached = lengths.Select(l => Math.Max(0, l - sQ)).ToArray();
            var (ids, rows) = await Workload.CreateAsync(client, random, cached, [layer], (int)config.NumLayers, cancellationToken);
            int n = ids.Length;
            var q = Workload.RandomBf16(random, (long)n * sQ * hQ * MlaDims.HeadDimK);
            var kv = Workload.RandomBf16(random, (long)n * sQ * MlaDims.HeadDimK);
            using var output = await client.DecodeOnceAsync(new DecodeInput(layer, ids, sQ, hQ, q, kv), cancellationToken);

            var layerRows = new ushort[n][];
            for (int i = 0; i < n; i++)
                layerRows[i] = [.. rows[i][layer], .. kv.AsSpan(i * sQ * MlaDims.HeadDimK, sQ * MlaDims.HeadDimK)];
            int mismatches = 0;
            double outErrVsBf16 = double.NaN;
            if (fp8)
            {
                for (int i = 0; i < n; i++)
                    mismatches += await Fp8Check.MismatchedRowsAsync(client, ids[i], layer, layerRows[i], cancellationToken);
                var (bf16Out, bf16Lse) = ReferenceOutputs.Decode(layerRows, q, sQ, hQ);
                outErrVsBf16 = WorstPerSequence(output.Out, output.Lse, bf16Out, bf16Lse, n).Out;
                layerRows = [.. layerRows.Select(rows => Fp8KvFormat.RoundTrip(rows))]; // the cache the server attends over
            }
            var (expectedOut, expectedLse) = ReferenceOutputs.Decode(layerRows, q, sQ, hQ);
            var (outErr, lseErr) = WorstPerSequence(output.Out, output.Lse, expectedOut, expectedLse, n);
            var result = new VerifyCase(c, layer, n, sQ, hQ, [.. cached.Select(l => l + sQ)], outErr, lseErr, mismatches, outErrVsBf16);
            cases.Add(result);
            onCase?.Invoke(result);
            foreach (ulong id in ids) await client.FreeAsync(id, cancellationToken);
        }
        return new VerifyReport(config.Backend, config.Device, cases, fp8 ? "fp8" : "bf16");
    }

    /// <summary>
    /// The worst relative error of any one sequence (a batch-wide norm would let one wrong sequence of a long batch
    /// pass). Outputs of the wrong length count as infinitely wrong.
    /// </summary>
    private static (double Out, double Lse) WorstPerSequence(ReadOnlySpan<ushort> actualOut, ReadOnlySpan<float> actualLse,
        double[] expectedOut, double[] expectedLse, int batchSize)
    {
        if (actualOut.Length != expectedOut.Length || actualLse.Length != expectedLse.Length)
            return (double.PositiveInfinity, double.PositiveInfinity);
        int outPer = expectedOut.Length / batchSize, lsePer = expectedLse.Length / batchSize;
        double worstOut = 0, worstLse = 0;
        for (int i = 0; i < batchSize; i++)
        {
            worstOut = Worst(worstOut, Workload.RelativeError(actualOut.Slice(i * outPer, outPer), expectedOut.AsSpan(i * outPer, outPer)));
            worstLse = Worst(worstLse, LseRelativeError(actualLse.Slice(i * lsePer, lsePer), expectedLse.AsSpan(i * lsePer, lsePer)));
        }
        return (worstOut, worstLse);
    }

    private static double Worst(double worst, double error) => double.IsNaN(error) ? double.PositiveInfinity : Math.Max(worst, error);

    /// <summary>
    /// Relative error of lse over the rows that see at least one position; a row that sees nothing must be -infinity
    /// in both (else the error is infinite).
    /// </summary>
    private static double LseRelativeError(ReadOnlySpan<float> actual, ReadOnlySpan<double> expected)
    {
        var finiteActual = new List<double>(expected.Length);
        var finiteExpected = new List<double>(expected.Length);
        for (int i = 0; i < expected.Length; i++)
        {
            if (double.IsNegativeInfinity(expected[i]))
            {
                if (!float.IsNegativeInfinity(actual[i])) return double.PositiveInfinity;
                continue;
            }
            finiteActual.Add(actual[i]);
            finiteExpected.Add(expected[i]);
        }
        return MlaReference.RelativeError(finiteActual.ToArray(), finiteExpected.ToArray());
    }
}
