namespace FlashMla.Server.Hosting;

/// <summary>
/// Switches that exist for A/B measurements, not for operators, so they are not options: environment variables,
/// read here only, once at start-up (and logged with the backend's reason when set).
/// <list type="table">
/// <item><term><c>FLASHMLA_STAGE_TENSOR_BUFFERS=1</c></term><description>the CUDA backend does not page-lock the
/// server's tensor buffers: q, out and lse go through the backend's own pinned staging buffers (one more copy each
/// way) instead of straight between the wire's arrays and the GPU. scripts/dataplane-bench.sh's staged-buffers
/// variant sets it.</description></item>
/// </list>
/// </summary>
public sealed record MeasurementSwitches(bool StageTensorBuffers)
{
    public const string StageTensorBuffersVariable = "FLASHMLA_STAGE_TENSOR_BUFFERS";

    /// <summary>Every switch off: what production runs.</summary>
    public static MeasurementSwitches None { get; } = new(StageTensorBuffers: false);

    public static MeasurementSwitches FromEnvironment() =>
        new(StageTensorBuffers: Environment.GetEnvironmentVariable(StageTensorBuffersVariable) == "1");
}
