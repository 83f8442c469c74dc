using FlashMla.Client;
using FlashMla.Core.Tensors;

namespace FlashMla.Cli;

/// <summary>Random bf16 data and sequence set-up shared by the commands.</summary>
internal static class Workload
{
    /// <summary>Uniform in [-scale, scale), never all zeros (zeros hide unwritten outputs).</summary>
    public static ushort[] RandomBf16(Random random, long count, float scale = 1f)
    {
        var values = new ushort[count];
        for (long i = 0; i < count; i++) values[i] = Bf16.FromFloat((float)(random.NextDouble() * 2 - 1) * scale);
        return values;
    }

    /// <summary>Creates sequences and uploads <paramref name="lengths"/> random rows to each of <paramref name="layers"/>; returns the ids and the rows.</summary>
    public static async Task<(ulong[] Ids, ushort[][][] Rows)> CreateAsync(FlashMlaClient client, Random random, IReadOnlyList<int> lengths,
        IReadOnlyList<int> layers, int layerCount, CancellationToken cancellationToken)
    {
        var ids = new ulong[lengths.Count];
        var rows = new ushort[lengths.Count][][];
        var uploads = new List<KvUpload>();
        for (int i = 0; i < lengths.Count; i++)
        {
            ids[i] = await client.CreateSequenceAsync(cancellationToken);
            rows[i] = new ushort[layerCount][];
            for (int l = 0; l < layerCount; l++) rows[i][l] = [];
            foreach (int layer in layers)
            {
                rows[i][layer] = RandomBf16(random, (long)lengths[i] * MlaDims.HeadDimK);
                if (lengths[i] > 0) uploads.Add(new KvUpload(ids[i], layer, rows[i][layer]));
            }
        }
        if (uploads.Count > 0) await client.AppendKvAsync(uploads, cancellationToken: cancellationToken);
        return (ids, rows);
    }

    /// <summary>
    /// <paramref name="count"/> new sequences, each holding the same <paramref name="context"/> random rows in layer 0 (for
    /// the benchmarks: the content does not matter there, only the lengths), uploaded eight sequences per call.
    /// </summary>
    public static async Task<ulong[]> PrefillAsync(FlashMlaClient client, Random random, int count, int context, CancellationToken cancellationToken)
    {
        var rows = RandomBf16(random, (long)context * MlaDims.HeadDimK);
        var ids = new ulong[count];
        for (int i = 0; i < ids.Length; i++) ids[i] = await client.CreateSequenceAsync(cancellationToken);
        for (int start = 0; start < ids.Length; start += 8)
            await client.AppendKvAsync(ids[start..Math.Min(ids.Length, start + 8)].Select(id => new KvUpload(id, 0, rows)), cancellationToken: cancellationToken);
        return ids;
    }

    /// <summary>Relative error of bf16 <paramref name="actual"/> against a double reference.</summary>
    public static double RelativeError(ReadOnlySpan<ushort> actual, ReadOnlySpan<double> expected)
    {
        var asDouble = new double[actual.Length];
        for (int i = 0; i < actual.Length; i++) asDouble[i] = Bf16.ToFloat(actual[i]);
        return MlaReference.RelativeError(asDouble, expected);
    }

    public static double RelativeError(ReadOnlySpan<float> actual, ReadOnlySpan<double> expected)
    {
        var asDouble = new double[actual.Length];
        for (int i = 0; i < actual.Length; i++) asDouble[i] = actual[i];
        return MlaReference.RelativeError(asDouble, expected);
    }
}
