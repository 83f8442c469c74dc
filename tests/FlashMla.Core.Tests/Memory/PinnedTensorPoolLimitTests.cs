using FlashMla.Core.Memory;

namespace FlashMla.Core.Tests;

/// <summary>The tensor pool's three ceilings: bytes held by requests and responses, idle bytes retained, bytes page-locked.</summary>
public class PinnedTensorPoolLimitTests
{
    private const int Large = PinnedTensorPool.RegistrationMinBytes;

    [Fact]
    public void TryRent_refuses_past_the_held_budget_and_admits_again_once_bytes_come_back()
    {
        var pool = new PinnedTensorPool(1 << 24, 8, new TensorPoolLimits { HeldBytes = 3 << 20 });
        Assert.True(pool.TryRent(1 << 20, out var a));
        Assert.True(pool.TryRent((1 << 20) + 1, out var b)); // rounds up to 2 MiB: 3 MiB held, all of the budget
        Assert.Equal(3L << 20, pool.HeldBytes);
        Assert.False(pool.TryRent(1, out var refused));
        Assert.Null(refused);
        Assert.Equal(3L << 20, pool.HeldBytes); // a refusal holds nothing
        pool.Return(b);
        Assert.Equal(1L << 20, pool.HeldBytes);
        Assert.True(pool.TryRent(2 << 20, out var again));
        Assert.Same(b, again);
        pool.Return(a);
        pool.Return(again);
        Assert.Equal(0, pool.HeldBytes);
        Assert.Equal(3L << 20, pool.PeakHeldBytes);
    }

    [Fact]
    public void Plain_rents_always_succeed_and_take_room_from_admitted_ones()
    {
        var pool = new PinnedTensorPool(1 << 24, 8, new TensorPoolLimits { HeldBytes = 1 << 20 });
        var output = pool.Rent(4 << 20); // a batch's outputs: never refused
        Assert.Equal(4L << 20, pool.HeldBytes);
        Assert.False(pool.TryRent(4096, out _));
        Assert.Throws<TensorBudgetExceededException>(() => pool.WithinBudget.Rent(4096));
        pool.Return(output);
        var viaView = pool.WithinBudget.Rent(4096);
        Assert.Equal(4096, pool.HeldBytes);
        pool.WithinBudget.Return(viaView);
        Assert.Equal(0, pool.HeldBytes);
    }

    [Fact]
    public void Oversized_rents_count_while_held_and_a_second_return_changes_nothing()
    {
        var pool = new PinnedTensorPool(1 << 20, 4, new TensorPoolLimits { HeldBytes = 3 << 20 });
        Assert.True(pool.TryRent(2 << 20, out var big));
        Assert.Equal(2L << 20, pool.HeldBytes);
        Assert.False(pool.TryRent(2 << 20, out _));
        pool.Return(big);
        pool.Return(big);
        pool.Return(new byte[4096]); // not the pool's
        Assert.Equal(0, pool.HeldBytes);
        Assert.Equal(0, pool.OwnedArrays);
    }

    [Fact]
    public void Idle_arrays_past_the_retained_budget_are_let_go_and_unregistered()
    {
        var pool = new PinnedTensorPool(1 << 24, 256, new TensorPoolLimits { RetainedBytes = 2 * Large });
        var registrar = new FakeRegistrar();
        pool.Attach(registrar);
        var arrays = Enumerable.Range(0, 6).Select(_ => pool.Rent(Large)).ToArray();
        Assert.Equal(6, registrar.Locked.Count);
        foreach (var array in arrays) pool.Return(array);
        Assert.Equal(2L * Large, pool.IdleBytes);
        Assert.Equal(2, pool.OwnedArrays);
        Assert.Equal(2, registrar.Locked.Count); // the four let go were unregistered first
        Assert.Equal(0, pool.HeldBytes);
    }

    [Fact]
    public void Page_locking_stops_at_its_budget_and_resumes_for_an_idle_array_once_room_frees()
    {
        // One idle place per size: a second returned array is let go, which frees page-locked room.
        var pool = new PinnedTensorPool(1 << 24, 1, new TensorPoolLimits { PageLockedBytes = 2 * Large });
        var registrar = new FakeRegistrar();
        pool.Attach(registrar);
        var x = pool.Rent(Large);
        var y = pool.Rent(Large);
        var z = pool.Rent(Large); // past the budget: staged
        Assert.True(pool.TryGetRegisteredAddress((ReadOnlyMemory<byte>)y, out _));
        Assert.False(pool.TryGetRegisteredAddress((ReadOnlyMemory<byte>)z, out _));
        Assert.Equal(2L * Large, registrar.LockedBytes);
        Assert.Equal(2L * Large, pool.RegisteredBytes);
        pool.Return(z); // idle, unregistered
        pool.Return(x); // no idle place left: let go and unregistered first
        Assert.Single(registrar.Locked);
        var reused = pool.Rent(Large);
        Assert.Same(z, reused);
        Assert.True(pool.TryGetRegisteredAddress((ReadOnlyMemory<byte>)reused, out _)); // registered now that it fits
        Assert.Equal(2L * Large, registrar.LockedBytes);
        pool.Detach();
        Assert.Empty(registrar.Locked);
        Assert.Equal(0, pool.RegisteredBytes);
    }

    [Fact]
    public async Task Concurrent_admission_never_passes_the_held_budget()
    {
        const long budget = 16 * Large;
        var pool = new PinnedTensorPool(1 << 24, 64, new TensorPoolLimits { HeldBytes = budget });
        int refused = 0;
        long worst = 0;
        await Task.WhenAll(Enumerable.Range(0, 8).Select(t => Task.Run(() =>
        {
            var rng = new Random(t);
            for (int i = 0; i < 2000; i++)
            {
                if (!pool.TryRent(Large << rng.Next(3), out var array))
                {
                    Interlocked.Increment(ref refused);
                    continue;
                }
                long held = pool.HeldBytes;
                long seen;
                while ((seen = Interlocked.Read(ref worst)) < held && Interlocked.CompareExchange(ref worst, held, seen) != seen) { }
                pool.Return(array);
            }
        })));
        Assert.True(pool.PeakHeldBytes <= budget, $"peak {pool.PeakHeldBytes} over the budget {budget}");
        Assert.True(worst <= budget);
        Assert.Equal(0, pool.HeldBytes);
    }
}
