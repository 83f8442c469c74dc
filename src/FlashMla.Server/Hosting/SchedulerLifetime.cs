using FlashMla.Core.Scheduling;
using Microsoft.Extensions.Options;

namespace FlashMla.Server.Hosting;

/// <summary>
/// Ties the scheduler to the host's life: on shutdown it stops taking work (health turns NOT_SERVING,
/// new requests get UNAVAILABLE), lets queued work finish within the drain timeout, then disposes the backend.
/// </summary>
public sealed class SchedulerLifetime(Scheduler scheduler, BackendHolder backend, IOptions<FlashMlaOptions> options,
    ILogger<SchedulerLifetime> logger) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        scheduler.ServingStopped += reason => logger.LogCritical("Device fault: the service is NOT_SERVING from now on: {Reason}", reason);
        return Task.CompletedTask;
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        logger.LogInformation("Draining: finishing queued work, taking no new requests");
        var drain = scheduler.DrainAsync();
        var timeout = TimeSpan.FromSeconds(options.Value.DrainTimeoutSeconds);
        if (await Task.WhenAny(drain, Task.Delay(timeout, CancellationToken.None)) != drain)
            logger.LogWarning("Drain did not finish within {Timeout}; stopping anyway", timeout);
        else
            logger.LogInformation("Drained");
        backend.Dispose();
    }
}
