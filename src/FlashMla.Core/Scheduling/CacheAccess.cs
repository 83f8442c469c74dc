namespace FlashMla.Core.Scheduling;

/// <summary>
/// What a cache command touches, which says what it must be ordered against on the scheduler loop. A command
/// waits only for decodes (queued on the loop or in flight) that touch what it touches, and later decodes that
/// touch the same wait for it; everything else goes on around it.
/// </summary>
public readonly struct CacheAccess : IEquatable<CacheAccess>
{
    private readonly ulong _sequence;
    private readonly byte _kind;

    private CacheAccess(byte kind, ulong sequence)
    {
        _kind = kind;
        _sequence = sequence;
    }

    /// <summary>Everything (the default): after every decode the loop holds, before every later one.</summary>
    public static CacheAccess Everything => default;

    /// <summary>
    /// No KV rows and no sequence a decode may be changing: counters, creating a sequence, a sequence's lengths
    /// (which a decode commits when it starts). Runs at once, even beside a long decode.
    /// </summary>
    public static CacheAccess Metadata => new(1, 0);

    /// <summary>One sequence's rows or blocks (append, read, fork of it, truncate, free): waits only for work on it.</summary>
    public static CacheAccess Sequence(ulong id) => new(2, id);

    public bool IsEverything => _kind == 0;
    public bool IsMetadata => _kind == 1;

    /// <summary>The sequence, when <see cref="IsSequence"/>.</summary>
    public ulong SequenceId => _sequence;

    public bool IsSequence => _kind == 2;

    public bool Equals(CacheAccess other) => _kind == other._kind && _sequence == other._sequence;
    public override bool Equals(object? obj) => obj is CacheAccess other && Equals(other);
    public override int GetHashCode() => HashCode.Combine(_kind, _sequence);
    public static bool operator ==(CacheAccess left, CacheAccess right) => left.Equals(right);
    public static bool operator !=(CacheAccess left, CacheAccess right) => !left.Equals(right);
}
