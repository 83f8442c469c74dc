using System.CommandLine;
using System.Globalization;
using FlashMla.Cli;

namespace FlashMla.Server.Tests;

/// <summary>The tlsbench command: a row per variant with measured figures, and bad arguments refused before anything runs.</summary>
public sealed class TlsBenchCommandTests
{
    private static RootCommand Root()
    {
        var root = new RootCommand();
        root.Add(TlsBenchCommand.Create());
        return root;
    }

    [Fact]
    public async Task Tlsbench_writes_a_row_per_variant_with_positive_throughput_and_CPU_per_GB()
    {
        string results = Path.Combine(Path.GetTempPath(), $"tlsbench-{Guid.NewGuid():N}.md");
        try
        {
            int rc = await Root().Parse(["tlsbench", "--seconds", "0.3", "--rounds", "1", "--out", results]).InvokeAsync();
            Assert.Equal(0, rc);
            var rows = (await File.ReadAllTextAsync(results)).Split('\n')
                .Where(line => line.StartsWith("| ", StringComparison.Ordinal) && !line.StartsWith("| variant", StringComparison.Ordinal) && !line.StartsWith("| ---", StringComparison.Ordinal))
                .Select(line => line.Split('|', StringSplitOptions.TrimEntries)[1..^1]).ToArray();
            Assert.Equal(["cleartext", "tls aes256 per-record", "tls aes256 batched", "tls aes128 per-record", "tls aes128 batched"], rows.Select(r => r[0]));
            foreach (var row in rows)
            {
                Assert.True(double.Parse(row[1], CultureInfo.InvariantCulture) > 0, $"{row[0]}: GB/s {row[1]}");
                Assert.True(double.Parse(row[2], CultureInfo.InvariantCulture) > 0, $"{row[0]}: CPU s/GB {row[2]}");
            }
        }
        finally
        {
            File.Delete(results);
        }
    }

    [Theory]
    [InlineData("--seconds", "0")]
    [InlineData("--rounds", "0")]
    public async Task Tlsbench_refuses_a_non_positive_duration_or_round_count_and_writes_nothing(string option, string value)
    {
        string results = Path.Combine(Path.GetTempPath(), $"tlsbench-{Guid.NewGuid():N}.md");
        int rc = await Root().Parse(["tlsbench", option, value, "--out", results]).InvokeAsync();
        Assert.Equal(2, rc);
        Assert.False(File.Exists(results));
    }
}
