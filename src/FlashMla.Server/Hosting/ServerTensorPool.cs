using System.Buffers;
using FlashMla.Core.Memory;

namespace FlashMla.Server.Hosting;

/// <summary>
/// The host's one pool of tensor-sized byte arrays, a singleton of the service container: request payloads parsed
/// off the wire (the gRPC marshallers and the data plane) and the outputs of decode batches (the scheduler) are
/// rented from it and given back once the response is on the wire, so a decode step allocates nothing that grows
/// with its tensors. The CUDA backend page-locks its arrays (<see cref="PinnedTensorPool.Attach"/>) to copy q in and
/// the outputs out without staging. Everything that rents from it gets it passed in; nothing reaches it statically.
/// </summary>
public static class ServerTensorPool
{
    /// <summary>Largest array the pool keeps (1 GiB); larger rents are plain allocations.</summary>
    public const int MaxPooledBytes = 1 << 30;

    /// <summary>
    /// Idle arrays kept per power-of-two size (within the retained bytes of <see cref="FlashMlaOptions.TensorPoolRetainedMiB"/>).
    /// A server with many streams and requests in flight holds one input and one output buffer per request; 256 covers
    /// 64 in flight on each of four connections.
    /// </summary>
    public const int ArraysPerSize = 256;

    /// <summary>
    /// A bounded pool with locks rather than <see cref="ArrayPool{T}.Shared"/>: buffers are rented on the scheduler
    /// loop and returned on whichever thread wrote the response, which the shared pool's per-thread caches serve
    /// poorly; this one keeps what is returned until it is rented again.
    /// </summary>
    /// <param name="limits">The budgets of bytes held, retained and page-locked (<see cref="FlashMlaOptions.ToTensorPoolLimits"/>).</param>
    public static PinnedTensorPool Create(TensorPoolLimits limits) => new(MaxPooledBytes, ArraysPerSize, limits);

    /// <summary>The memory this process may use, as the GC sees it (a container's limit inside one), for the default budgets.</summary>
    public static long AvailableMemoryBytes()
    {
        long available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
        return available > 0 ? available : 16L << 30; // unknown (no GC has run on some runtimes): assume a modest machine
    }
}
