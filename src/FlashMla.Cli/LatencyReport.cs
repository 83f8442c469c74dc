using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;

namespace FlashMla.Cli;

/// <summary>
/// The latency command's results: the whole table for the results file, and the short one printed last. (The project
/// builds with invariant globalization, so interpolated numbers are culture-free.)
/// </summary>
internal static class LatencyReport
{
    public static readonly string[] ShortColumns = ["b", "h_q", "in flight", "calls/s", "p50 us", "p99 us", "floor us", "p50/floor"];

    public static string[] ShortCells(LatencyRow r) =>
        [$"{r.Batch}", $"{r.Heads}", $"{r.InFlight}", F0(r.CallsPerSecond), F0(r.P50Us), F0(r.P99Us), F0(r.FloorUs), F2(r.Ratio)];

    private static readonly string[] FullColumns =
    [
        "b", "h_q", "in flight", "calls", "calls/s", "p50 us", "p99 us", "server p50", "mean us", "wire+client", "receive", "queue", "compute", "respond",
        "upload", "kernel", "download", "reqs/batch", "TCP ping-pong p50", "kernel p50", "floor us", "p50/floor",
    ];

    private static string[] FullCells(LatencyRow r)
    {
        var m = r.Mean;
        string Device(double value) => r.KernelTimed ? F0(value) : "n/a";
        return
        [
            $"{r.Batch}", $"{r.Heads}", $"{r.InFlight}", $"{r.Calls}", F0(r.CallsPerSecond), F0(r.P50Us), F0(r.P99Us), F0(r.ServerP50Us), F0(m.RoundTrip), F0(m.WireAndClient),
            F0(m.Receive), F0(m.Queue), F0(m.Compute), F0(m.Respond), Device(m.Upload), Device(m.Kernel), Device(m.Download), F2(r.MeanRequestsPerBatch),
            F0(r.PingPongP50Us), F0(r.KernelP50Us) + (r.KernelTimed ? "" : " (compute)"), F0(r.FloorUs), F2(r.Ratio),
        ];
    }

    public static string Markdown(int context, double seconds, double warmup, double floorSeconds, bool shared, string commit, string backend,
        string decodePort, IReadOnlyList<LatencyRow> rows)
    {
        var text = new StringBuilder();
        text.AppendLine($"## latency {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC on {Environment.MachineName} " +
            $"({Environment.ProcessorCount} cores, {RuntimeInformation.OSDescription}), commit {commit}");
        text.AppendLine();
        text.AppendLine($"Server: {backend}; decode on {decodePort}, one connection, one stream. s_k={context}, s_q=1, no append; " +
            $"{(shared ? "every request in flight on the same sequences (they never merge)" : "each request in flight on its own sequences (they can merge in the batcher)")}; " +
            $"{warmup:F1} s warm-up, {seconds:F1} s measured per row; floor: raw loopback TCP ping-pong of the same tensor bytes each way, " +
            $"{floorSeconds:F1} s per shape, same run. Times in microseconds. p50/p99: the round trip per call on the client's clock. " +
            "The breakdown is of means (it adds up to the mean): wire+client = round trip - the server's time; receive = last byte of the request " +
            "to the scheduler; queue = scheduler to the start of its batch; compute = the batch on the backend until its outputs are in host memory " +
            "(upload, kernel, download: device times inside it, n/a where the backend does not time them); respond = outputs to the response handed " +
            "to the transport. reqs/batch = requests merged per backend call. floor = TCP ping-pong p50 + kernel p50 (the compute p50 where kernels " +
            "are not timed: the CPU backend).");
        text.AppendLine();
        text.AppendLine("| " + string.Join(" | ", FullColumns) + " |");
        text.AppendLine("|" + string.Concat(Enumerable.Repeat(" --- |", FullColumns.Length)));
        foreach (var row in rows) text.AppendLine("| " + string.Join(" | ", FullCells(row)) + " |");
        text.AppendLine();
        return text.ToString();
    }

    private static string F0(double value) => double.IsNaN(value) ? "n/a" : value.ToString("F0", CultureInfo.InvariantCulture);
    private static string F2(double value) => double.IsNaN(value) || double.IsInfinity(value) ? "n/a" : value.ToString("F2", CultureInfo.InvariantCulture);
}
