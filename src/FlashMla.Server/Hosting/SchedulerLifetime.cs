using FlashMla.Core.Scheduling;

namespace FlashMla.Server.Hosting;

/// <summary>
/// Ties the scheduler to the host's life: on shutdown, once both ports have answered their streams
/// (<see cref="GracefulShutdown"/>), it stops taking work (new requests get UNAVAILABLE), lets queued work finish
/// within what is left of the drain timeout (the host's ShutdownTimeout, whose token this gets), then disposes the backend.
/// </summary>
public sealed class SchedulerLifetime(Scheduler scheduler, BackendHolder backend, ILogger<SchedulerLifetime> logger) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        scheduler.ServingStopped += reason => logger.LogCritical("Device fault: the service is NOT_SERVING from now on: {Reason}", reason);
        return Task.CompletedTask;
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        var drain = scheduler.DrainAsync();
        try
        {
            await drain.WaitAsync(cancellationToken);
            logger.LogInformation("Scheduler drained");
        }
        catch (OperationCanceledException)
        {
            logger.LogWarning("The scheduler did not finish its queued work within the drain timeout; stopping anyway");
        }
        backend.Dispose();
    }
}
