using System.CommandLine;
using System.Globalization;

namespace FlashMla.Cli;

/// <summary>
/// An option that is a number of seconds the command waits or measures for (--seconds, --warmup, --interval...).
/// It becomes a timer (Task.Delay, CancelAfter, PeriodicTimer), which throws for NaN, infinity, a negative value or
/// one past about 49.7 days; the option refuses those at parse time, with its name, so no command sees one.
/// Whether 0 is allowed stays each command's own check.
/// </summary>
internal static class SecondsOption
{
    /// <summary>The longest a timer takes: uint.MaxValue - 1 milliseconds.</summary>
    public const double MaxSeconds = (uint.MaxValue - 1) / 1000.0;

    public static Option<double> Create(string name, string description, double defaultSeconds) => new(name)
    {
        Description = description,
        DefaultValueFactory = _ => defaultSeconds,
        // Parsed here, not checked after System.CommandLine's own conversion: a validator would run after a failed one too.
        CustomParser = result =>
        {
            if (result.Tokens.Count == 0) return defaultSeconds;
            string text = result.Tokens[^1].Value;
            if (!double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double seconds))
            {
                result.AddError($"{name}: '{text}' is not a number of seconds");
                return 0;
            }
            if (Problem(name, seconds) is { } problem) result.AddError(problem);
            return seconds;
        },
    };

    /// <summary>Why <paramref name="seconds"/> cannot be <paramref name="name"/>'s value, or null.</summary>
    internal static string? Problem(string name, double seconds) =>
        double.IsFinite(seconds) && seconds is >= 0 and <= MaxSeconds
            ? null
            : $"{name}: {seconds.ToString(CultureInfo.InvariantCulture)} is not a number of seconds from 0 to {Math.Floor(MaxSeconds).ToString(CultureInfo.InvariantCulture)}";
}
