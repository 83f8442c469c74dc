namespace FlashMla.Cli;

/// <summary>
/// One decode call as the latency command saw it, microseconds: the round trip on the client's clock and the
/// response's timings. receive + queue + compute + respond is the server's time (<see cref="Server"/>); the round
/// trip less that is the wire and the client. Upload, kernel and download are device times inside compute.
/// </summary>
internal readonly record struct CallTiming(double RoundTrip, double Server, double Receive, double Queue, double Compute, double Respond,
    double Upload, double Kernel, double Download, int BatchRequests)
{
    public double WireAndClient => RoundTrip - Server;

    public static CallTiming Of(double roundTrip, Contracts.V1.DecodeTimings? t) => t is null
        ? new CallTiming(roundTrip, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        : new CallTiming(roundTrip, t.ServerUs, t.ReceiveUs, t.QueueUs, t.ComputeUs, t.RespondUs, t.UploadUs, t.KernelUs, t.DownloadUs, (int)t.BatchRequests);
}

/// <summary>The median and the 99th percentile of a set of values (nearest rank); NaN for none.</summary>
internal readonly record struct Percentiles(double P50, double P99)
{
    public static Percentiles Of(IEnumerable<double> values)
    {
        var sorted = values.ToArray();
        Array.Sort(sorted);
        return new Percentiles(At(sorted, 0.5), At(sorted, 0.99));
    }

    private static double At(double[] sorted, double p) => sorted.Length == 0 ? double.NaN : sorted[Math.Min(sorted.Length - 1, (int)(p * sorted.Length))];
}

/// <summary>
/// One row of the latency table: a shape at one number in flight. The breakdown is of means (means add up: the
/// mean round trip is the sum of the mean parts); p50 and p99 are of the round trip. The floor is the raw TCP
/// ping-pong's p50 for the same sizes plus the p50 kernel time of these calls (their compute time when the backend
/// does not time its kernels, as on the CPU backend, where compute is the kernel).
/// </summary>
internal sealed record LatencyRow(int Batch, int Heads, int InFlight, int Calls, double CallsPerSecond, double P50Us, double P99Us, double ServerP50Us,
    CallTiming Mean, double MeanRequestsPerBatch, double PingPongP50Us, double KernelP50Us, bool KernelTimed)
{
    public double FloorUs => PingPongP50Us + KernelP50Us;
    public double Ratio => P50Us / FloorUs;

    public static LatencyRow From(int batch, int heads, int inFlight, double seconds, IReadOnlyList<CallTiming> calls, double pingPongP50Us)
    {
        var roundTrip = Percentiles.Of(calls.Select(c => c.RoundTrip));
        bool kernelTimed = calls.Any(c => c.Kernel > 0);
        double kernelP50 = Percentiles.Of(calls.Select(c => kernelTimed ? c.Kernel : c.Compute)).P50;
        double n = Math.Max(1, calls.Count);
        double Mean(Func<CallTiming, double> part) => calls.Sum(part) / n;
        var mean = new CallTiming(Mean(c => c.RoundTrip), Mean(c => c.Server), Mean(c => c.Receive), Mean(c => c.Queue), Mean(c => c.Compute),
            Mean(c => c.Respond), Mean(c => c.Upload), Mean(c => c.Kernel), Mean(c => c.Download), 0);
        return new LatencyRow(batch, heads, inFlight, calls.Count, calls.Count / seconds, roundTrip.P50, roundTrip.P99,
            Percentiles.Of(calls.Select(c => c.Server)).P50, mean,
            Mean(c => c.BatchRequests), pingPongP50Us, kernelP50, kernelTimed);
    }
}
