using System.Diagnostics;
using FlashMla.Core.Telemetry;
using FlashMla.Server.Services;
using Grpc.Core;

namespace FlashMla.Server.DataPlane;

/// <summary>
/// Routes a data-plane call to the same <see cref="DecoderService"/> that Kestrel's gRPC port serves, and turns
/// how the call ended into its gRPC status, as grpc-dotnet does for a service method.
/// </summary>
internal sealed class DataPlaneDispatcher(DecoderService service, FlashMlaMetrics metrics, ILogger log)
{
    public const string ServiceName = "flashmla.v1.Decoder";
    public const string DecodePath = "/" + ServiceName + "/Decode";
    public const string DecodeOncePath = "/" + ServiceName + "/DecodeOnce";

    public ILogger Log { get; } = log;

    public bool Serves(string path) => path is DecodePath or DecodeOncePath;

    public async Task<Status> ServeAsync(DataPlaneCall call, DataPlaneCallContext context)
    {
        var status = await RunAsync(call, context).ConfigureAwait(false);
        Count(call.Method, status);
        return status;
    }

    /// <summary>Counts a call by method (unknown paths as "other", to bound the label's values) and status.</summary>
    public void Count(string path, Status status) =>
        metrics.DataPlaneCalls.Add(1, new TagList { { "method", Serves(path) ? path : "other" }, { "code", status.StatusCode.ToString() } });

    public void ConnectionOpened() => metrics.DataPlaneConnections.Add(1);

    public void ConnectionClosed() => metrics.DataPlaneConnections.Add(-1);

    private async Task<Status> RunAsync(DataPlaneCall call, DataPlaneCallContext context)
    {
        try
        {
            if (call.Method == DecodePath)
            {
                await service.Decode(call, call, context).ConfigureAwait(false);
                return Status.DefaultSuccess;
            }
            if (!await call.MoveNext(context.CancellationToken).ConfigureAwait(false))
                return new Status(StatusCode.Internal, "the unary call carried no request message");
            var request = call.Current;
            // As grpc-dotnet does: a unary request is read to its END_STREAM, and one message is all it may hold.
            bool more;
            try
            {
                more = await call.MoveNext(context.CancellationToken).ConfigureAwait(false);
            }
            catch
            {
                request.Dispose();
                throw;
            }
            if (more)
            {
                call.Current.Dispose();
                request.Dispose();
                return new Status(StatusCode.Internal, "the unary call carried more than one request message");
            }
            var response = await service.DecodeOnce(request, context).ConfigureAwait(false);
            await call.WriteAsync(response, context.CancellationToken).ConfigureAwait(false);
            return Status.DefaultSuccess;
        }
        catch (RpcException ex)
        {
            return DeadlinePassed(call) ? Expired : ex.Status;
        }
        catch (Exception ex) when (ex is OperationCanceledException or IOException)
        {
            return DeadlinePassed(call) ? Expired : new Status(StatusCode.Cancelled, "the call was cancelled");
        }
        catch (Exception ex)
        {
            Log.LogError(ex, "Data-plane call {Method} failed", call.Method);
            return new Status(StatusCode.Unknown, "Exception was thrown by handler.");
        }
    }

    private static readonly Status Expired = new(StatusCode.DeadlineExceeded, "the call's deadline passed");

    private static bool DeadlinePassed(DataPlaneCall call) =>
        call.DeadlineExpired || (call.Deadline != DateTime.MaxValue && DateTime.UtcNow >= call.Deadline);
}
