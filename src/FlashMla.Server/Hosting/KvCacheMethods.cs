using FlashMla.Contracts.V1;
using FlashMla.Contracts.Wire;
using FlashMla.Core.Memory;
using FlashMla.Server.Services;
using Grpc.AspNetCore.Server.Model;
using Grpc.Core;

namespace FlashMla.Server.Hosting;

/// <summary>
/// Binds flashmla.v1.KvCache's methods (the generated definitions; AppendKv's with a pooled request marshaller) to <see cref="KvCacheService"/>, each request
/// marshaller guarded (<see cref="UnparsableRequestGuard"/>). A method provider rather than the generated base class,
/// whose binding attribute would bind the unguarded marshallers beside these.
/// </summary>
internal sealed class KvCacheMethods(RequestFailures failures, PinnedTensorPool tensorBuffers) : IServiceMethodProvider<KvCacheService>
{
    public void OnServiceMethodDiscovery(ServiceMethodProviderContext<KvCacheService> context)
    {
        var methods = GeneratedMethods.Of(binder => KvCache.BindService(binder, null!));
        Method<TRequest, TResponse> Get<TRequest, TResponse>(string name) where TRequest : class where TResponse : class =>
            UnparsableRequestGuard.Guard(methods.Get<TRequest, TResponse>(name), failures);

        context.AddUnaryMethod(Get<GetConfigRequest, ServiceConfig>("GetConfig"), [], (s, r, c) => s.GetConfig(r, c));
        context.AddUnaryMethod(Get<CreateSequenceRequest, CreateSequenceResponse>("CreateSequence"), [], (s, r, c) => s.CreateSequence(r, c));
        // AppendKv's chunks land in the host's tensor pool (KvIngestMarshallers), not a new array each.
        context.AddClientStreamingMethod(UnparsableRequestGuard.Guard(KvIngestMarshallers.AppendKv(tensorBuffers), failures), [], (s, r, c) => s.AppendKv(r, c));
        context.AddUnaryMethod(Get<ForkSequenceRequest, ForkSequenceResponse>("ForkSequence"), [], (s, r, c) => s.ForkSequence(r, c));
        context.AddUnaryMethod(Get<TruncateSequenceRequest, TruncateSequenceResponse>("TruncateSequence"), [], (s, r, c) => s.TruncateSequence(r, c));
        context.AddUnaryMethod(Get<FreeSequenceRequest, FreeSequenceResponse>("FreeSequence"), [], (s, r, c) => s.FreeSequence(r, c));
        context.AddUnaryMethod(Get<GetSequenceRequest, SequenceInfo>("GetSequence"), [], (s, r, c) => s.GetSequence(r, c));
        context.AddServerStreamingMethod(Get<ReadKvRequest, KvChunk>("ReadKv"), [], (s, r, w, c) => s.ReadKv(r, w, c));
        context.AddUnaryMethod(Get<GetStatsRequest, CacheStats>("GetStats"), [], (s, r, c) => s.GetStats(r, c));
    }
}
