using Microsoft.Extensions.Configuration;
using FlashMla.Core.Memory;
using FlashMla.Server.Hosting;

namespace FlashMla.Server.Tests;

/// <summary>--backend auto|cpu|cuda on a machine without a GPU (as CI is).</summary>
public sealed class BackendSelectionTests
{
    private static FlashMlaOptions Options(string backend) => new() { Backend = backend, Layers = 2, TotalBlocks = 8, FatbinPath = "no-such.fatbin" };

    [Fact]
    public void Auto_without_a_gpu_picks_the_cpu_backend_and_says_why()
    {
        using var holder = BackendSelector.Create(Options("auto"), new PinnedTensorPool(1 << 20, 1), MeasurementSwitches.None);
        Assert.Equal("cpu", holder.Backend.Name);
        Assert.Contains("no usable GPU", holder.Reason);
        Assert.Equal(8, holder.Backend.Geometry.NumBlocks);
    }

    [Fact]
    public void Cuda_asked_for_without_a_gpu_refuses_to_start_with_the_reason()
    {
        var error = Assert.Throws<InvalidOperationException>(() => BackendSelector.Create(Options("cuda"), new PinnedTensorPool(1 << 20, 1), MeasurementSwitches.None));
        Assert.StartsWith("Backend=cuda was asked for", error.Message);
        Assert.Contains("CUDA", error.Message);
    }

    [Fact]
    public void Cpu_blocks_come_from_the_memory_budget_when_not_given()
    {
        var options = new FlashMlaOptions { Backend = "cpu", Layers = 4, TotalBlocks = 0, CpuMemoryMiB = 100, MemoryFraction = 0.5 };
        // 50 MiB over 4 layers of 73,728-byte blocks.
        Assert.Equal(50 * 1024 * 1024 / (4 * 73_728), BackendSelector.CpuBlockCount(options));
    }

    [Fact]
    public void Bad_options_are_refused_with_every_problem_named()
    {
        var options = new FlashMlaOptions { Backend = "tpu", Layers = 0, MaxHeads = 200, GrpcPort = 9090, MetricsPort = 9090, MemoryFraction = 2 };
        var problems = options.Validate().ToList();
        Assert.Contains(problems, p => p.Contains("MemoryFraction"));
        Assert.Contains(problems, p => p.Contains("Backend"));
        Assert.Contains(problems, p => p.Contains("Layers"));
        Assert.Contains(problems, p => p.Contains("MaxHeads"));
        Assert.Contains(problems, p => p.Contains("differ"));
    }

    [Fact]
    public void The_staged_buffers_switch_is_an_environment_variable_read_once_not_an_option()
    {
        Assert.Null(typeof(FlashMlaOptions).GetProperty("PinnedTensorBuffers"));
        string? before = Environment.GetEnvironmentVariable(MeasurementSwitches.StageTensorBuffersVariable);
        try
        {
            Environment.SetEnvironmentVariable(MeasurementSwitches.StageTensorBuffersVariable, "1");
            Assert.True(FromEnvironment().StageTensorBuffers);
            Environment.SetEnvironmentVariable(MeasurementSwitches.StageTensorBuffersVariable, null);
            Assert.Equal(MeasurementSwitches.None, FromEnvironment());
        }
        finally
        {
            Environment.SetEnvironmentVariable(MeasurementSwitches.StageTensorBuffersVariable, before);
        }
    }

    /// <summary>The switches as the host reads them, from the process environment alone.</summary>
    private static MeasurementSwitches FromEnvironment() =>
        MeasurementSwitches.Read(new ConfigurationBuilder().AddEnvironmentVariables().Build(), []);
}
