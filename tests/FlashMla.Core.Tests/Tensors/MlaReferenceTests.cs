using FlashMla.Core.Tensors;

namespace FlashMla.Core.Tests.Tensors;

/// <summary>The float64 reference itself, on cases small enough to work out by hand.</summary>
public class MlaReferenceTests
{
    private const int Dk = MlaDims.HeadDimK, Dv = MlaDims.HeadDimV;

    /// <summary>A KV row that is zero but for the given columns (all values exact in bf16).</summary>
    private static ushort[] Row(params (int Column, float Value)[] entries)
    {
        var row = new ushort[Dk];
        foreach (var (column, value) in entries) row[column] = Bf16.FromFloat(value);
        return row;
    }

    [Fact]
    public void One_query_over_two_positions_is_the_softmax_weighted_sum_of_their_values()
    {
        // q = e0; k0 = 0 (score 0), k1 = 2 e0 + 3 e1 (score 2); with scale 1 the weights are 1 : e^2.
        ushort[] q = Row((0, 1f));
        ushort[] kv = [.. Row((1, 1f)), .. Row((0, 2f), (1, 3f), (575, 5f))];
        var output = new double[Dv];
        var lse = new double[1];

        MlaReference.Decode(q, kv, length: 2, queryTokens: 1, heads: 1, scale: 1, output, lse);

        double w0 = 1 / (1 + Math.Exp(2)), w1 = Math.Exp(2) / (1 + Math.Exp(2));
        Assert.Equal(Math.Log(1 + Math.Exp(2)), lse[0], 12);
        Assert.Equal(w1 * 2, output[0], 12);
        Assert.Equal(w0 * 1 + w1 * 3, output[1], 12);
        Assert.All(output[2..], v => Assert.Equal(0, v)); // column 575 is rope: in the score, never in the value
    }

    [Fact]
    public void Each_query_token_sees_only_the_positions_up_to_its_own_and_one_that_sees_none_is_zero_with_minus_infinity()
    {
        // s_q = 3 over a sequence of 2: token 0 sees nothing, token 1 sees position 0, token 2 sees both.
        ushort[] q = [.. Row((0, 1f)), .. Row((0, 1f)), .. Row((0, 1f))];
        ushort[] kv = [.. Row((1, 4f)), .. Row((0, 1f), (1, 8f))];
        var output = new double[3 * Dv];
        var lse = new double[3];

        MlaReference.Decode(q, kv, length: 2, queryTokens: 3, heads: 1, scale: 0.5, output, lse);

        Assert.Equal(double.NegativeInfinity, lse[0]);
        Assert.All(output[..Dv], v => Assert.Equal(0, v));
        Assert.Equal(0, lse[1], 12);                       // one position of score 0: log(e^0)
        Assert.Equal(4, output[Dv + 1], 12);              // its value alone
        double w1 = Math.Exp(0.5) / (1 + Math.Exp(0.5));  // scores 0 and 0.5
        Assert.Equal(Math.Log(1 + Math.Exp(0.5)), lse[2], 12);
        Assert.Equal((1 - w1) * 4 + w1 * 8, output[2 * Dv + 1], 12);
        Assert.Equal(w1 * 1, output[2 * Dv], 12);
    }

    [Fact]
    public void Heads_are_independent_and_lse_is_laid_out_head_major()
    {
        // Two heads, one token: head 0 prefers position 0, head 1 position 1, by the same margin.
        ushort[] q = [.. Row((0, 1f)), .. Row((1, 1f))];
        ushort[] kv = [.. Row((0, 1f), (2, 10f)), .. Row((1, 1f), (2, 20f))];
        var output = new double[2 * Dv];
        var lse = new double[2];

        MlaReference.Decode(q, kv, length: 2, queryTokens: 1, heads: 2, scale: 1, output, lse);

        double near = Math.E / (1 + Math.E), far = 1 / (1 + Math.E);
        Assert.Equal(near * 10 + far * 20, output[2], 12);
        Assert.Equal(far * 10 + near * 20, output[Dv + 2], 12);
        Assert.Equal(lse[0], lse[1], 12);
        Assert.Equal(Math.Log(1 + Math.E), lse[0], 12);
    }
}
