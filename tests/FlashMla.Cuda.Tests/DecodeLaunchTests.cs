using System.Runtime.InteropServices;
using FlashMla.Cuda.Backend;
using FlashMla.Cuda.Interop;

namespace FlashMla.Cuda.Tests;

/// <summary>
/// The clustered decode launch (native/include/mla_params.h, "Cluster launch"): which steps are launched in clusters,
/// the SMs their parts are planned for, the widths a module may export, and the cuLaunchKernelEx structs' layout
/// as cuda.h has it.
/// </summary>
public class DecodeLaunchTests
{
    [Theory]
    [InlineData(1, 1)] // h_q <= 64, s_q 1: one row group, plain
    [InlineData(2, 2)] // h_q 128, s_q 1
    [InlineData(3, 1)] // odd: plain, never a cluster with a CTA short
    [InlineData(4, 2)] // h_q 128, s_q 2
    [InlineData(8, 2)]
    public void A_width_2_module_clusters_the_steps_whose_row_groups_pair_up(int rowGroups, int expected)
    {
        var launch = new DecodeLaunch(2, 132);
        Assert.Equal(expected, launch.ClusterFor(rowGroups));
    }

    [Fact]
    public void A_module_without_a_width_is_always_launched_plainly_on_every_SM()
    {
        var launch = DecodeLaunch.Plain(132);
        foreach (int groups in new[] { 1, 2, 4, 8 })
        {
            Assert.Equal(1, launch.ClusterFor(groups));
            Assert.Equal(132, launch.SmCountFor(groups, 132));
        }
    }

    [Fact]
    public void Clustered_steps_plan_their_parts_for_the_SMs_the_clusters_fill_plain_ones_for_all()
    {
        // E.g. a GPC with an odd number of free SMs: 65 clusters of 2 fill 130 of 132 SMs at once.
        var launch = new DecodeLaunch(2, 130);
        Assert.Equal(130, launch.SmCountFor(2, 132));
        Assert.Equal(132, launch.SmCountFor(1, 132));
        Assert.Equal(132, launch.SmCountFor(3, 132));
        Assert.Equal(100, launch.SmCountFor(4, 100)); // never more than the device has
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void The_widths_this_service_launches_are_accepted(int width) =>
        Assert.Equal(width, DecodeLaunch.ValidateWidth(width, "flashmla_decode_splitkv_cluster_x"));

    [Theory]
    [InlineData(0)]
    [InlineData(-2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(16)]
    public void Any_other_width_fails_the_load_naming_the_symbol(int width)
    {
        var e = Assert.Throws<InvalidOperationException>(() => DecodeLaunch.ValidateWidth(width, "flashmla_decode_splitkv_cluster_x"));
        Assert.Contains("flashmla_decode_splitkv_cluster_x", e.Message);
        Assert.Contains(width.ToString(System.Globalization.CultureInfo.InvariantCulture), e.Message);
    }

    [Fact]
    public void CUlaunchConfig_has_cuda_h_layout()
    {
        Assert.Equal(56, Marshal.SizeOf<CUlaunchConfig>());
        (string, int)[] offsets =
        [
            ("GridDimX", 0), ("GridDimY", 4), ("GridDimZ", 8), ("BlockDimX", 12), ("BlockDimY", 16), ("BlockDimZ", 20),
            ("SharedMemBytes", 24), ("Stream", 32), ("Attrs", 40), ("NumAttrs", 48),
        ];
        foreach ((string field, int offset) in offsets)
            Assert.Equal(offset, Marshal.OffsetOf<CUlaunchConfig>(field).ToInt32());
    }

    [Fact]
    public void CUlaunchAttribute_is_an_id_then_the_64_byte_value_union_at_8()
    {
        Assert.Equal(72, Marshal.SizeOf<CUlaunchAttribute>());
        Assert.Equal(0, Marshal.OffsetOf<CUlaunchAttribute>(nameof(CUlaunchAttribute.Id)).ToInt32());
        Assert.Equal(8, Marshal.OffsetOf<CUlaunchAttribute>(nameof(CUlaunchAttribute.ClusterDimX)).ToInt32());
        CUlaunchAttribute a = CUlaunchAttribute.Cluster(2);
        Assert.Equal(4, a.Id); // CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION
        Assert.Equal((2u, 1u, 1u), (a.ClusterDimX, a.ClusterDimY, a.ClusterDimZ));
    }
}
