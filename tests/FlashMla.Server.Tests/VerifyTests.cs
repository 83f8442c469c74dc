using FlashMla.Cli;
using FlashMla.Core.Backends;
using FlashMla.Core.Tensors;

namespace FlashMla.Server.Tests;

/// <summary>
/// <c>flashmla verify</c> holds a server to the double-precision reference: it passes a right backend with a real,
/// non-zero bf16 error, and fails a backend whose out or lse is wrong.
/// </summary>
public sealed class VerifyTests
{
    private static readonly VerifySettings Small = new(Cases: 3, MaxLength: 150, LongLength: 0, Seed: 7);

    [Fact]
    public async Task Verify_passes_the_cpu_backend_against_the_float64_reference_with_a_nonzero_bf16_error()
    {
        await using var server = await TestServer.StartAsync();
        var report = await VerifyRun.RunAsync(server.Client, Small, CancellationToken.None);

        Assert.Equal("cpu", report.Backend);
        Assert.Equal(Small.Cases, report.Cases.Count);
        Assert.True(report.Passed);
        // bf16 outputs rounded from a float64 truth: an error of zero would mean verify compared a backend with itself.
        Assert.All(report.Cases, c => Assert.InRange(c.OutRelativeError, 1e-4, VerifyRun.Bf16RelativeErrorLimit));
        Assert.All(report.Cases, c => Assert.InRange(c.LseRelativeError, 0, VerifyRun.Bf16RelativeErrorLimit));
    }

    [Fact]
    public async Task Verify_fails_every_case_when_the_last_sequence_of_each_batch_has_its_out_3_percent_off()
    {
        await using var server = await StartPerturbedAsync(batch =>
        {
            int per = batch.QueryTokens * batch.Heads * MlaDims.HeadDimV;
            var last = batch.Out.Span.Slice((batch.BatchSize - 1) * per, per);
            for (int i = 0; i < last.Length; i++) last[i] = Bf16.FromFloat(Bf16.ToFloat(last[i]) * 1.03f);
        });
        var report = await VerifyRun.RunAsync(server.Client, Small, CancellationToken.None);

        Assert.False(report.Passed);
        Assert.Equal(report.Cases.Count, report.Failures);
        Assert.All(report.Cases, c => Assert.True(c.OutRelativeError > VerifyRun.Bf16RelativeErrorLimit, $"case {c.Index}: out error {c.OutRelativeError}"));
        Assert.All(report.Cases, c => Assert.True(c.LseRelativeError < VerifyRun.Bf16RelativeErrorLimit, $"case {c.Index}: lse error {c.LseRelativeError}"));
    }

    [Fact]
    public async Task Verify_fails_every_case_when_the_last_sequence_of_each_batch_has_its_lse_shifted()
    {
        await using var server = await StartPerturbedAsync(batch =>
        {
            int per = batch.Heads * batch.QueryTokens;
            foreach (ref float value in batch.Lse.Span.Slice((batch.BatchSize - 1) * per, per)) value += 0.2f;
        });
        var report = await VerifyRun.RunAsync(server.Client, Small, CancellationToken.None);

        Assert.False(report.Passed);
        Assert.Equal(report.Cases.Count, report.Failures);
        Assert.All(report.Cases, c => Assert.True(c.LseRelativeError > VerifyRun.Bf16RelativeErrorLimit, $"case {c.Index}: lse error {c.LseRelativeError}"));
        Assert.All(report.Cases, c => Assert.True(c.OutRelativeError < VerifyRun.Bf16RelativeErrorLimit, $"case {c.Index}: out error {c.OutRelativeError}"));
    }

    [Fact]
    public async Task Verify_of_an_fp8_cache_checks_the_stored_bytes_and_the_outputs_over_the_dequantized_rows()
    {
        await using var server = await TestServer.StartAsync(("KvDtype", "fp8"));
        var report = await VerifyRun.RunAsync(server.Client, Small, CancellationToken.None);

        Assert.Equal("fp8", report.KvDtype);
        Assert.True(report.Passed);
        Assert.Equal(0, report.QuantizationMismatchRows);
        Assert.All(report.Cases, c => Assert.InRange(c.OutRelativeError, 1e-4, VerifyRun.Bf16RelativeErrorLimit));
        // Against the unquantized rows the error is fp8's, larger than the bf16 rounding against the dequantized ones.
        Assert.All(report.Cases, c => Assert.True(c.OutRelativeErrorVsBf16 > c.OutRelativeError, $"case {c.Index}: {c.OutRelativeErrorVsBf16} vs {c.OutRelativeError}"));
    }

    [Fact]
    public async Task Verify_of_an_fp8_cache_fails_when_one_bit_of_each_stored_row_differs_from_the_codec()
    {
        await using var server = await StartFp8WithStoredBitFlippedAsync();
        var report = await VerifyRun.RunAsync(server.Client, Small, CancellationToken.None);

        Assert.False(report.Passed);
        Assert.Equal(report.Cases.Count, report.Failures);
        Assert.All(report.Cases, c => Assert.Equal(c.Lengths.Sum(), c.QuantizationMismatchRows));
        Assert.All(report.Cases, c => Assert.True(c.OutRelativeError < VerifyRun.Bf16RelativeErrorLimit, $"case {c.Index}: out error {c.OutRelativeError}"));
    }

    /// <summary>A server whose backend is the usual one with <paramref name="perturb"/> applied to every decode's outputs.</summary>
    private static Task<TestServer> StartPerturbedAsync(Action<DecodeBatch> perturb) =>
        HookedBackend.StartServerAsync(before: null, after: perturb, "test: outputs perturbed after decode");

    /// <summary>An fp8 server whose stored rows are read back with the low bit of each row's first byte flipped.</summary>
    private static Task<TestServer> StartFp8WithStoredBitFlippedAsync() =>
        HookedBackend.StartServerAsync(before: null, after: null, afterReadStored: rows =>
        {
            for (int at = 0; at < rows.Length; at += Fp8KvFormat.TokenBytes) rows[at] ^= 1;
        }, "test: stored rows read back with one bit flipped", ("KvDtype", "fp8"));
}
