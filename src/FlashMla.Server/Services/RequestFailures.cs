using System.Diagnostics;
using FlashMla.Core.Telemetry;
using Google.Protobuf;
using Grpc.Core;

namespace FlashMla.Server.Services;

/// <summary>Logs a failed request once, with its method and status, and counts it by status code.</summary>
public sealed class RequestFailures(FlashMlaMetrics metrics, ILogger<RequestFailures> logger)
{
    public RpcException Record(string method, Exception exception)
    {
        if (exception is UnparsableRequestException counted) return counted; // counted where it was parsed
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

    /// <summary>
    /// A request message that is not valid protobuf: INTERNAL, as gRPC specifies for a message that cannot be parsed,
    /// counted and logged here (a warning, without a stack trace: the client sent it, the server is fine). A handler
    /// that sees the returned exception again passes it to <see cref="Record"/>, which does not count it twice.
    /// </summary>
    public RpcException RecordUnparsable(string method, InvalidProtocolBufferException exception)
    {
        var status = new Status(StatusCode.Internal, "the request message is not valid protobuf: " + exception.Message);
        Count(method, status, level: LogLevel.Warning);
        return new UnparsableRequestException(status);
    }

    private void Count(string method, Status status, ulong? requestId = null, LogLevel? level = null)
    {
        metrics.RequestsFailed.Add(1, new TagList { { "code", status.StatusCode.ToString() }, { "method", method } });
        level ??= status.StatusCode is StatusCode.Internal or StatusCode.Unknown or StatusCode.DataLoss
            ? LogLevel.Error
            : status.StatusCode == StatusCode.Cancelled ? LogLevel.Debug : LogLevel.Warning;
        logger.Log(level.Value, "{Method} request {RequestId} failed with {StatusCode}: {Detail}",
            method, requestId, status.StatusCode, status.Detail);
    }

    /// <summary>The refusal of an unparsable request, already counted.</summary>
    private sealed class UnparsableRequestException(Status status) : RpcException(status);
}
