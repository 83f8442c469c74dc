using FlashMla.Core.Memory;

namespace FlashMla.Core.Tests;

/// <summary>Records what the pool asks of a device; refuses when told to.</summary>
internal sealed class FakeRegistrar : IHostMemoryRegistrar
{
    public readonly HashSet<byte[]> Locked = new(ReferenceEqualityComparer.Instance);
    public int Registrations, Unregistrations;
    public bool Refuse;

    public long LockedBytes
    {
        get { lock (Locked) return Locked.Sum(a => (long)a.Length); }
    }

    public bool Register(byte[] array)
    {
        lock (Locked)
        {
            if (Refuse) return false;
            Assert.True(Locked.Add(array), "registered twice");
            Registrations++;
            return true;
        }
    }

    public void Unregister(byte[] array)
    {
        lock (Locked)
        {
            Assert.True(Locked.Remove(array), "unregistered an array that was not registered");
            Unregistrations++;
        }
    }
}
