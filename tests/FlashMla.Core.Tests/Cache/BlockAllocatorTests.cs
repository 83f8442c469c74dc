using FlashMla.Core.Cache;

namespace FlashMla.Core.Tests.Cache;

public sealed class BlockAllocatorTests
{
    [Fact]
    public void Allocation_is_all_or_nothing()
    {
        var allocator = new BlockAllocator(4);
        Assert.True(allocator.TryAllocate(new int[3]));
        Assert.False(allocator.TryAllocate(new int[2]));
        Assert.Equal(1, allocator.FreeBlocks);
    }

    [Fact]
    public void A_shared_block_is_freed_by_its_last_owner_only()
    {
        var allocator = new BlockAllocator(2);
        var block = new int[1];
        allocator.TryAllocate(block);
        allocator.AddRef(block[0]);
        Assert.False(allocator.Release(block[0]));
        Assert.Equal(1, allocator.FreeBlocks);
        Assert.True(allocator.Release(block[0]));
        Assert.Equal(2, allocator.FreeBlocks);
    }

    [Fact]
    public void Double_free_and_sharing_a_free_block_are_refused()
    {
        var allocator = new BlockAllocator(2);
        Assert.Throws<InvalidOperationException>(() => allocator.Release(0));
        Assert.Throws<InvalidOperationException>(() => allocator.AddRef(1));
        Assert.Equal(2, allocator.FreeBlocks);
    }
}
