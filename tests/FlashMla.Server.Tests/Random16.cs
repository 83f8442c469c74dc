
namespace FlashMla.Server.Tests;

/// <summary>Random bf16 data for tests (never zeros: they hide unwritten outputs).</summary>
public static class Random16
{
    public static ushort[] Bf16(Random random, int count, float scale = 1f)
    {
        var values = new ushort[count];
        for (int i = 0; i < count; i++) values[i] = FlashMla.Core.Tensors.Bf16.FromFloat((float)(random.NextDouble() * 2 - 1) * scale);
        return values;
    }
}
