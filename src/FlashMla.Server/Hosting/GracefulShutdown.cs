using System.Diagnostics;
using FlashMla.Server.DataPlane;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.Extensions.Options;

namespace FlashMla.Server.Hosting;

/// <summary>
/// The order of a shutdown (SIGTERM: the host stopping), all of it within DrainTimeoutSeconds, which is also the
/// host's ShutdownTimeout (docs in deploy/README.md, "Probes and shutdown"):
/// <list type="number">
/// <item>health turns NOT_SERVING: ApplicationStopping is raised (by the host on SIGTERM, or here), which
/// <see cref="ServingHealthCheck"/> reads and which ends gRPC health Watch calls with NOT_SERVING;</item>
/// <item>GOAWAY on both ports at once, here: Kestrel's port and the data-plane port stop taking connections and
/// streams, and open Decode streams answer the requests they read, then end with UNAVAILABLE (<see cref="ServiceDrain"/>);</item>
/// <item>both ports wait for every stream they accepted to be answered, until a moment before the timeout, then
/// close what is left;</item>
/// <item>the scheduler finishes what is queued and the backend is released (<see cref="SchedulerLifetime"/>, with
/// what is left of the timeout).</item>
/// </list>
/// Steps 2 and 3 run in <see cref="StoppingAsync"/>, which the host calls before any hosted service's StopAsync, so
/// neither port waits behind the other and the scheduler keeps taking the work of accepted streams until they end.
/// </summary>
public sealed class GracefulShutdown(ServiceDrain drain, IServer server, DataPlaneListener dataPlane, IOptions<FlashMlaOptions> options,
    ILogger<GracefulShutdown> logger, IHostApplicationLifetime lifetime) : IHostedLifecycleService
{
    /// <summary>Time kept back from the drain for closing what is left and releasing the backend: a tenth, at most a second.</summary>
    public static TimeSpan Reserve(TimeSpan drainTimeout) => TimeSpan.FromTicks(Math.Min(TimeSpan.TicksPerSecond, drainTimeout.Ticks / 10));

    public async Task StoppingAsync(CancellationToken cancellationToken)
    {
        var timeout = TimeSpan.FromSeconds(options.Value.DrainTimeoutSeconds);
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        deadline.CancelAfter(timeout - Reserve(timeout));
        logger.LogInformation("Draining: NOT_SERVING, GOAWAY on both ports, answering the streams already accepted within {Timeout}", timeout);
        var clock = Stopwatch.StartNew();
        // NOT_SERVING first. On SIGTERM the host raised ApplicationStopping already; a host stopped by a call to
        // its StopAsync raises it only after every StoppingAsync, so it is raised here (a second time is a no-op).
        lifetime.StopApplication();
        drain.Begin();
        try
        {
            await Task.WhenAll(server.StopAsync(deadline.Token), dataPlane.DrainAsync(deadline.Token)).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            // The deadline: what was still open has been closed.
        }
        if (deadline.IsCancellationRequested)
            logger.LogWarning("Streams still open after {Elapsed}; their connections were closed", clock.Elapsed);
        else
            logger.LogInformation("Both ports drained in {Elapsed}", clock.Elapsed);
    }

    public Task StartingAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public Task StartedAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    public Task StoppedAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
