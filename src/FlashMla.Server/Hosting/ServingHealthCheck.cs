using FlashMla.Core.Scheduling;
using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace FlashMla.Server.Hosting;

/// <summary>
/// Healthy while the scheduler serves; unhealthy (gRPC NOT_SERVING) from the moment shutdown begins (the host's
/// ApplicationStopping, raised before either port sends GOAWAY, so readiness fails first), while draining, and after
/// a sticky device fault.
/// </summary>
public sealed class ServingHealthCheck(Scheduler scheduler, IHostApplicationLifetime lifetime) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default) =>
        Task.FromResult(scheduler.FaultReason is { } reason ? HealthCheckResult.Unhealthy("device fault: " + reason)
            : lifetime.ApplicationStopping.IsCancellationRequested || !scheduler.IsServing ? HealthCheckResult.Unhealthy("draining")
            : HealthCheckResult.Healthy($"serving on the {scheduler.BackendName} backend"));
}
