namespace FlashMla.Core.Memory;

/// <summary>
/// Makes host arrays readable and writable by a device's copy engine (page-locks them), so a backend can
/// copy a tensor straight between the array the wire parsed it into and the device, without a staging
/// copy. <see cref="PinnedTensorPool"/> calls it for the arrays it allocates once a backend attaches one.
/// </summary>
public interface IHostMemoryRegistrar
{
    /// <summary>Page-locks the whole array (allocated on the pinned object heap: it never moves); false if the device refused.</summary>
    bool Register(byte[] array);

    /// <summary>Undoes <see cref="Register"/>; called before the pool lets go of the array.</summary>
    void Unregister(byte[] array);
}
