namespace FlashMla.Cuda.DeviceCheck;

/// <summary>The C# mirror of the kernel ABI against the header the kernels are built from. Needs no GPU: CI runs it too.</summary>
[Trait("Category", "Abi")]
public sealed class HeaderAbiTests
{
    [Fact]
    public void The_csharp_mirror_matches_mla_params_h()
    {
        string? header = GpuDevice.HeaderPath;
        Assert.True(header is not null && File.Exists(header), $"native/include/mla_params.h not found (looked at {header ?? "no repository"}; set FLASHMLA_ABI_HEADER)");
        List<string> problems = HeaderAbiCheck.Compare(header!);
        Assert.True(problems.Count == 0, string.Join("; ", problems));
    }
}
