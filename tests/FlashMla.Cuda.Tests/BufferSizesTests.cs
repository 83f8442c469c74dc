using FlashMla.Cuda.Backend;

namespace FlashMla.Cuda.Tests;

/// <summary>How the backend's staging and scratch buffers grow (no GPU needed: the policy is arithmetic).</summary>
public class BufferSizesTests
{
    [Theory]
    [InlineData(0, 1, 1L << 20)]                         // the first allocation is at least 1 MiB
    [InlineData(0, (1L << 20) + 1, (1L << 20) + (1L << 16))] // in 64 KiB steps
    [InlineData(1L << 20, (1L << 20) + 1, 2L << 20)]     // a small overflow doubles
    [InlineData(4L << 30, (4L << 30) + 1, 5L << 30)]     // large buffers grow by at most 1 GiB at a time
    [InlineData(1L << 20, 10L << 20, 10L << 20)]         // a big jump takes what is needed
    public void Buffers_grow_at_least_twofold_by_at_most_a_gibibyte_in_64_kib_steps(long capacity, long needed, long expected)
    {
        long grown = BufferSizes.Grown(capacity, needed);
        Assert.Equal(expected, grown);
        Assert.True(grown >= needed);
    }
}
