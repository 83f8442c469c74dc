using System.Diagnostics;
using FlashMla.Core.Telemetry;
using Google.Protobuf;
using Grpc.Core;

namespace FlashMla.Server.Services;

/// <summary>
/// Logs a failed request once, with its method and status, and counts it by status code. The count is exact; the log
/// is bounded (<see cref="RefusalLogThrottle"/>: the first <see cref="LinesPerWindow"/> failures of each code per
/// <see cref="Window"/>, then one summary line), and every detail is capped (<see cref="StatusMapping.CapDetail"/>), so
/// neither a scan of unknown ids nor a request built to be echoed can flood the log or the client's trailers.
/// </summary>
public sealed class RequestFailures : IDisposable
{
    /// <summary>Failures of one status code logged one by one per <see cref="Window"/>.</summary>
    public const int LinesPerWindow = 10;

    public static readonly TimeSpan Window = TimeSpan.FromSeconds(10);

    private readonly FlashMlaMetrics _metrics;
    private readonly ILogger<RequestFailures> _logger;
    private readonly RefusalLogThrottle _throttle;

    public RequestFailures(FlashMlaMetrics metrics, ILogger<RequestFailures> logger) : this(metrics, logger, LinesPerWindow, Window, TimeProvider.System)
    {
    }

    internal RequestFailures(FlashMlaMetrics metrics, ILogger<RequestFailures> logger, int linesPerWindow, TimeSpan window, TimeProvider time)
    {
        _metrics = metrics;
        _logger = logger;
        _throttle = new RefusalLogThrottle(linesPerWindow, window, time, (code, count, span) =>
            _logger.LogWarning("{Count} more requests failed with {StatusCode} in {WindowSeconds} s and were not logged one by one " +
                "(the first {Lines} per code and window are; flashmla_requests_failed_total counts every one)",
                count, code, span.TotalSeconds, linesPerWindow));
    }

    public RpcException Record(string method, Exception exception)
    {
        if (exception is UnparsableRequestException counted) return counted; // counted where it was parsed
        var status = StatusMapping.ToStatus(exception);
        Count(method, status, exception: exception);
        return StatusMapping.ToRpcException(exception, status);
    }

    public Google.Rpc.Status RecordInStream(string method, ulong requestId, Exception exception)
    {
        var status = StatusMapping.ToStatus(exception);
        Count(method, status, requestId, exception: exception);
        return new Google.Rpc.Status { Code = (int)status.StatusCode, Message = status.Detail };
    }

    /// <summary>
    /// A request message that is not valid protobuf: INTERNAL, as gRPC specifies for a message that cannot be parsed,
    /// counted and logged here (a warning, without a stack trace: the client sent it, the server is fine). A handler
    /// that sees the returned exception again passes it to <see cref="Record"/>, which does not count it twice.
    /// </summary>
    public RpcException RecordUnparsable(string method, InvalidProtocolBufferException exception)
    {
        var status = new Status(StatusCode.Internal, StatusMapping.CapDetail("the request message is not valid protobuf: " + exception.Message));
        Count(method, status, level: LogLevel.Warning);
        return new UnparsableRequestException(status);
    }

    public void Dispose() => _throttle.Dispose();

    private void Count(string method, Status status, ulong? requestId = null, LogLevel? level = null, Exception? exception = null)
    {
        _metrics.RequestsFailed.Add(1, new TagList { { "code", status.StatusCode.ToString() }, { "method", method } });
        bool serverFault = status.StatusCode is StatusCode.Internal or StatusCode.Unknown or StatusCode.DataLoss;
        level ??= serverFault ? LogLevel.Error : status.StatusCode == StatusCode.Cancelled ? LogLevel.Debug : LogLevel.Warning;
        if (!_logger.IsEnabled(level.Value) || !_throttle.ShouldLog(status.StatusCode)) return;
        // The operator gets the stack trace of a fault of the server's own (never the client: its detail is the message alone).
        var logged = serverFault && level == LogLevel.Error && exception is not (RpcException or null) ? exception : null;
        _logger.Log(level.Value, logged, "{Method} request {RequestId} failed with {StatusCode}: {Detail}",
            method, requestId, status.StatusCode, status.Detail);
    }

    /// <summary>The refusal of an unparsable request, already counted.</summary>
    private sealed class UnparsableRequestException(Status status) : RpcException(status);
}
