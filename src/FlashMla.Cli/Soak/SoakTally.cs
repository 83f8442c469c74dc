using System.Collections.Concurrent;
using Grpc.Core;

namespace FlashMla.Cli.Soak;

/// <summary>
/// Calls the soak made, ok and failed by gRPC status code, counted by every load task at once. A failure that is
/// not an <see cref="RpcException"/> counts under the exception's type name, so a client-side bug shows too.
/// </summary>
internal sealed class SoakTally
{
    private long _ok;
    private readonly ConcurrentDictionary<string, long> _failed = new();

    public void Ok() => Interlocked.Increment(ref _ok);

    public void Failed(string code) => _failed.AddOrUpdate(code, 1, (_, n) => n + 1);

    public void Failed(Exception error) => Failed(CodeOf(error));

    /// <summary>The status code's name for an RpcException (the first inner one), else the exception's type name.</summary>
    public static string CodeOf(Exception error) => error switch
    {
        RpcException rpc => rpc.StatusCode.ToString(),
        AggregateException { InnerException: { } inner } => CodeOf(inner),
        _ when error.InnerException is RpcException inner => inner.StatusCode.ToString(),
        _ => error.GetType().Name,
    };

    public long OkCount => Interlocked.Read(ref _ok);

    /// <summary>Failures so far by code, in code order.</summary>
    public SortedDictionary<string, long> FailedSnapshot() => new(_failed, StringComparer.Ordinal);
}
