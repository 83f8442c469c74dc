using System.Diagnostics;
using FlashMla.Contracts.Wire;
using FlashMla.Core.Telemetry;
using FlashMla.Server.Services;
using Google.Protobuf;
using Grpc.Core;

namespace FlashMla.Server.DataPlane;

/// <summary>
/// Routes a data-plane call to the same <see cref="DecoderService"/> that Kestrel's gRPC port serves (and KV ingest,
/// flashmla.v1.KvCache/AppendKv, to the same <see cref="KvCacheService"/>), and turns how the call ended into its gRPC
/// status, as grpc-dotnet does for a service method.
/// </summary>
internal sealed class DataPlaneDispatcher(DecoderService service, KvCacheService kvCache, RequestFailures failures, FlashMlaMetrics metrics,
    Security.TenantDirectory tenants, ILogger log)
{
    public const string ServiceName = "flashmla.v1.Decoder";
    public const string DecodePath = "/" + ServiceName + "/Decode";
    public const string DecodeOncePath = "/" + ServiceName + "/DecodeOnce";

    public ILogger Log { get; } = log;

    /// <summary>The names a connection's client certificate offers for its tenant (read once per connection).</summary>
    public string[] CertificateNamesOf(System.Security.Cryptography.X509Certificates.X509Certificate? certificate) => tenants.CertificateNames.Of(certificate);

    public const string AppendKvPath = KvIngestMarshallers.AppendKvPath;

    public bool Serves(string path) => path is DecodePath or DecodeOncePath or AppendKvPath;

    /// <summary>
    /// The caller of a call from its headers' bearer token and its connection's client certificate names (the rule of
    /// both ports: TenantDirectory.Authenticate); UNAUTHENTICATED (recorded) without a valid one.
    /// </summary>
    public Security.Caller Authenticate(GrpcRequestHead head, string[] certificateNames)
    {
        try
        {
            return tenants.Authenticate(head.Authorization, certificateNames);
        }
        catch (RpcException ex)
        {
            throw failures.Record(Serves(head.Path) ? head.Path : "other", ex);
        }
    }

    public async Task<Status> ServeAsync(DataPlaneCall call)
    {
        var status = await RunAsync(call.Requests, call.Responses, call.Context).ConfigureAwait(false);
        Count(call.Method, status);
        return status;
    }

    /// <summary>A call refused from its headers alone, before it exists: counted as a call and as a failed request, as on the gRPC port.</summary>
    public void Refuse(string path, Status status)
    {
        failures.Record(Serves(path) ? path : "other", new RpcException(status));
        Count(path, status);
    }

    /// <summary>Counts a call by method (unknown paths as "other", to bound the label's values) and status.</summary>
    public void Count(string path, Status status) =>
        metrics.DataPlaneCalls.Add(1, new TagList { { "method", Serves(path) ? path : "other" }, { "code", status.StatusCode.ToString() } });

    public void ConnectionOpened() => metrics.DataPlaneConnections.Add(1);

    public void ConnectionClosed() => metrics.DataPlaneConnections.Add(-1);

    private async Task<Status> RunAsync(DataPlaneRequestReader requests, DataPlaneResponseWriter responses, DataPlaneCallContext context)
    {
        try
        {
            if (context.Method == DecodePath)
            {
                await service.Decode(requests, responses, context).ConfigureAwait(false);
                return Status.DefaultSuccess;
            }
            if (context.Method == AppendKvPath)
            {
                var appended = await kvCache.AppendKv(new DataPlaneAppendKvReader(requests), context).ConfigureAwait(false);
                await responses.WriteAsync(appended, context.CancellationToken).ConfigureAwait(false);
                return Status.DefaultSuccess;
            }
            if (!await requests.MoveNext(context.CancellationToken).ConfigureAwait(false))
                return new Status(StatusCode.Internal, "the unary call carried no request message");
            var request = requests.Current;
            // As grpc-dotnet does: a unary request is read to its END_STREAM, and one message is all it may hold.
            bool more;
            try
            {
                more = await requests.MoveNext(context.CancellationToken).ConfigureAwait(false);
            }
            catch
            {
                request.Dispose();
                throw;
            }
            if (more)
            {
                requests.Current.Dispose();
                request.Dispose();
                return new Status(StatusCode.Internal, "the unary call carried more than one request message");
            }
            var response = await service.DecodeOnce(request, context).ConfigureAwait(false);
            await responses.WriteAsync(response, context.CancellationToken).ConfigureAwait(false);
            return Status.DefaultSuccess;
        }
        catch (RpcException ex)
        {
            return context.DeadlinePassed ? Expired : ex.Status;
        }
        catch (InvalidProtocolBufferException ex)
        {
            // A request message that is not protobuf (the reader parses it, on either call type): INTERNAL, counted.
            return failures.RecordUnparsable(context.Method, ex).Status;
        }
        catch (Exception ex) when (ex is OperationCanceledException or IOException)
        {
            return context.DeadlinePassed ? Expired : new Status(StatusCode.Cancelled, "the call was cancelled");
        }
        catch (Exception ex)
        {
            Log.LogError(ex, "Data-plane call {Method} failed", context.Method);
            return new Status(StatusCode.Unknown, "Exception was thrown by handler.");
        }
    }

    private static readonly Status Expired = new(StatusCode.DeadlineExceeded, "the call's deadline passed");
}
