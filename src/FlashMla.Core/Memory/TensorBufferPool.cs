using System.Buffers;

namespace FlashMla.Core.Memory;

/// <summary>
/// The one pool of tensor-sized byte arrays on the server: request payloads parsed off the wire and the
/// outputs of decode batches are rented here and given back once the response is on the wire, so a decode
/// step allocates nothing that grows with its tensors (DESIGN.md, "The data plane").
/// </summary>
public static class TensorBufferPool
{
    /// <summary>Largest array the pool keeps (1 GiB, the pool's own ceiling); larger rents are plain allocations.</summary>
    public const int MaxPooledBytes = 1 << 30;

    /// <summary>
    /// Arrays kept per power-of-two size. A server with many streams and requests in flight holds one input
    /// and one output buffer per request; 256 covers 64 in flight on each of four connections.
    /// </summary>
    public const int ArraysPerSize = 256;

    /// <summary>
    /// A bounded pool with locks rather than <see cref="ArrayPool{T}.Shared"/>: buffers are rented on the
    /// scheduler loop and returned on whichever thread wrote the response, which the shared pool's per-thread
    /// caches serve poorly; this one keeps what is returned until it is rented again. Its arrays live on the
    /// pinned object heap, and a device backend page-locks them (<see cref="PinnedTensorPool.Attach"/>) to copy
    /// q in and the outputs out without staging.
    /// </summary>
    public static PinnedTensorPool Bytes { get; } = new(MaxPooledBytes, ArraysPerSize);
}
