using FlashMla.Cli;

namespace FlashMla.Server.Tests;

/// <summary>
/// The CLI's options that take a comma-separated list of whole numbers (IntListOption): a list that is not one
/// (a word, nothing, a value out of range, a number past int) is a usage error, exit code 2 with the option named,
/// before any connection, on every command that has one.
/// </summary>
public sealed class CliIntListOptionTests
{
    public static TheoryData<string, string, string> BadLists()
    {
        var cases = new TheoryData<string, string, string>();
        // Below the least each takes: 0 (a count) or -1 (an act); past the most: an act that does not exist.
        foreach (var (command, option, outOfRange) in new[]
                 {
                     ("bench-matrix", "--batch", "4,0"), ("bench-matrix", "--heads", "4,0"), ("bench-matrix", "--connections", "4,0"),
                     ("latency", "--inflight", "4,0"), ("tcpbench", "--connections", "4,0"), ("soak", "--abuse-acts", "1,8"),
                 })
            foreach (string text in new[] { "1,x", "", " , ", "-1,99", "99999999999", "1.5", "2;3", outOfRange })
                cases.Add(command, option, text);
        return cases;
    }

    [Theory]
    [MemberData(nameof(BadLists))]
    public async Task A_list_option_that_is_not_a_list_of_its_numbers_exits_with_2(string command, string option, string text)
    {
        // An address where nothing listens: a refusal that came too late would fail to connect, not pass.
        var main = typeof(IntListOption).Assembly.EntryPoint!;
        var result = main.Invoke(null, [new[] { command, "--address", "http://127.0.0.1:1", option, text }]);
        Assert.Equal(ConnectionArguments.UsageError, result is Task<int> task ? await task : (int)result!);
    }

    [Fact]
    public void The_refusal_names_the_option_and_the_value_and_says_what_it_must_be()
    {
        Assert.Equal("--abuse-acts: 'x' is not a whole number from 0 to 7", Problem("--abuse-acts", "1,x", 0, 7));
        Assert.Equal("--abuse-acts: '99' is not a whole number from 0 to 7", Problem("--abuse-acts", "3, 99", 0, 7));
        Assert.Equal("--abuse-acts: '-1' is not a whole number from 0 to 7", Problem("--abuse-acts", "-1,99", 0, 7));
        Assert.Equal("--batch: '99999999999' is not a whole number of at least 1", Problem("--batch", "99999999999", 1, int.MaxValue));
        Assert.Equal("--batch: '0' is not a whole number of at least 1", Problem("--batch", "4,0", 1, int.MaxValue));
        Assert.Equal("--heads names no value: give a whole number of at least 1, comma-separated", Problem("--heads", "", 1, int.MaxValue));
        Assert.Equal("--heads names no value: give a whole number of at least 1, comma-separated", Problem("--heads", " , ,", 1, int.MaxValue));

        static string? Problem(string option, string text, int min, int max) => IntListOption.Problem(option, text, min, max, out _);
    }

    [Fact]
    public void A_good_list_reads_as_its_numbers_in_order_with_spaces_and_empty_items_ignored()
    {
        Assert.Null(IntListOption.Problem("--abuse-acts", "7, 0,,3 ", 0, 7, out var acts));
        Assert.Equal([7, 0, 3], acts);
        Assert.Null(IntListOption.Problem("--batch", $"1,{int.MaxValue}", 1, int.MaxValue, out var batches));
        Assert.Equal([1, int.MaxValue], batches);
    }
}
