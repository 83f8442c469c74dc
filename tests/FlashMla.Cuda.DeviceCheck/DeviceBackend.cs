using FlashMla.Core.Memory;
using FlashMla.Cuda.Backend;

namespace FlashMla.Cuda.DeviceCheck;

/// <summary>
/// A CUDA backend of 2 layers x 3072 blocks shared by the tests of one class, with the host copy of everything they
/// wrote. Opened on first use (a test calls <see cref="GpuDevice.Require"/> first), so without a GPU it never opens.
/// Results are poisoned (a row the kernels skip comes back NaN) and staging copies are cut into 64 KiB chunks, so the
/// chunked copies are what the reference checks.
/// </summary>
public abstract class DeviceBackend : IDisposable
{
    public const int Layers = 2, Blocks = 3072;

    private CudaBackend? _backend;

    internal KvMirror Mirror { get; } = new(Layers, Blocks);

    internal CudaBackend Backend => _backend ??= Open();

    /// <summary>Writes rows into the device pools and into the host copy alike.</summary>
    internal void Write(int layer, int[] slots, ushort[] rows)
    {
        Backend.WriteKv(layer, slots, rows);
        Mirror.Write(layer, slots, rows);
    }

    /// <summary>Seeds the inputs of one test; distinct per test name, the same on every run with the same seed.</summary>
    internal DeviceSteps Steps(string test) => new(new Random(HashCode.Combine(GpuDevice.Seed, StableHash(test)))) { Pool = Pool };

    /// <summary>The page-locked pool the backend copies from and to directly, or null: everything staged.</summary>
    internal virtual PinnedTensorPool? Pool => null;

    private CudaBackend Open()
    {
        var backend = CudaBackendFactory.Create(new CudaBackendOptions { FatbinPath = GpuDevice.FatbinPath, NumLayers = Layers, NumBlocks = Blocks });
        backend.PoisonResults = true;
        backend.TransferChunkBytes = 64 << 10;
        if (Pool is { } pool) backend.AttachHostPool(pool);
        return backend;
    }

    internal static int StableHash(string text)
    {
        int hash = 17;
        foreach (char c in text) hash = hash * 31 + c;
        return hash;
    }

    public void Dispose()
    {
        _backend?.Dispose();
        GC.SuppressFinalize(this);
    }
}

/// <summary>Every step tensor in plain arrays: staged through the backend's pinned buffers.</summary>
public sealed class StagedBackend : DeviceBackend;

/// <summary>Every step tensor in page-locked pool arrays, as the server's wire buffers are: copied with no staging.</summary>
public sealed class PageLockedBackend : DeviceBackend
{
    private readonly PinnedTensorPool _pool = new(1 << 28, 8);

    internal override PinnedTensorPool? Pool => _pool;
}

/// <summary>The GPU tests run one after another (one device), the sticky fault's collection after all of them.</summary>
[CollectionDefinition(Name)]
public sealed class GpuCollection : ICollectionFixture<StagedBackend>, ICollectionFixture<PageLockedBackend>, ICollectionFixture<Fp8Backends>
{
    public const string Name = "gpu";
}
