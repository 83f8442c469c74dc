namespace FlashMla.Cuda.DeviceCheck;

/// <summary>The C# mirror of the kernel ABI against the header the kernels are built from. Needs no GPU: CI runs it too.</summary>
[Trait("Category", "Abi")]
public sealed class HeaderAbiTests
{
    [Fact]
    public void The_csharp_mirror_matches_mla_params_h()
    {
        List<string> problems = HeaderAbiCheck.Compare(Header());
        Assert.True(problems.Count == 0, string.Join("; ", problems));
    }

    [Fact]
    public void The_fp8_kernels_the_csharp_side_looks_up_are_named_in_mla_params_h()
    {
        List<string>? problems = HeaderAbiCheck.CompareFp8(Header());
        if (problems is null) Assert.Skip("mla_params.h has no fp8 kernels yet (issue 17)");
        Assert.True(problems.Count == 0, string.Join("; ", problems));
    }

    private static string Header()
    {
        string? header = GpuDevice.HeaderPath;
        Assert.True(header is not null && File.Exists(header), $"native/include/mla_params.h not found (looked at {header ?? "no repository"}; set FLASHMLA_ABI_HEADER)");
        return header!;
    }
}
