using FlashMla.Core.Backends;
using FlashMla.Core.Tensors;

namespace FlashMla.Cuda.DeviceCheck;

/// <summary>
/// The layouts the GPU decode tests build, checked without a GPU (so CI catches a broken case before a device run
/// does): every case's batch passes the backends' invariants, and its slots split into cached, appended and past-end
/// exactly as the case says.
/// </summary>
public sealed class DecodeCaseLayoutTests
{
    [Theory]
    [MemberData(nameof(DecodeCase.Names), MemberType = typeof(DecodeCase))]
    public void Each_case_builds_a_batch_the_backends_accept(string name)
    {
        var c = DecodeCase.Named(name);
        var steps = new DeviceSteps(new Random(DeviceBackend.StableHash(name)));
        var layout = DecodeCaseLayout.Of(c, steps, DeviceBackend.Blocks);
        int b = c.Lens.Length;
        int appended = c.Append ? b * c.QueryTokens : 0;
        Assert.Equal(appended, layout.New.Length);
        Assert.Equal(c.Lens.Sum() - appended, layout.Cached.Length);
        Assert.Equal(c.Lens.Sum(l => MlaDims.BlocksFor(l)) * MlaDims.BlockSize - c.Lens.Sum(), layout.PastEnd.Length);
        Assert.Equal(layout.Cached.Length + layout.New.Length + layout.PastEnd.Length,
            layout.Cached.Concat(layout.New).Concat(layout.PastEnd).Distinct().Count());

        ushort[] newRows = c.Append ? steps.RandomRows(layout.New.Length) : [];
        var batch = steps.NewBatch(c.Layer, c.QueryTokens, c.Heads, c.Lens, layout.Stride, layout.BlockTable, newRows, layout.New);
        batch.CheckInvariants(new KvPoolGeometry(DeviceBackend.Layers, DeviceBackend.Blocks));
    }
}
