using System.Diagnostics;
using FlashMla.Contracts.V1;
using FlashMla.Contracts.Wire;
using FlashMla.Core.Scheduling;
using FlashMla.Core.Tensors;
using FlashMla.Server.Security;
using Google.Protobuf;

namespace FlashMla.Server.Services;

/// <summary>
/// One decode request from the wire to the scheduler and back, shared by both doors to flashmla.v1.Decoder:
/// the gRPC service on Kestrel (<see cref="DecoderService"/>) and the data-plane listener. The edge: the request's
/// numbers are checked once (<see cref="DecodeShape"/>), then its tensors against them (<see cref="TensorCodec"/>);
/// what lies behind only asserts. It wraps the batch's pooled outputs in the response without copying them.
/// Each request runs as its caller's tenant (it finds that tenant's sequences only) and counts against the tenant's
/// requests-in-flight quota while the scheduler has it.
/// </summary>
public sealed class DecodeHandler(Scheduler scheduler)
{
    /// <summary>
    /// Validates, queues and awaits one request. When this returns or throws, the scheduler no longer reads
    /// the request's tensors, so the caller may give their buffers back.
    /// </summary>
    /// <param name="receivedAt">When the request's last byte arrived (<see cref="Leased{T}.ReceivedAt"/>); 0: now.</param>
    public async Task<Leased<DecodeResponse>> RunAsync(DecodeRequest request, Caller caller, long receivedAt, CancellationToken cancellationToken)
    {
        caller.EnsureEntitled(); // a stream opened with a token revoked since fails from its next request on
        if (receivedAt == 0) receivedAt = Stopwatch.GetTimestamp();
        var shape = DecodeShape.Create(scheduler.Options, request.Layer, request.SequenceIds, request.SQ, request.HQ, request.SoftmaxScale);
        long b = shape.BatchSize, sQ = shape.QueryTokens, hQ = shape.Heads;
        var q = TensorCodec.Expect(request.Q, "q", DType.Bf16, b, sQ, hQ, MlaDims.HeadDimK);
        var kv = request.Kv is null ? ReadOnlyMemory<byte>.Empty : TensorCodec.Expect(request.Kv, "kv", DType.Bf16, b, sQ, MlaDims.HeadDimK);
        var tenant = caller.Tenant;
        tenant.EnterRequest();
        DecodeResult result;
        try
        {
            result = await scheduler.DecodeAsync(DecodeWork.Create(shape, q, kv, tenant), cancellationToken);
        }
        finally
        {
            tenant.ExitRequest();
        }
        var timings = result.Timings;

        var output = new Tensor { Dtype = DType.Bf16, Data = UnsafeByteOperations.UnsafeWrap(result.Out) };
        output.Shape.Add([b, sQ, hQ, MlaDims.HeadDimV]);
        var lse = new Tensor { Dtype = DType.Fp32, Data = UnsafeByteOperations.UnsafeWrap(result.Lse) };
        lse.Shape.Add([b, hQ, sQ]);
        var response = new DecodeResponse
        {
            RequestId = request.RequestId,
            Out = output,
            Lse = lse,
            Timings = new Contracts.V1.DecodeTimings
            {
                QueueUs = timings.QueueMicroseconds,
                ComputeUs = timings.ComputeMicroseconds,
                BatchSequences = (uint)timings.BatchSequences,
                BatchRequests = (uint)timings.BatchRequests,
                KernelUs = timings.Device?.KernelMicroseconds ?? 0,
                UploadUs = timings.Device?.UploadMicroseconds ?? 0,
                DownloadUs = timings.Device?.DownloadMicroseconds ?? 0,
                ReceiveUs = ResponseTimings.Microseconds(receivedAt, timings.ArrivedAt),
            },
        };
        // respond_us and server_us run on to the hand-over to the transport (ResponseTimings.Sending); until then, to now.
        ResponseTimings.Sending(response, receivedAt, timings.CompletedAt);
        return new Leased<DecodeResponse>(response, new ResultRelease(result));
    }

    private sealed class ResultRelease(DecodeResult result) : IDisposable
    {
        public void Dispose() => result.Release();
    }
}
