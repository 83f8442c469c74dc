using System.Diagnostics;
using FlashMla.Contracts.V1;

namespace FlashMla.Server.Services;

/// <summary>
/// The host's part of a response's <see cref="DecodeTimings"/>: <c>receive_us</c> before the scheduler, and
/// <c>respond_us</c> and <c>server_us</c>, which run on until the response is handed to the transport, so that
/// receive + queue + compute + respond is the server's whole time (<c>server_us</c>) for the request.
/// </summary>
internal static class ResponseTimings
{
    /// <summary>Microseconds from one <see cref="Stopwatch.GetTimestamp"/> to a later one; 0 when either is unknown (0).</summary>
    public static double Microseconds(long from, long to) =>
        from == 0 || to == 0 ? 0 : Math.Max(0, (to - from) * 1e6 / Stopwatch.Frequency);

    /// <summary>Sets respond_us and server_us as if the response were handed to the transport now.</summary>
    public static void Sending(DecodeResponse response, long receivedAt, long completedAt)
    {
        if (response.Timings is not { } timings) return;
        long now = Stopwatch.GetTimestamp();
        timings.RespondUs = Microseconds(completedAt, now);
        timings.ServerUs = Microseconds(receivedAt, now);
    }

    /// <summary>The response, ready since <paramref name="readyAt"/>, is handed to the transport now: the wait counts in respond_us and server_us.</summary>
    public static void Waited(DecodeResponse response, long readyAt)
    {
        if (response.Timings is not { } timings || timings.ServerUs == 0) return;
        double waited = Microseconds(readyAt, Stopwatch.GetTimestamp());
        timings.RespondUs += waited;
        timings.ServerUs += waited;
    }
}
