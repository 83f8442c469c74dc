using FlashMla.Core.Cache;
using FlashMla.Core.Memory;
using Grpc.Core;

namespace FlashMla.Server.Services;

/// <summary>
/// The one place where domain errors become gRPC status codes. Every detail it builds is capped
/// (<see cref="MaxDetailChars"/>): a detail that echoes the request (a shape of a hundred thousand extents, say) would
/// otherwise go back as a trailer and into the log as large as the request itself. A client sees an exception's
/// message at most, never its stack trace.
/// </summary>
public static class StatusMapping
{
    /// <summary>Characters of a status detail kept; the rest is cut, with a note of how much.</summary>
    public const int MaxDetailChars = 300;

    public static StatusCode ToStatusCode(CacheError error) => error switch
    {
        CacheError.InvalidArgument => StatusCode.InvalidArgument,
        CacheError.NotFound => StatusCode.NotFound,
        CacheError.ResourceExhausted => StatusCode.ResourceExhausted,
        CacheError.FailedPrecondition => StatusCode.FailedPrecondition,
        CacheError.Unavailable => StatusCode.Unavailable,
        _ => StatusCode.Internal,
    };

    /// <summary>The status for any exception a handler sees (domain errors by kind, cancellation, the rest internal), its detail capped.</summary>
    public static Status ToStatus(Exception exception) => exception switch
    {
        CacheException e => new Status(ToStatusCode(e.Error), CapDetail(e.Message)),
        RpcException e => e.Status.Detail.Length > MaxDetailChars ? new Status(e.StatusCode, CapDetail(e.Status.Detail)) : e.Status,
        TensorBudgetExceededException e => new Status(StatusCode.ResourceExhausted, CapDetail(e.Message)),
        OperationCanceledException => new Status(StatusCode.Cancelled, "the call was cancelled"),
        _ => new Status(StatusCode.Internal, CapDetail("internal error: " + exception.Message)),
    };

    public static RpcException ToRpcException(Exception exception) => ToRpcException(exception, ToStatus(exception));

    /// <summary>
    /// <paramref name="exception"/> itself when it is an <see cref="RpcException"/> of <paramref name="status"/>
    /// (its trailers kept), else a new one of <paramref name="status"/>.
    /// </summary>
    public static RpcException ToRpcException(Exception exception, Status status) => exception switch
    {
        RpcException e when e.Status.Detail == status.Detail => e,
        RpcException e => new RpcException(status, e.Trailers),
        _ => new RpcException(status),
    };

    public static Google.Rpc.Status ToRpcStatus(Exception exception)
    {
        var status = ToStatus(exception);
        return new Google.Rpc.Status { Code = (int)status.StatusCode, Message = status.Detail };
    }

    /// <summary><paramref name="detail"/>, cut to <see cref="MaxDetailChars"/> with a note of how much was left out.</summary>
    public static string CapDetail(string detail) =>
        detail.Length <= MaxDetailChars ? detail : $"{detail.AsSpan(0, MaxDetailChars)}... ({detail.Length - MaxDetailChars} more characters)";
}
