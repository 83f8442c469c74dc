using FlashMla.Core.Memory;

namespace FlashMla.Core.Tests;

/// <summary>The server's tensor pool: pinned arrays by power-of-two size, page-locked through a backend's registrar.</summary>
public class PinnedTensorPoolTests
{
    private const int Large = PinnedTensorPool.RegistrationMinBytes;

    [Fact]
    public void Rents_power_of_two_pinned_arrays_and_reuses_returned_ones()
    {
        var pool = new PinnedTensorPool(1 << 24, 4);
        var a = pool.Rent(5000);
        Assert.Equal(8192, a.Length);
        Assert.Equal(PinnedTensorPool.MinArrayBytes, pool.Rent(1).Length);
        pool.Return(a);
        Assert.Same(a, pool.Rent(8000));
        Assert.Equal(2, pool.OwnedArrays);
    }

    [Fact]
    public void Oversized_rents_are_plain_arrays_the_pool_does_not_keep()
    {
        var pool = new PinnedTensorPool(1 << 20, 4);
        var big = pool.Rent((1 << 20) + 1);
        Assert.Equal((1 << 20) + 1, big.Length);
        pool.Return(big);
        Assert.Equal(0, pool.OwnedArrays);
        Assert.Throws<ArgumentOutOfRangeException>(() => pool.Rent(-1));
        Assert.Throws<ArgumentOutOfRangeException>(() => new PinnedTensorPool(3000, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => new PinnedTensorPool(1 << 20, 0));
    }

    [Fact]
    public void Attach_registers_held_and_new_large_arrays_but_not_small_ones()
    {
        var pool = new PinnedTensorPool(1 << 24, 4);
        var held = pool.Rent(Large);
        var small = pool.Rent(1000);
        var registrar = new FakeRegistrar();
        pool.Attach(registrar);
        Assert.Contains(held, registrar.Locked);
        Assert.DoesNotContain(small, registrar.Locked);
        var fresh = pool.Rent(3 * Large);
        Assert.Contains(fresh, registrar.Locked);
        Assert.Equal(2, pool.RegisteredArrays);
    }

    [Fact]
    public unsafe void Registered_address_is_the_first_element_through_slices_and_typed_views()
    {
        var pool = new PinnedTensorPool(1 << 24, 4);
        pool.Attach(new FakeRegistrar());
        var array = pool.Rent(Large);
        fixed (byte* p = array)
        {
            Assert.True(pool.TryGetRegisteredAddress((ReadOnlyMemory<byte>)array.AsMemory(100, 50), out nint bytes));
            Assert.Equal((nint)(p + 100), bytes);
            var bf16 = MemoryCast.Cast<byte, ushort>(array.AsMemory(64, 4096));
            Assert.True(pool.TryGetRegisteredAddress((ReadOnlyMemory<ushort>)bf16.Slice(10), out nint view));
            Assert.Equal((nint)(p + 64 + 20), view);
            var fp32 = MemoryCast.Cast<byte, float>(array.AsMemory(0, 4096));
            Assert.True(pool.TryGetRegisteredAddress((ReadOnlyMemory<float>)fp32, out nint floats));
            Assert.Equal((nint)p, floats);
        }
    }

    [Fact]
    public void Memory_outside_registered_pool_arrays_is_staged()
    {
        var pool = new PinnedTensorPool(1 << 24, 4);
        var small = pool.Rent(1000);
        var unattached = pool.Rent(Large);
        Assert.False(pool.TryGetRegisteredAddress((ReadOnlyMemory<byte>)unattached, out _)); // no registrar yet
        pool.Attach(new FakeRegistrar());
        Assert.False(pool.TryGetRegisteredAddress((ReadOnlyMemory<byte>)small, out _));
        Assert.False(pool.TryGetRegisteredAddress((ReadOnlyMemory<byte>)new byte[Large], out _));
        Assert.False(pool.TryGetRegisteredAddress((ReadOnlyMemory<ushort>)new ushort[Large], out _));
        Assert.False(pool.TryGetRegisteredAddress(ReadOnlyMemory<byte>.Empty, out _));
        Assert.True(pool.TryGetRegisteredAddress((ReadOnlyMemory<byte>)unattached, out _));
    }

    [Fact]
    public void An_array_the_pool_lets_go_is_unregistered_first()
    {
        var pool = new PinnedTensorPool(1 << 24, arraysPerSize: 1);
        var registrar = new FakeRegistrar();
        pool.Attach(registrar);
        var a = pool.Rent(Large);
        var b = pool.Rent(Large);
        pool.Return(a);
        pool.Return(b); // the size's one idle place is taken: b goes
        Assert.DoesNotContain(b, registrar.Locked);
        Assert.Contains(a, registrar.Locked);
        Assert.Equal(1, pool.OwnedArrays);
        Assert.False(pool.TryGetRegisteredAddress((ReadOnlyMemory<byte>)b, out _));
    }

    [Fact]
    public void Detach_and_a_new_registrar_undo_every_registration()
    {
        var pool = new PinnedTensorPool(1 << 24, 4);
        var first = new FakeRegistrar();
        pool.Attach(first);
        var a = pool.Rent(Large);
        var second = new FakeRegistrar();
        pool.Attach(second);
        Assert.Empty(first.Locked);
        Assert.Contains(a, second.Locked);
        pool.Detach();
        Assert.Empty(second.Locked);
        Assert.Equal(0, pool.RegisteredArrays);
        Assert.False(pool.TryGetRegisteredAddress((ReadOnlyMemory<byte>)a, out _));
        pool.Detach(); // idempotent
    }

    [Fact]
    public void A_refused_registration_leaves_the_array_staged()
    {
        var pool = new PinnedTensorPool(1 << 24, 4);
        var registrar = new FakeRegistrar { Refuse = true };
        pool.Attach(registrar);
        var a = pool.Rent(Large);
        Assert.False(pool.TryGetRegisteredAddress((ReadOnlyMemory<byte>)a, out _));
        pool.Return(a);
        Assert.Equal(0, registrar.Unregistrations);
    }

    [Fact]
    public async Task Concurrent_rents_and_returns_register_each_array_once()
    {
        var pool = new PinnedTensorPool(1 << 24, 2);
        var registrar = new FakeRegistrar();
        pool.Attach(registrar);
        await Task.WhenAll(Enumerable.Range(0, 8).Select(t => Task.Run(() =>
        {
            var rng = new Random(t);
            for (int i = 0; i < 500; i++)
            {
                var a = pool.Rent(Large << rng.Next(3));
                Assert.True(pool.TryGetRegisteredAddress((ReadOnlyMemory<byte>)a, out _));
                pool.Return(a);
            }
        })));
        Assert.Equal(pool.OwnedArrays, pool.RegisteredArrays);
        Assert.Equal(pool.RegisteredArrays, registrar.Locked.Count);
        Assert.Equal(registrar.Registrations - registrar.Unregistrations, registrar.Locked.Count);
        pool.Detach();
        Assert.Empty(registrar.Locked);
    }
}
