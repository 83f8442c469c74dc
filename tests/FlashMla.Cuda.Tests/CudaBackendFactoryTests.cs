using System.Runtime.InteropServices;
using FlashMla.Cuda.Backend;

namespace FlashMla.Cuda.Tests;

public class CudaBackendFactoryTests
{
    private static bool DriverLoadable()
    {
        if (!NativeLibrary.TryLoad("libcuda.so.1", out IntPtr handle)) return false;
        NativeLibrary.Free(handle);
        return true;
    }

    [Fact]
    public void Probe_reports_the_missing_driver_in_words_without_throwing()
    {
        string fatbin = Path.Combine(Path.GetTempPath(), Guid.NewGuid().ToString("N") + ".fatbin");

        CudaProbeResult first = CudaBackendFactory.Probe(fatbin);
        CudaProbeResult second = CudaBackendFactory.Probe(fatbin);

        Assert.False(first.FatbinPresent);
        Assert.False(first.IsUsable);
        Assert.Equal(Path.GetFullPath(fatbin), first.FatbinPath);
        Assert.Equal(first, second);
        if (DriverLoadable())
        {
            Assert.True(first.DriverPresent);
            Assert.DoesNotContain("no CUDA driver", first.Reason);
        }
        else
        {
            Assert.False(first.DriverPresent);
            Assert.False(first.DevicePresent);
            Assert.Null(first.DeviceDescription);
            Assert.Equal("no CUDA driver (libcuda.so.1 could not be loaded)", first.Reason);
        }
    }

    [Fact]
    public void Probe_sees_a_fatbin_that_exists()
    {
        string fatbin = Path.GetTempFileName();
        try
        {
            CudaProbeResult probe = CudaBackendFactory.Probe(fatbin);
            Assert.True(probe.FatbinPresent);
            if (!DriverLoadable()) Assert.False(probe.IsUsable);
        }
        finally
        {
            File.Delete(fatbin);
        }
    }

    [Fact]
    public void Create_refuses_with_the_probes_reason_when_the_backend_cannot_run()
    {
        string fatbin = Path.Combine(Path.GetTempPath(), Guid.NewGuid().ToString("N") + ".fatbin");
        var options = new CudaBackendOptions { FatbinPath = fatbin, NumLayers = 2, NumBlocks = 16 };

        var e = Assert.Throws<InvalidOperationException>(() => CudaBackendFactory.Create(options));

        Assert.Equal("CUDA backend unavailable: " + CudaBackendFactory.Probe(fatbin).Reason, e.Message);
    }

    [Fact]
    public void Options_name_every_problem_at_once()
    {
        var options = new CudaBackendOptions { FatbinPath = " ", NumLayers = 0, NumBlocks = 0, MemoryFraction = 1.5, ReservedBytes = -1 };

        var e = Assert.Throws<ArgumentException>(options.Validate);

        Assert.Contains("FatbinPath is empty", e.Message);
        Assert.Contains("NumLayers must be at least 1 (got 0)", e.Message);
        Assert.Contains("MemoryFraction must be in (0, 1] (got 1.5)", e.Message);
        Assert.Contains("ReservedBytes must not be negative", e.Message);
        new CudaBackendOptions { FatbinPath = "k.fatbin", NumLayers = 61, NumBlocks = 1000, MemoryFraction = 7 }.Validate(); // fraction unused with a block count
        Assert.Throws<ArgumentException>(new CudaBackendOptions { FatbinPath = "k.fatbin", NumLayers = 1, NumBlocks = -1 }.Validate);
        Assert.Throws<ArgumentException>(new CudaBackendOptions { FatbinPath = "k.fatbin", NumLayers = 1, NumBlocks = CudaBackendFactory.MaxBlocks + 1 }.Validate);
        new CudaBackendOptions { FatbinPath = "k.fatbin", NumLayers = 1, NumBlocks = CudaBackendFactory.MaxBlocks }.Validate();
    }

    [Fact]
    public void Block_count_takes_the_fraction_of_free_memory_less_the_reserve_over_all_layers()
    {
        // 80 GiB * 0.9 = 77309411328 bytes, less 512 MiB = 76772540416, over 61 layers x 73728 bytes = 17070.4
        Assert.Equal(17070, CudaBackendFactory.BlockCountFromMemory(80L << 30, 0.9, 61, 512L << 20));
        // Exactly one block of one layer.
        Assert.Equal(1, CudaBackendFactory.BlockCountFromMemory(73728, 1.0, 1, 0));
        Assert.Equal(2, CudaBackendFactory.BlockCountFromMemory(2 * 73728 + 73727, 1.0, 1, 0));
        Assert.Equal(73728L, CudaBackendFactory.BlockBytesPerLayer);
    }

    [Fact]
    public void Block_count_caps_at_what_int32_slots_can_address()
    {
        Assert.Equal(int.MaxValue / 64, CudaBackendFactory.BlockCountFromMemory(long.MaxValue / 2, 1.0, 1, 0));
    }

    [Fact]
    public void Block_count_refuses_when_not_one_block_fits()
    {
        var e = Assert.Throws<InvalidOperationException>(() => CudaBackendFactory.BlockCountFromMemory(1L << 30, 0.5, 61, 512L << 20));
        Assert.Contains("no KV block fits", e.Message);
        Assert.Throws<InvalidOperationException>(() => CudaBackendFactory.BlockCountFromMemory(73727, 1.0, 1, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => CudaBackendFactory.BlockCountFromMemory(1L << 30, 0, 1, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => CudaBackendFactory.BlockCountFromMemory(1L << 30, double.NaN, 1, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => CudaBackendFactory.BlockCountFromMemory(1L << 30, 0.5, 0, 0));
    }
}
