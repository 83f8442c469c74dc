using FlashMla.Server.Hosting;

namespace FlashMla.Server.Tests;

/// <summary>The memory options: defaults derived from the memory the process may use, explicit values, and what start-up refuses.</summary>
public sealed class MemoryBudgetOptionsTests
{
    [Fact]
    public void Default_budgets_are_a_quarter_of_memory_and_a_quarter_of_that_retained()
    {
        var limits = new FlashMlaOptions().ToTensorPoolLimits(availableBytes: 64L << 30);
        Assert.Equal(16L << 30, limits.HeldBytes);
        Assert.Equal(4L << 30, limits.RetainedBytes);
        Assert.Equal(20L << 30, limits.PageLockedBytes);
    }

    [Fact]
    public void On_a_small_machine_the_default_budget_still_holds_one_largest_message()
    {
        var options = new FlashMlaOptions();
        Assert.Equal(options.MaxMessageBytes, options.ToTensorPoolLimits(availableBytes: 512L << 20).HeldBytes);
    }

    [Fact]
    public void Explicit_budgets_are_taken_as_given()
    {
        var limits = new FlashMlaOptions { TensorBudgetMiB = 3072, TensorPoolRetainedMiB = 100, PageLockedBudgetMiB = 1024 }
            .ToTensorPoolLimits(availableBytes: 1L << 40);
        Assert.Equal(3072L << 20, limits.HeldBytes);
        Assert.Equal(100L << 20, limits.RetainedBytes);
        Assert.Equal(1024L << 20, limits.PageLockedBytes);
    }

    [Fact]
    public void Start_up_refuses_a_budget_smaller_than_one_message_and_stream_limits_out_of_range()
    {
        var problems = new FlashMlaOptions { TensorBudgetMiB = 64, MaxStreamsPerConnection = 0 }.Validate().ToList();
        Assert.Contains(problems, p => p.StartsWith("TensorBudgetMiB", StringComparison.Ordinal));
        Assert.Contains(problems, p => p.StartsWith("MaxStreamsPerConnection", StringComparison.Ordinal));
        Assert.Empty(new FlashMlaOptions { TensorBudgetMiB = 256 }.Validate());
        Assert.Contains(new FlashMlaOptions { PageLockedBudgetMiB = -1 }.Validate(), p => p.StartsWith("PageLockedBudgetMiB", StringComparison.Ordinal));
    }

    [Fact]
    public void The_memory_the_process_may_use_is_known()
    {
        long available = ServerTensorPool.AvailableMemoryBytes();
        Assert.Equal(GC.GetGCMemoryInfo().TotalAvailableMemoryBytes is > 0 and var gc ? gc : 16L << 30, available);
        Assert.True(available >= 256L << 20, $"{available} bytes");
    }
}
