using System.Text;

namespace FlashMla.Client.Routing;

/// <summary>
/// Consistent hashing of routing keys onto replicas: each replica owns many points on a 64-bit ring and a
/// key goes to the first point at or after its hash. The mapping depends only on the set of replica
/// addresses (not their order), and adding or removing one replica moves only the keys of that replica's arcs.
/// </summary>
public sealed class ReplicaRing
{
    private readonly ulong[] _points;
    private readonly int[] _owners;

    /// <param name="replicas">Replica addresses; duplicates are ignored.</param>
    /// <param name="pointsPerReplica">Ring points per replica; more points spread keys more evenly.</param>
    public ReplicaRing(IEnumerable<string> replicas, int pointsPerReplica = 160)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(pointsPerReplica, 1);
        Replicas = replicas.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToArray();
        if (Replicas.Count == 0) throw new ArgumentException("at least one replica is needed", nameof(replicas));
        var ring = new List<(ulong Point, int Owner)>(Replicas.Count * pointsPerReplica);
        for (int r = 0; r < Replicas.Count; r++)
            for (int i = 0; i < pointsPerReplica; i++)
                ring.Add((Hash($"{Replicas[r]}#{i}"), r));
        ring.Sort((a, b) => a.Point != b.Point ? a.Point.CompareTo(b.Point) : a.Owner.CompareTo(b.Owner));
        _points = ring.Select(p => p.Point).ToArray();
        _owners = ring.Select(p => p.Owner).ToArray();
    }

    /// <summary>The replicas, sorted.</summary>
    public IReadOnlyList<string> Replicas { get; }

    /// <summary>The replica that owns <paramref name="key"/>.</summary>
    public string ReplicaFor(string key)
    {
        ulong hash = Hash(key);
        int index = Array.BinarySearch(_points, hash);
        if (index < 0) index = ~index;
        if (index == _points.Length) index = 0;
        return Replicas[_owners[index]];
    }

    /// <summary>FNV-1a over UTF-8, then a 64-bit finalizer so that near-identical keys land far apart. Stable across processes.</summary>
    public static ulong Hash(string key)
    {
        ulong h = 14695981039346656037UL;
        foreach (byte b in Encoding.UTF8.GetBytes(key))
        {
            h ^= b;
            h *= 1099511628211UL;
        }
        h ^= h >> 33;
        h *= 0xff51afd7ed558ccdUL;
        h ^= h >> 33;
        h *= 0xc4ceb9fe1a85ec53UL;
        h ^= h >> 33;
        return h;
    }
}
