using FlashMla.Client;
using FlashMla.Contracts.V1;
using FlashMla.Core.Tensors;

namespace FlashMla.Cli;

/// <summary>What verify checks of an fp8 cache besides the outputs: the stored bytes against the CPU codec.</summary>
internal static class Fp8Check
{
    /// <summary>
    /// Reads one layer of a sequence as stored and counts the rows whose 656 bytes differ from
    /// <see cref="Fp8KvFormat.QuantizeRow"/> of the bf16 rows the client sent (<paramref name="sent"/>, the whole
    /// layer). A layer of the wrong length or dtype counts every row.
    /// </summary>
    public static async Task<int> MismatchedRowsAsync(FlashMlaClient client, ulong id, int layer, ushort[] sent, CancellationToken cancellationToken)
    {
        int rows = sent.Length / MlaDims.HeadDimK;
        var (dtype, stored) = await client.ReadStoredKvAsync(id, layer, cancellationToken: cancellationToken);
        if (dtype != DType.Fp8E4M3Scaled || stored.Length != rows * Fp8KvFormat.TokenBytes) return rows;
        var expected = new byte[Fp8KvFormat.TokenBytes];
        int mismatched = 0;
        for (int r = 0; r < rows; r++)
        {
            Fp8KvFormat.QuantizeRow(sent.AsSpan(r * MlaDims.HeadDimK, MlaDims.HeadDimK), expected);
            if (!expected.AsSpan().SequenceEqual(stored.AsSpan(r * Fp8KvFormat.TokenBytes, Fp8KvFormat.TokenBytes))) mismatched++;
        }
        return mismatched;
    }
}
