using System.Globalization;

namespace FlashMla.Cuda.Backend;

/// <summary>
/// How the decode kernel of a module is launched (native/include/mla_params.h, "Cluster launch"): a module may
/// export the width of the clusters its decode wants; the decode is launched in clusters of that width along x
/// when the step's row groups divide by it, and plainly otherwise (the kernel reads its cluster size, so both are
/// correct). The SMs a clustered launch can fill at once may be fewer than the device's (clusters sit within a
/// GPC), and the step's parts are planned for that count.
/// </summary>
internal readonly record struct DecodeLaunch(int ClusterWidth, int ClusterSmCount)
{
    /// <summary>A module that exports no width: every launch plain.</summary>
    public static DecodeLaunch Plain(int smCount) => new(1, smCount);

    /// <summary>The widths this service launches: 1 (plain) or 2 (pairs of row groups).</summary>
    public static int ValidateWidth(int width, string symbol) =>
        width is 1 or 2
            ? width
            : throw new InvalidOperationException(string.Create(CultureInfo.InvariantCulture,
                $"the kernel module's {symbol} is {width}; this service launches decode clusters of 1 or 2 CTAs"));

    /// <summary>The cluster width of a step with <paramref name="rowGroups"/> row groups: the module's, or 1.</summary>
    public int ClusterFor(int rowGroups) => ClusterWidth > 1 && rowGroups % ClusterWidth == 0 ? ClusterWidth : 1;

    /// <summary>The SMs the step's parts are planned for.</summary>
    public int SmCountFor(int rowGroups, int smCount) => ClusterFor(rowGroups) > 1 ? Math.Min(smCount, ClusterSmCount) : smCount;
}
