using System.Globalization;
using Spectre.Console;

namespace FlashMla.Cli;

/// <summary>
/// The options that take a comma-separated list of whole numbers as one string (bench-matrix's --batch, --heads and
/// --connections, latency's --inflight, tcpbench's --connections, soak's --abuse-acts): read here, so that a value
/// that is not a number, is out of range or does not fit an int is a usage error naming the option (exit code
/// <see cref="ConnectionArguments.UsageError"/>), never an exception out of the command.
/// </summary>
internal static class IntListOption
{
    /// <summary>The numbers in <paramref name="text"/>, each in [<paramref name="min"/>, <paramref name="max"/>]; null (after printing why) when they are not.</summary>
    public static int[]? Parse(string option, string text, int min, int max = int.MaxValue)
    {
        if (Problem(option, text, min, max, out var values) is not { } problem) return values;
        AnsiConsole.MarkupLine($"[red]{Markup.Escape(problem)}[/]");
        return null;
    }

    /// <summary>Why <paramref name="text"/> is not a list of <paramref name="option"/>'s numbers, or null with them in <paramref name="values"/>.</summary>
    internal static string? Problem(string option, string text, int min, int max, out int[] values)
    {
        values = [];
        var items = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (items.Length == 0) return $"{option} names no value: give {Range(min, max)}, comma-separated";
        var result = new int[items.Length];
        for (int i = 0; i < items.Length; i++)
        {
            // Integer style: an optional sign and digits, no thousands separators; a value past int's range fails here too.
            if (!int.TryParse(items[i], NumberStyles.Integer, CultureInfo.InvariantCulture, out result[i]) || result[i] < min || result[i] > max)
                return $"{option}: '{items[i]}' is not {Range(min, max)}";
        }
        values = result;
        return null;
    }

    private static string Range(int min, int max) =>
        max == int.MaxValue ? $"a whole number of at least {min}" : $"a whole number from {min} to {max}";
}
