using FlashMla.Core.Tensors;

namespace FlashMla.Cuda.DeviceCheck;

/// <summary>The decode shapes every device run checks: block edges, empty and short sequences, splits, odd heads, many sequences.</summary>
internal sealed record DecodeCase(string Name, int Layer, int QueryTokens, int Heads, int[] Lens, bool Append)
{
    public static IReadOnlyList<DecodeCase> All { get; } = Build(new Random(GpuDevice.Seed + 1));

    public static TheoryData<string> Names
    {
        get
        {
            var names = new TheoryData<string>();
            foreach (var c in All) names.Add(c.Name);
            return names;
        }
    }

    public static DecodeCase Named(string name) => All.Single(c => c.Name == name);

    private static DecodeCase[] Build(Random random) =>
    [
        new("b4 s1 h16 edges", 0, 1, 16, [1, 63, 64, 65], true),
        new("b3 s1 h16 len0", 1, 1, 16, [0, 5, 64], false),
        new("b6 s2 h128 short", 1, 2, 128, [1, 2, 3, 64, 65, 700], false),
        new("b2 s1 h128 32k split", 0, 1, 128, [32768, 100], true),
        new("b5 s3 h3 odd", 1, 3, 3, [3, 4, 130, 1000, 64], true),
        new("b1 s1 h1 len1", 0, 1, 1, [1], true),
        new("b4 s4 h128 512rows", 0, 4, 128, [4, 66, 129, 2000], true),
        new("b32 s1 h64 varlen", 1, 1, 64, Enumerable.Range(0, 32).Select(_ => random.Next(1, 4097)).ToArray(), true),
        new("b96 s2 h16 varlen", 0, 2, 16, Enumerable.Range(0, 96).Select(_ => random.Next(2, 1500)).ToArray(), true),
    ];

    public override string ToString() => Name;
}

/// <summary>
/// Where a <see cref="DecodeCase"/> lives in a pool: each sequence's pages drawn from a shuffled pool, its cached
/// rows, the slots its step appends (the last s_q positions when the case appends) and the slots past its length
/// up to the end of its last page (NaN in the tests).
/// </summary>
internal sealed record DecodeCaseLayout(int Stride, int[] BlockTable, int[] Cached, int[] New, int[] PastEnd)
{
    /// <summary>bf16 NaN: a kernel that reads a row holding it past a sequence's end turns its output NaN.</summary>
    public const ushort Bf16NaN = 0x7FC0;

    /// <summary><paramref name="rows"/> rows of 576 NaN.</summary>
    public static ushort[] NaNRows(int rows)
    {
        var values = new ushort[rows * MlaDims.HeadDimK];
        Array.Fill(values, Bf16NaN);
        return values;
    }

    public static DecodeCaseLayout Of(DecodeCase c, DeviceSteps steps, int numBlocks)
    {
        int b = c.Lens.Length;
        int stride = c.Lens.Max(l => MlaDims.BlocksFor(l)) + 1;
        int[] pool = steps.Shuffled(numBlocks);
        var table = new int[b * stride];
        Array.Fill(table, -1);
        int next = 0;
        List<int> cached = [], pastEnd = [], fresh = [];
        for (int s = 0; s < b; s++)
        {
            int blocks = MlaDims.BlocksFor(c.Lens[s]);
            for (int j = 0; j < blocks; j++) table[s * stride + j] = pool[next++];
            int appended = c.Append ? c.QueryTokens : 0;
            for (int t = 0; t < blocks * MlaDims.BlockSize; t++)
            {
                int slot = table[s * stride + t / MlaDims.BlockSize] * MlaDims.BlockSize + t % MlaDims.BlockSize;
                if (t >= c.Lens[s]) pastEnd.Add(slot);
                else if (t >= c.Lens[s] - appended) fresh.Add(slot);
                else cached.Add(slot);
            }
        }
        return new DecodeCaseLayout(stride, table, [.. cached], [.. fresh], [.. pastEnd]);
    }
}
