using System.Buffers;
using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using Microsoft.AspNetCore.Connections;

namespace FlashMla.Server.Hosting;

/// <summary>
/// Kestrel's transport memory with large blocks. Kestrel's own pool hands out 4 KiB blocks, and its socket
/// transport receives into one block at a time, so a connection carrying megabytes of tensors makes a
/// receive call (and, with the default zero-byte reads, two) per 4 KiB, and the HTTP/2 layer copies the
/// payload into more 4 KiB segments. With blocks of <see cref="BlockBytes"/> one receive takes up to a
/// block. Registered as the <see cref="IMemoryPoolFactory{T}"/> Kestrel's socket transport takes its
/// pools from (<see cref="FlashMlaServerApp"/>); the measurement switch <c>FLASHMLA_SOCKET_BLOCK_KIB</c> sets the size.
/// </summary>
internal sealed class LargeBlockMemoryPoolFactory(int blockBytes, int retainedBlocks) : IMemoryPoolFactory<byte>
{
    private readonly StrongBox<long> _blocksAllocated = new();

    public int BlockBytes { get; } = blockBytes;

    /// <summary>Blocks allocated by every pool this factory made (shows the transport really uses them).</summary>
    public long BlocksAllocated => Interlocked.Read(ref _blocksAllocated.Value);

    public MemoryPool<byte> Create(MemoryPoolOptions? options = null) => new LargeBlockMemoryPool(BlockBytes, retainedBlocks, _blocksAllocated);
}

/// <summary>
/// Blocks are pinned-object-heap arrays (they never move under a pending socket operation) wrapped once and
/// reused with their wrapper, so renting allocates nothing once the pool is warm. At most
/// <c>retainedBlocks</c> idle blocks are kept; rents larger than a block get a one-off array.
/// </summary>
internal sealed class LargeBlockMemoryPool(int blockBytes, int retainedBlocks, StrongBox<long>? allocated = null) : MemoryPool<byte>
{
    private readonly ConcurrentQueue<Block> _idle = new();
    private int _idleCount;
    private bool _disposed;

    public override int MaxBufferSize => blockBytes;

    public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (minBufferSize > blockBytes) return new Block(null, minBufferSize);
        if (_idle.TryDequeue(out var block))
        {
            Interlocked.Decrement(ref _idleCount);
            block.Rented();
            return block;
        }
        if (allocated is not null) Interlocked.Increment(ref allocated.Value);
        return new Block(this, blockBytes);
    }

    private void Return(Block block)
    {
        if (Volatile.Read(ref _disposed)) return; // the GC takes it
        if (Interlocked.Increment(ref _idleCount) > retainedBlocks)
        {
            Interlocked.Decrement(ref _idleCount);
            return;
        }
        _idle.Enqueue(block);
    }

    protected override void Dispose(bool disposing)
    {
        _disposed = true;
        _idle.Clear();
    }

    /// <summary>One block and its owner object, rented and returned together.</summary>
    private sealed class Block(LargeBlockMemoryPool? pool, int length) : IMemoryOwner<byte>
    {
        private readonly byte[] _array = GC.AllocateUninitializedArray<byte>(length, pinned: true);
        private int _returned;

        public Memory<byte> Memory => _array;

        public void Rented() => Volatile.Write(ref _returned, 0);

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _returned, 1) == 0) pool?.Return(this);
        }
    }
}
