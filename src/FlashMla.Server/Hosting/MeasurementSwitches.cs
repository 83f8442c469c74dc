using System.Globalization;

namespace FlashMla.Server.Hosting;

/// <summary>
/// A/B switches for measurements: levers for benchmarks, not operator settings, so they are environment variables
/// (documented in the README, read here and nowhere else, once at start-up) rather than options. The host's
/// configuration carries the environment, so the same names work as command-line keys
/// (<c>--FLASHMLA_SOCKET_BLOCK_KIB=4</c>). The defaults are what the measurements in results/ chose.
/// </summary>
public sealed record MeasurementSwitches
{
    /// <summary>Block size, KiB, Kestrel's socket transport receives into and its HTTP/2 layer buffers in (4: Kestrel's own pool).</summary>
    public const string SocketBlockKiBVariable = "FLASHMLA_SOCKET_BLOCK_KIB";

    /// <summary>Kestrel's UnsafePreferInlineScheduling: application continuations run on the socket I/O threads.</summary>
    public const string InlineSocketSchedulingVariable = "FLASHMLA_INLINE_SOCKET_SCHEDULING";

    /// <summary>
    /// <c>1</c>: the CUDA backend does not page-lock the server's tensor buffers; q, out and lse go through the
    /// backend's own pinned staging buffers (one more copy each way). scripts/dataplane-bench.sh's staged-buffers
    /// variant sets it.
    /// </summary>
    public const string StageTensorBuffersVariable = "FLASHMLA_STAGE_TENSOR_BUFFERS";

    /// <summary>Every switch at its default: what production runs.</summary>
    public static MeasurementSwitches None { get; } = new();

    public int SocketBlockKiB { get; init; } = 1024;

    public bool InlineSocketScheduling { get; init; } = true;

    public bool StageTensorBuffers { get; init; }

    /// <summary>The switches as the configuration (environment, command line) sets them; <paramref name="problems"/> gets what is malformed.</summary>
    public static MeasurementSwitches Read(IConfiguration configuration, List<string> problems)
    {
        var switches = new MeasurementSwitches();
        if (configuration[SocketBlockKiBVariable] is { } blocks)
        {
            if (int.TryParse(blocks, NumberStyles.None, CultureInfo.InvariantCulture, out int kib) && kib is >= 4 and <= 16 * 1024)
                switches = switches with { SocketBlockKiB = kib };
            else
                problems.Add($"{SocketBlockKiBVariable} must be 4..16384, got '{blocks}'");
        }
        if (configuration[InlineSocketSchedulingVariable] is { } inline)
        {
            if (bool.TryParse(inline, out bool value)) switches = switches with { InlineSocketScheduling = value };
            else problems.Add($"{InlineSocketSchedulingVariable} must be true or false, got '{inline}'");
        }
        if (configuration[StageTensorBuffersVariable] is { } stage)
        {
            if (stage is "1" or "0") switches = switches with { StageTensorBuffers = stage == "1" };
            else problems.Add($"{StageTensorBuffersVariable} must be 1 or 0, got '{stage}'");
        }
        return switches;
    }
}
