using System.Threading.Channels;
using FlashMla.Contracts.V1;
using FlashMla.Core.Scheduling;
using FlashMla.Core.Tensors;
using FlashMla.Server.Hosting;
using Google.Protobuf;
using Grpc.Core;
using Microsoft.Extensions.Options;

namespace FlashMla.Server.Services;

/// <summary>
/// flashmla.v1.Decoder. The stream form keeps up to MaxInFlightPerStream requests of one stream in the
/// scheduler at once; responses go back through one writer as each request completes, carrying its id.
/// </summary>
public sealed class DecoderService(Scheduler scheduler, IOptions<FlashMlaOptions> options, RequestFailures failures)
    : Decoder.DecoderBase
{
    public override async Task<DecodeResponse> DecodeOnce(DecodeRequest request, ServerCallContext context)
    {
        try
        {
            return await RunAsync(request, context.CancellationToken);
        }
        catch (Exception ex)
        {
            throw failures.Record(context.Method, ex);
        }
    }

    public override async Task Decode(IAsyncStreamReader<DecodeRequest> requestStream, IServerStreamWriter<DecodeResponse> responseStream,
        ServerCallContext context)
    {
        int maxInFlight = options.Value.MaxInFlightPerStream;
        using var slots = new SemaphoreSlim(maxInFlight, maxInFlight);
        var responses = Channel.CreateBounded<DecodeResponse>(new BoundedChannelOptions(maxInFlight) { SingleReader = true });
        var writer = Task.Run(async () =>
        {
            await foreach (var response in responses.Reader.ReadAllAsync(context.CancellationToken))
                await responseStream.WriteAsync(response, context.CancellationToken);
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

        async Task ServeOneAsync(DecodeRequest request)
        {
            DecodeResponse response;
            try
            {
                response = await RunAsync(request, context.CancellationToken);
            }
            catch (Exception ex)
            {
                response = new DecodeResponse
                {
                    RequestId = request.RequestId,
                    Error = failures.RecordInStream(context.Method, request.RequestId, ex),
                };
            }
            try
            {
                await responses.Writer.WriteAsync(response, context.CancellationToken);
            }
            finally
            {
                slots.Release();
            }
        }
    }

    private async Task<DecodeResponse> RunAsync(DecodeRequest request, CancellationToken cancellationToken)
    {
        long b = request.SequenceIds.Count, sQ = request.SQ, hQ = request.HQ;
        if (b == 0) throw Core.Cache.CacheException.Invalid("the request names no sequences");
        if (sQ == 0 || hQ == 0) throw Core.Cache.CacheException.Invalid($"s_q and h_q must be positive, got s_q={sQ}, h_q={hQ}");
        var q = TensorCodec.Expect(request.Q, "q", DType.Bf16, b, sQ, hQ, MlaDims.HeadDimK);
        var kv = request.Kv is null ? ReadOnlyMemory<byte>.Empty : TensorCodec.Expect(request.Kv, "kv", DType.Bf16, b, sQ, MlaDims.HeadDimK);
        if (request.Layer > int.MaxValue) throw Core.Cache.CacheException.Invalid($"layer {request.Layer} is out of range");
        var work = DecodeWork.Create(scheduler.Options, (int)request.Layer, [.. request.SequenceIds], (int)Math.Min(sQ, int.MaxValue),
            (int)Math.Min(hQ, int.MaxValue), request.SoftmaxScale, q, kv);
        var result = await scheduler.DecodeAsync(work, cancellationToken);

        var output = new Tensor { Dtype = DType.Bf16, Data = UnsafeByteOperations.UnsafeWrap(result.Out) };
        output.Shape.Add([b, sQ, hQ, MlaDims.HeadDimV]);
        var lse = new Tensor { Dtype = DType.Fp32, Data = UnsafeByteOperations.UnsafeWrap(result.Lse) };
        lse.Shape.Add([b, hQ, sQ]);
        return new DecodeResponse
        {
            RequestId = request.RequestId,
            Out = output,
            Lse = lse,
            Timings = new Contracts.V1.DecodeTimings
            {
                QueueUs = result.Timings.QueueMicroseconds,
                ComputeUs = result.Timings.ComputeMicroseconds,
                BatchSequences = (uint)result.Timings.BatchSequences,
                BatchRequests = (uint)result.Timings.BatchRequests,
            },
        };
    }
}
