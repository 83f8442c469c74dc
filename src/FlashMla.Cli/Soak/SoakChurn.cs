using FlashMla.Client;

namespace FlashMla.Cli.Soak;

/// <summary>
/// Connection churn (issue 13, item 8): a new client per cycle, one call, closed. Cycles alternate between the gRPC port
/// (GetStats) and the data-plane port (a unary decode, then GetStats, which goes to the gRPC port), so both listeners see
/// connections come and go all the time.
/// </summary>
internal sealed class SoakChurn(SoakSettings settings, string? token, Func<DecodeInput> step, SoakTally tally)
{
    private long _cycles;

    public long Cycles => Interlocked.Read(ref _cycles);

    public Task Start(CancellationToken stop) => Task.Run(() => SoakLoop.Run(tally, stop, async () =>
    {
        bool dataPlane = (Interlocked.Increment(ref _cycles) & 1) == 0;
        using (var client = new FlashMlaClient(settings.Address, settings.ClientOptions(token, dataPlane)))
        {
            if (dataPlane)
            {
                using var result = await client.DecodeOnceAsync(step(), stop);
                tally.Ok();
            }
            // A client of the data-plane port makes its cache calls on the gRPC port: that connection must close too.
            await client.GetStatsAsync(stop);
            tally.Ok();
        }
        if (settings.PauseMilliseconds > 0) await Task.Delay(settings.PauseMilliseconds, stop);
    }));
}
