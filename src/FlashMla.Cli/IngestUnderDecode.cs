using System.Diagnostics;
using FlashMla.Client;
using FlashMla.Core.Tensors;

namespace FlashMla.Cli;

/// <summary>What the ingest-under-decode run measures, and how big it is.</summary>
internal sealed record IngestSettings(int Batch, int Heads, int Context, int IngestTokens, int IngestLayers, int RowsPerChunk, double Seconds);

/// <summary>Decode latency alone and beside ingest, and the ingest's own rate.</summary>
internal sealed record IngestReport(double[] AloneUs, double[] BesideUs, long IngestBytes, int IngestCalls, double IngestSeconds)
{
    public double AloneP50Us => Percentile(AloneUs, 0.5);
    public double BesideP50Us => Percentile(BesideUs, 0.5);
    public double AloneP99Us => Percentile(AloneUs, 0.99);
    public double BesideP99Us => Percentile(BesideUs, 0.99);

    /// <summary>How much the decode p50 rose with ingest running, in percent.</summary>
    public double P50RisePercent => AloneP50Us > 0 ? (BesideP50Us / AloneP50Us - 1) * 100 : double.NaN;

    public double IngestGBps => IngestSeconds > 0 ? IngestBytes / IngestSeconds / 1e9 : 0;

    private static double Percentile(double[] sorted, double p) => sorted.Length == 0 ? 0 : sorted[Math.Min(sorted.Length - 1, (int)(p * sorted.Length))];
}

/// <summary>
/// KV ingest under decode (issue 15): one client decodes b sequences of s_k tokens, one request in flight, for a
/// while alone and then again while another client streams AppendKv as fast as it can (a fresh sequence each round:
/// <see cref="IngestSettings.IngestTokens"/> rows into each of <see cref="IngestSettings.IngestLayers"/> layers on one
/// call, then freed). Both clients send to the decode address when given (the data-plane port). Works on any backend.
/// </summary>
internal static class IngestUnderDecode
{
    public static async Task<IngestReport> RunAsync(FlashMlaClient decoder, FlashMlaClient ingester, IngestSettings s, CancellationToken cancellationToken)
    {
        var random = new Random(11);
        var (ids, _) = await Workload.CreateAsync(decoder, random, Enumerable.Repeat(s.Context, s.Batch).ToArray(), [0], s.IngestLayers, cancellationToken);
        // One array of rows for every round (the client sends it from where it lies): ingest measures the wire and the server.
        var rows = Workload.RandomBf16(random, (long)s.IngestTokens * MlaDims.HeadDimK);
        var input = new DecodeInput(0, ids, 1, s.Heads, Workload.RandomBf16(random, (long)s.Batch * s.Heads * MlaDims.HeadDimK));
        try
        {
            await using var stream = decoder.OpenDecodeStream(cancellationToken);
            for (int i = 0; i < 3; i++) (await stream.DecodeAsync(input, cancellationToken)).Dispose(); // warm
            var alone = await DecodeForAsync(stream, input, s.Seconds, cancellationToken);

            using var stopIngest = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
            long bytes = 0;
            int calls = 0;
            var ingestClock = Stopwatch.StartNew();
            double ingestSeconds = 0;
            var ingest = Task.Run(async () =>
            {
                var uploads = Enumerable.Range(0, s.IngestLayers).Select(l => (Layer: l, Rows: (ReadOnlyMemory<ushort>)rows)).ToArray();
                do // at least one whole round, however short the decode phase
                {
                    ulong id = await ingester.CreateSequenceAsync(cancellationToken);
                    await ingester.AppendKvAsync(uploads.Select(u => new KvUpload(id, u.Layer, u.Rows)), s.RowsPerChunk, cancellationToken);
                    ingestSeconds = ingestClock.Elapsed.TotalSeconds; // counted to the end of the last whole call
                    await ingester.FreeAsync(id, cancellationToken);
                    bytes += (long)s.IngestTokens * s.IngestLayers * MlaDims.KvRowBytes;
                    calls++;
                } while (!stopIngest.IsCancellationRequested);
            }, cancellationToken);
            var beside = await DecodeForAsync(stream, input, s.Seconds, cancellationToken);
            stopIngest.Cancel();
            await ingest;
            return new IngestReport(alone, beside, bytes, calls, ingestSeconds);
        }
        finally
        {
            foreach (ulong id in ids) await decoder.FreeAsync(id, CancellationToken.None);
        }
    }

    /// <summary>One request in flight for <paramref name="seconds"/> (at least 5 steps); latencies sorted, microseconds.</summary>
    private static async Task<double[]> DecodeForAsync(DecodeStream stream, DecodeInput input, double seconds, CancellationToken cancellationToken)
    {
        var latencies = new List<double>();
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed.TotalSeconds < seconds || latencies.Count < 5)
        {
            long start = Stopwatch.GetTimestamp();
            using var result = await stream.DecodeAsync(input, cancellationToken);
            latencies.Add(Stopwatch.GetElapsedTime(start).TotalMicroseconds);
        }
        var sorted = latencies.ToArray();
        Array.Sort(sorted);
        return sorted;
    }
}
