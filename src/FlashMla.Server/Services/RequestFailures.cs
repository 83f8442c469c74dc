using System.Diagnostics;
using FlashMla.Core.Telemetry;
using Grpc.Core;

namespace FlashMla.Server.Services;

/// <summary>Logs a failed request once, with its method and status, and counts it by status code.</summary>
public sealed class RequestFailures(FlashMlaMetrics metrics, ILogger<RequestFailures> logger)
{
    public RpcException Record(string method, Exception exception)
    {
        var status = StatusMapping.ToStatus(exception);
        Count(method, status);
        return exception as RpcException ?? new RpcException(status);
    }

    public Google.Rpc.Status RecordInStream(string method, ulong requestId, Exception exception)
    {
        var status = StatusMapping.ToStatus(exception);
        Count(method, status, requestId);
        return new Google.Rpc.Status { Code = (int)status.StatusCode, Message = status.Detail };
    }

    private void Count(string method, Status status, ulong? requestId = null)
    {
        metrics.RequestsFailed.Add(1, new TagList { { "code", status.StatusCode.ToString() }, { "method", method } });
        var level = status.StatusCode is StatusCode.Internal or StatusCode.Unknown or StatusCode.DataLoss
            ? LogLevel.Error
            : status.StatusCode == StatusCode.Cancelled ? LogLevel.Debug : LogLevel.Warning;
        logger.Log(level, "{Method} request {RequestId} failed with {StatusCode}: {Detail}",
            method, requestId, status.StatusCode, status.Detail);
    }
}
