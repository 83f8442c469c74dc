using FlashMla.Cuda.DeviceCheck;
using Xunit.Sdk;
using Xunit.v3;

[assembly: CollectionBehavior(DisableTestParallelization = true)]
[assembly: TestCollectionOrderer(typeof(GpuLastOrderer))]

namespace FlashMla.Cuda.DeviceCheck;

/// <summary>Runs the sticky fault's collection after every other one: it leaves the process without a CUDA context.</summary>
public sealed class GpuLastOrderer : ITestCollectionOrderer
{
    public IReadOnlyCollection<TTestCollection> OrderTestCollections<TTestCollection>(IReadOnlyCollection<TTestCollection> testCollections)
        where TTestCollection : ITestCollection =>
        testCollections.OrderBy(c => c.TestCollectionDisplayName == StickyFaultCollection.Name ? 1 : 0)
            .ThenBy(c => c.TestCollectionDisplayName, StringComparer.Ordinal).ToArray();
}
