using FlashMla.Contracts.V1;
using FlashMla.Contracts.Wire;
using FlashMla.Core.Scheduling;
using FlashMla.Core.Tensors;
using FlashMla.Server.Hosting;
using FlashMla.Server.Security;
using Google.Protobuf;
using Grpc.Core;
using Microsoft.Extensions.Options;

namespace FlashMla.Server.Services;

/// <summary>
/// flashmla.v1.Decoder bound with the pooled marshallers of <see cref="DecodeMarshallers"/> (the same wire
/// contract as the generated <c>Decoder.DecoderBase</c>; bound by <see cref="Hosting.PooledDecoderMethods"/>): it
/// translates requests to the decode handler's calls and failures to status codes (or, inside a stream, to the
/// failed request's response). A request's tensors arrive in pooled arrays that go back once the scheduler is
/// done with them, and a response wraps its batch's pooled outputs, released once the response is sent. The
/// stream form is run by <see cref="DecodeStreamPump"/>; on shutdown an open stream answers what it read and ends
/// with UNAVAILABLE (<see cref="ServiceDrain"/>).
/// </summary>
public sealed class DecoderService(DecodeHandler handler, IOptions<FlashMlaOptions> options, RequestFailures failures, ServiceDrain drain)
    : PooledDecoderBase
{
    public override async Task<Leased<DecodeResponse>> DecodeOnce(Leased<DecodeRequest> request, ServerCallContext context)
    {
        Leased<DecodeResponse> response;
        try
        {
            response = await handler.RunAsync(request.Message, Caller.Of(context), request.ReceivedAt, context.CancellationToken);
        }
        catch (Exception ex)
        {
            throw failures.Record(context.Method, AsExpired(ex, context));
        }
        finally
        {
            request.Dispose();
        }
        // A request already computing when its deadline passed runs to the end, but its caller got DEADLINE_EXCEEDED:
        // counted as that, or an overloaded server whose callers all time out would count no failure at all.
        if (DeadlinePassed(context))
        {
            response.Dispose();
            throw failures.Record(context.Method, new RpcException(Expired));
        }
        return response;
    }

    private static readonly Status Expired = new(StatusCode.DeadlineExceeded, "the call's deadline passed");

    private static bool DeadlinePassed(ServerCallContext context) => context.Deadline != DateTime.MaxValue && context.Deadline <= DateTime.UtcNow;

    /// <summary>A cancellation that the call's deadline caused is DEADLINE_EXCEEDED (the caller's status), not CANCELLED.</summary>
    private static Exception AsExpired(Exception exception, ServerCallContext context) =>
        exception is OperationCanceledException && DeadlinePassed(context) ? new RpcException(Expired) : exception;

    public override Task Decode(IAsyncStreamReader<Leased<DecodeRequest>> requestStream,
        IServerStreamWriter<Leased<DecodeResponse>> responseStream, ServerCallContext context)
    {
        Caller caller;
        try
        {
            caller = Caller.Of(context);
        }
        catch (Exception ex)
        {
            throw failures.Record(context.Method, ex);
        }
        return DecodeStreamPump.RunAsync(requestStream, responseStream, request => ServeInStreamAsync(request, caller, context),
            options.Value.MaxInFlightPerStream, context.CancellationToken, drain.StreamsEnding);
    }

    /// <summary>One request of a stream: its response, or the error of that request alone in the response (the stream goes on).</summary>
    private async Task<Leased<DecodeResponse>> ServeInStreamAsync(Leased<DecodeRequest> request, Caller caller, ServerCallContext context)
    {
        ulong requestId = request.Message.RequestId;
        Leased<DecodeResponse> response;
        try
        {
            response = await handler.RunAsync(request.Message, caller, request.ReceivedAt, context.CancellationToken);
        }
        catch (Exception ex)
        {
            return Failed(requestId, AsExpired(ex, context));
        }
        finally
        {
            request.Dispose();
        }
        // As for DecodeOnce: a request still computing when the stream's deadline passed finishes after its caller got
        // DEADLINE_EXCEEDED for the whole stream, and is counted as that, not as a success nobody received.
        if (DeadlinePassed(context))
        {
            response.Dispose();
            return Failed(requestId, new RpcException(Expired));
        }
        return response;

        Leased<DecodeResponse> Failed(ulong id, Exception ex) => new(new DecodeResponse
        {
            RequestId = id,
            Error = failures.RecordInStream(context.Method, id, ex),
        });
    }
}

/// <summary>
/// The two methods of flashmla.v1.Decoder over leased messages; <see cref="Hosting.PooledDecoderMethods"/> binds
/// them with marshallers over the host's tensor pool.
/// </summary>
public abstract class PooledDecoderBase
{
    public abstract Task Decode(IAsyncStreamReader<Leased<DecodeRequest>> requestStream,
        IServerStreamWriter<Leased<DecodeResponse>> responseStream, ServerCallContext context);

    public abstract Task<Leased<DecodeResponse>> DecodeOnce(Leased<DecodeRequest> request, ServerCallContext context);
}
