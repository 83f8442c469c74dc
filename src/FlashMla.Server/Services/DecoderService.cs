using System.Threading.Channels;
using FlashMla.Contracts.V1;
using FlashMla.Contracts.Wire;
using FlashMla.Core.Scheduling;
using FlashMla.Core.Tensors;
using FlashMla.Server.Hosting;
using Google.Protobuf;
using Grpc.Core;
using Microsoft.Extensions.Options;

namespace FlashMla.Server.Services;

/// <summary>
/// flashmla.v1.Decoder bound with the pooled marshallers of <see cref="DecodeMarshallers"/> (the same wire
/// contract as the generated <c>Decoder.DecoderBase</c>; bound by <see cref="Hosting.PooledDecoderMethods"/>): a request's tensors arrive in pooled arrays that
/// go back once the scheduler is done with them, and a response wraps its batch's pooled outputs, released
/// once the response is serialized. The stream form keeps up to MaxInFlightPerStream requests of one stream
/// in the scheduler at once; responses go back through one writer as each request completes, carrying its id.
/// </summary>
public sealed class DecoderService(DecodeHandler handler, IOptions<FlashMlaOptions> options, RequestFailures failures)
    : PooledDecoderBase
{
    public override async Task<Leased<DecodeResponse>> DecodeOnce(Leased<DecodeRequest> request, ServerCallContext context)
    {
        try
        {
            return await handler.RunAsync(request.Message, context.CancellationToken);
        }
        catch (Exception ex)
        {
            throw failures.Record(context.Method, ex);
        }
        finally
        {
            request.Dispose();
        }
    }

    public override async Task Decode(IAsyncStreamReader<Leased<DecodeRequest>> requestStream,
        IServerStreamWriter<Leased<DecodeResponse>> responseStream, ServerCallContext context)
    {
        int maxInFlight = options.Value.MaxInFlightPerStream;
        using var slots = new SemaphoreSlim(maxInFlight, maxInFlight);
        var responses = Channel.CreateBounded<Leased<DecodeResponse>>(new BoundedChannelOptions(maxInFlight) { SingleReader = true });
        var writer = Task.Run(async () =>
        {
            try
            {
                await foreach (var response in responses.Reader.ReadAllAsync(CancellationToken.None))
                {
                    try
                    {
                        await responseStream.WriteAsync(response, context.CancellationToken);
                    }
                    catch
                    {
                        response.Dispose(); // a write that failed before serializing never gave its buffers back
                        throw;
                    }
                }
            }
            catch (Exception ex)
            {
                // Nothing more can be sent: later responses are refused (their senders give them back) and the
                // queued ones go back to the pool now, so no batch's output buffers stay leased.
                responses.Writer.TryComplete(ex);
                while (responses.Reader.TryRead(out var rest)) rest.Dispose();
                throw;
            }
        });
        var inFlight = new List<Task>();
        try
        {
            await foreach (var request in requestStream.ReadAllAsync(context.CancellationToken))
            {
                await slots.WaitAsync(context.CancellationToken);
                inFlight.RemoveAll(t => t.IsCompleted);
                inFlight.Add(ServeOneAsync(request));
            }
            await Task.WhenAll(inFlight);
        }
        finally
        {
            responses.Writer.TryComplete();
        }
        await writer;

        async Task ServeOneAsync(Leased<DecodeRequest> request)
        {
            Leased<DecodeResponse> response;
            try
            {
                response = await handler.RunAsync(request.Message, context.CancellationToken);
            }
            catch (Exception ex)
            {
                response = new Leased<DecodeResponse>(new DecodeResponse
                {
                    RequestId = request.Message.RequestId,
                    Error = failures.RecordInStream(context.Method, request.Message.RequestId, ex),
                });
            }
            finally
            {
                request.Dispose();
            }
            try
            {
                await responses.Writer.WriteAsync(response, context.CancellationToken);
            }
            catch
            {
                response.Dispose();
                throw;
            }
            finally
            {
                slots.Release();
            }
        }
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
