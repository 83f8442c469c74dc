using FlashMla.Contracts.Wire;
using FlashMla.Core.Memory;
using FlashMla.Server.Services;
using Grpc.AspNetCore.Server.Model;

namespace FlashMla.Server.Hosting;

/// <summary>
/// Binds flashmla.v1.Decoder's two methods to <see cref="DecoderService"/> with the pooled marshallers of
/// <see cref="DecodeMarshallers"/> over the host's tensor pool (the same wire contract as the generated
/// <c>Decoder.DecoderBase</c>). A method provider of the service container rather than a static binding
/// attribute, so the pool is the host's instance, handed in like every other dependency. Requests are parsed into the
/// pool's view within the budget of bytes held (past it: RESOURCE_EXHAUSTED), and parsing is guarded
/// (<see cref="UnparsableRequestGuard"/>).
/// </summary>
internal sealed class PooledDecoderMethods(PinnedTensorPool tensorBuffers, RequestFailures failures) : IServiceMethodProvider<DecoderService>
{
    public void OnServiceMethodDiscovery(ServiceMethodProviderContext<DecoderService> context)
    {
        var methods = new DecodeMarshallers(tensorBuffers.WithinBudget);
        context.AddDuplexStreamingMethod(UnparsableRequestGuard.Guard(methods.Decode, failures), [], (service, requests, responses, call) => service.Decode(requests, responses, call));
        context.AddUnaryMethod(UnparsableRequestGuard.Guard(methods.DecodeOnce, failures), [], (service, request, call) => service.DecodeOnce(request, call));
    }
}
