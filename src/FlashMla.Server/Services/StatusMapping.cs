using FlashMla.Core.Cache;
using Grpc.Core;

namespace FlashMla.Server.Services;

/// <summary>The one place where domain errors become gRPC status codes.</summary>
public static class StatusMapping
{
    public static StatusCode ToStatusCode(CacheError error) => error switch
    {
        CacheError.InvalidArgument => StatusCode.InvalidArgument,
        CacheError.NotFound => StatusCode.NotFound,
        CacheError.ResourceExhausted => StatusCode.ResourceExhausted,
        CacheError.FailedPrecondition => StatusCode.FailedPrecondition,
        CacheError.Unavailable => StatusCode.Unavailable,
        _ => StatusCode.Internal,
    };

    /// <summary>The status for any exception a handler sees (domain errors by kind, cancellation, the rest internal).</summary>
    public static Status ToStatus(Exception exception) => exception switch
    {
        CacheException e => new Status(ToStatusCode(e.Error), e.Message),
        RpcException e => e.Status,
        OperationCanceledException => new Status(StatusCode.Cancelled, "the call was cancelled"),
        _ => new Status(StatusCode.Internal, "internal error: " + exception.Message),
    };

    public static RpcException ToRpcException(Exception exception) =>
        exception as RpcException ?? new RpcException(ToStatus(exception));

    public static Google.Rpc.Status ToRpcStatus(Exception exception)
    {
        var status = ToStatus(exception);
        return new Google.Rpc.Status { Code = (int)status.StatusCode, Message = status.Detail };
    }
}
