using System.CommandLine;
using FlashMla.Cli;

namespace FlashMla.Server.Tests;

/// <summary>
/// The CLI's options in seconds (SecondsOption), which commands turn into timers: a value no timer takes (NaN,
/// infinity, negative, past ~49.7 days) or that is not a number is refused at parse time with the option named, and
/// every command line that does not parse exits with 2, the CLI's usage error, as the commands' own refusals do.
/// </summary>
public sealed class CliSecondsOptionTests
{
    public static TheoryData<string, string, string> BadSeconds()
    {
        var cases = new TheoryData<string, string, string>();
        foreach (var (command, option) in new[]
                 {
                     ("bench", "--seconds"), ("bench-matrix", "--seconds"), ("bench-matrix", "--warmup"), ("bench-matrix", "--tcp-seconds"),
                     ("latency", "--seconds"), ("latency", "--warmup"), ("latency", "--floor-seconds"), ("ingest-bench", "--seconds"),
                     ("tcpbench", "--seconds"), ("tlsbench", "--seconds"), ("soak", "--interval"), ("soak", "--abuse-every"), ("soak", "--table-every"),
                 })
            foreach (string text in new[] { "NaN", "1e400", "-Infinity", "-1", "1e7", "x", "" })
                cases.Add(command, option, text);
        return cases;
    }

    [Theory]
    [MemberData(nameof(BadSeconds))]
    public async Task A_seconds_option_no_timer_takes_exits_with_2(string command, string option, string text) =>
        Assert.Equal(ConnectionArguments.UsageError, await RunCliAsync(command, "--address", "http://127.0.0.1:1", option, text));

    [Theory]
    [InlineData("soak", "--batch", "x")]
    [InlineData("bench", "--streams", "99999999999")]
    [InlineData("tcpbench", "--no-such-option", "1")]
    public async Task A_command_line_that_does_not_parse_exits_with_2(string command, string option, string text) =>
        Assert.Equal(ConnectionArguments.UsageError, await RunCliAsync(command, "--address", "http://127.0.0.1:1", option, text));

    [Theory]
    [InlineData("0")]
    [InlineData("2147483647")]
    [InlineData("268435457")]
    public async Task A_tcpbench_message_size_no_connection_should_hold_exits_with_2(string bytes) =>
        Assert.Equal(ConnectionArguments.UsageError, await RunCliAsync("tcpbench", "--message-bytes", bytes, "--seconds", "0.1"));

    [Fact]
    public void The_refusal_names_the_option_and_says_what_it_must_be()
    {
        Assert.Equal(["--warmup: NaN is not a number of seconds from 0 to 4294967"], Errors("--warmup", "NaN"));
        Assert.Equal(["--warmup: Infinity is not a number of seconds from 0 to 4294967"], Errors("--warmup", "1e400"));
        Assert.Equal(["--warmup: -0.5 is not a number of seconds from 0 to 4294967"], Errors("--warmup", "-0.5"));
        Assert.Equal(["--warmup: 4294968 is not a number of seconds from 0 to 4294967"], Errors("--warmup", "4294968"));
        Assert.Equal(["--warmup: 'half' is not a number of seconds"], Errors("--warmup", "half"));

        static string[] Errors(params string[] args) => [.. Parse(args).Errors.Select(e => e.Message)];
    }

    [Fact]
    public void A_good_value_reads_as_its_seconds_and_none_as_the_default()
    {
        Assert.Equal(0.25, Parse("--warmup", "0.25").GetValue<double>("--warmup"));
        Assert.Equal(0, Parse("--warmup", "0").GetValue<double>("--warmup")); // whether 0 will do is each command's own check
        Assert.Equal(SecondsOption.MaxSeconds, Parse("--warmup", SecondsOption.MaxSeconds.ToString("R", System.Globalization.CultureInfo.InvariantCulture)).GetValue<double>("--warmup"));
        var none = Parse();
        Assert.Empty(none.Errors);
        Assert.Equal(1.5, none.GetValue<double>("--warmup"));
    }

    private static ParseResult Parse(params string[] args)
    {
        var command = new RootCommand { SecondsOption.Create("--warmup", "test", 1.5) };
        return command.Parse(args);
    }

    private static async Task<int> RunCliAsync(params string[] args)
    {
        var result = typeof(SecondsOption).Assembly.EntryPoint!.Invoke(null, [args]);
        return result is Task<int> task ? await task : (int)result!;
    }
}
