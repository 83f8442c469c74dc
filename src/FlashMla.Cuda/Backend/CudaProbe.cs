using System.Globalization;
using System.Text;
using FlashMla.Cuda.Interop;

namespace FlashMla.Cuda.Backend;

/// <summary>
/// What the start-up probe found: whether the CUDA backend can run here and, if not, why in plain
/// words for the log. Probing never throws; it initialises the driver but allocates nothing.
/// </summary>
public sealed record CudaProbeResult
{
    public required bool DriverPresent { get; init; }
    public required bool DevicePresent { get; init; }
    public required bool FatbinPresent { get; init; }

    /// <summary>True when device 0 is a Hopper (compute capability 9.0), the only target the kernels are built for.</summary>
    public required bool DeviceSupported { get; init; }

    /// <summary>The full path the fatbin was looked for at.</summary>
    public required string FatbinPath { get; init; }

    /// <summary>Device 0 in words ("NVIDIA H100 80GB HBM3, 132 SMs, sm_90, 79.2 GiB"), or null without one.</summary>
    public string? DeviceDescription { get; init; }

    /// <summary>"CUDA backend available: ..." or the first reason it is not, e.g. "no CUDA driver (libcuda.so.1 not found)".</summary>
    public required string Reason { get; init; }

    public bool IsUsable => DriverPresent && DevicePresent && DeviceSupported && FatbinPresent;
}

/// <summary>Device-0 facts read through the driver.</summary>
internal readonly record struct CudaDeviceInfo(
    int Ordinal, string Name, int SmCount, int ComputeMajor, int ComputeMinor, long TotalMemoryBytes, int MaxSharedMemoryPerBlock)
{
    public bool IsHopper => ComputeMajor == 9 && ComputeMinor == 0;

    public string Describe() => string.Create(CultureInfo.InvariantCulture,
        $"{Name}, {SmCount} SMs, sm_{ComputeMajor}{ComputeMinor}, {TotalMemoryBytes / (double)(1L << 30):F1} GiB");

    /// <summary>Reads the device; the driver must be initialised.</summary>
    public static unsafe CudaDeviceInfo Read(int ordinal)
    {
        CudaException.Check(CudaDriver.cuDeviceGet(out int device, ordinal), "cuDeviceGet");
        byte* name = stackalloc byte[256];
        CudaException.Check(CudaDriver.cuDeviceGetName(name, 256, device), "cuDeviceGetName");
        int length = 0;
        while (length < 255 && name[length] != 0) length++;
        return new CudaDeviceInfo(
            device,
            Encoding.UTF8.GetString(name, length),
            Attribute(device, CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT),
            Attribute(device, CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
            Attribute(device, CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
            TotalMemory(device),
            Attribute(device, CUdevice_attribute.CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN));
    }

    private static int Attribute(int device, CUdevice_attribute attribute)
    {
        CudaException.Check(CudaDriver.cuDeviceGetAttribute(out int value, attribute, device), "cuDeviceGetAttribute(" + attribute + ")");
        return value;
    }

    private static long TotalMemory(int device)
    {
        CudaException.Check(CudaDriver.cuDeviceTotalMem_v2(out nuint bytes, device), "cuDeviceTotalMem");
        return (long)bytes;
    }
}

internal static class CudaProbe
{
    public static CudaProbeResult Run(string fatbinPath)
    {
        string fullPath = Path.GetFullPath(fatbinPath);
        bool fatbin = File.Exists(fullPath);
        string fatbinReason = $"kernel fatbin not found at {fullPath} (build it on the GPU machine with native/build.sh)";

        CUresult init;
        try
        {
            init = CudaDriver.cuInit(0);
        }
        catch (DllNotFoundException)
        {
            return new CudaProbeResult
            {
                DriverPresent = false, DevicePresent = false, DeviceSupported = false, FatbinPresent = fatbin, FatbinPath = fullPath,
                Reason = "no CUDA driver (libcuda.so.1 could not be loaded)",
            };
        }

        try
        {
            if (init == CUresult.CUDA_ERROR_NO_DEVICE)
                return NoDevice("the CUDA driver is present but reports no GPU (CUDA_ERROR_NO_DEVICE)");
            CudaException.Check(init, "cuInit");
            CudaException.Check(CudaDriver.cuDeviceGetCount(out int count), "cuDeviceGetCount");
            if (count == 0) return NoDevice("the CUDA driver is present but reports no GPU");

            CudaDeviceInfo device = CudaDeviceInfo.Read(0);
            string reason = !device.IsHopper
                ? $"GPU 0 ({device.Describe()}) is not a Hopper GPU; the kernels are built for sm_90a only"
                : !fatbin ? fatbinReason
                : $"CUDA backend available: {device.Describe()}, kernels from {fullPath}";
            return new CudaProbeResult
            {
                DriverPresent = true, DevicePresent = true, DeviceSupported = device.IsHopper, FatbinPresent = fatbin,
                FatbinPath = fullPath, DeviceDescription = device.Describe(), Reason = reason,
            };
        }
        catch (CudaException e)
        {
            return NoDevice("the CUDA driver is present but the GPU could not be queried: " + e.Message);
        }

        CudaProbeResult NoDevice(string reason) => new()
        {
            DriverPresent = true, DevicePresent = false, DeviceSupported = false, FatbinPresent = fatbin, FatbinPath = fullPath, Reason = reason,
        };
    }
}
