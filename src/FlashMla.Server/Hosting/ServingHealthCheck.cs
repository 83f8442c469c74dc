using FlashMla.Core.Scheduling;
using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace FlashMla.Server.Hosting;

/// <summary>Healthy while the scheduler serves; unhealthy (gRPC NOT_SERVING) when draining or after a sticky device fault.</summary>
public sealed class ServingHealthCheck(Scheduler scheduler) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default) =>
        Task.FromResult(scheduler.IsServing
            ? HealthCheckResult.Healthy($"serving on the {scheduler.BackendName} backend")
            : HealthCheckResult.Unhealthy(scheduler.FaultReason is { } reason ? "device fault: " + reason : "draining"));
}
