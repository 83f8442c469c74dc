using FlashMla.Core.Memory;
using FlashMla.Cuda.Backend;

namespace FlashMla.Cuda.DeviceCheck;

/// <summary>
/// With the CUDA backend's own registrar, page-locked host memory never grows past the pool's budget
/// (<see cref="TensorPoolLimits.PageLockedBytes"/>, the option PageLockedBudgetMiB): arrays past it are left for the
/// backend to stage, and are locked once room frees.
/// </summary>
[Collection(GpuCollection.Name), Trait("Category", GpuDevice.Category)]
public sealed class PageLockedBudgetTests
{
    [Fact]
    public void Page_locked_memory_stops_at_its_budget_and_an_idle_array_is_locked_once_room_frees()
    {
        GpuDevice.Require();
        const int array = 1 << 20, budget = 2 * array;
        var pool = new PinnedTensorPool(1 << 24, arraysPerSize: 1, new TensorPoolLimits { PageLockedBytes = budget });
        using (var backend = CudaBackendFactory.Create(new CudaBackendOptions { FatbinPath = GpuDevice.FatbinPath, NumLayers = 1, NumBlocks = 64 }))
        {
            backend.AttachHostPool(pool);
            var held = Enumerable.Range(0, 4).Select(_ => pool.Rent(array)).ToArray();
            Assert.Equal(budget, pool.RegisteredBytes);
            Assert.Equal(2, held.Count(a => pool.TryGetRegisteredAddress((ReadOnlyMemory<byte>)a, out _)));

            var staged = held.First(a => !pool.TryGetRegisteredAddress((ReadOnlyMemory<byte>)a, out _));
            var locked = held.First(a => pool.TryGetRegisteredAddress((ReadOnlyMemory<byte>)a, out _));
            pool.Return(staged);  // idle, still unlocked
            pool.Return(locked);  // no idle place left for its size: unregistered and let go
            Assert.Equal(array, pool.RegisteredBytes);
            var again = pool.Rent(array);
            Assert.Same(staged, again);
            Assert.True(pool.TryGetRegisteredAddress((ReadOnlyMemory<byte>)again, out _));
            Assert.Equal(budget, pool.RegisteredBytes);
        }
        Assert.Equal(0, pool.RegisteredBytes); // the backend detached the pool as it went
    }
}
