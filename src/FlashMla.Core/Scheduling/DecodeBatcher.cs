namespace FlashMla.Core.Scheduling;

/// <summary>
/// Groups pending decode requests by (layer, s_q, h_q, scale, with or without new rows): each group becomes
/// one backend call. A request that names a sequence already in its group, or that would push the group
/// past the batch bounds (sequences, or KV tokens per call), closes the group first, so two steps of one
/// sequence never share a call and run in arrival order, and no call attends over more than
/// <see cref="SchedulerOptions.MaxKvTokensPerCall"/>. Closed groups wait for a free slot on the backend; nothing here
/// starts a call by itself or waits: the loop takes the oldest group when a slot is free. A sequence is named by
/// tenant and id: another tenant's request that names the same id (which it cannot reach: refused on the loop as not
/// found) does not close the group.
/// </summary>
internal sealed class DecodeBatcher(SchedulerOptions options)
{
    private readonly Dictionary<GroupKey, Group> _open = [];
    private readonly List<Group> _closed = [];
    private readonly Stack<Group> _spare = new();

    public bool HasPending => _open.Count > 0 || _closed.Count > 0;

    /// <summary>True when a closed group waits, or an open one takes no more (a call's worth is ready).</summary>
    public bool IsFull
    {
        get
        {
            if (_closed.Count > 0) return true;
            foreach (var group in _open.Values)
                if (group.Sequences >= options.MaxBatchSequences || group.KvTokens >= options.MaxKvTokensPerCall) return true;
            return false;
        }
    }

    /// <summary>When the request that has waited longest arrived (<see cref="System.Diagnostics.Stopwatch"/> ticks).</summary>
    public long OldestArrival
    {
        get
        {
            long oldest = long.MaxValue;
            foreach (var group in _closed) oldest = Math.Min(oldest, group.FirstArrival);
            foreach (var group in _open.Values) oldest = Math.Min(oldest, group.FirstArrival);
            return oldest;
        }
    }

    /// <param name="kvTokens">The KV positions the request attends over (its sequences' lengths after its new rows).</param>
    public void Add(DecodeWork work, long kvTokens)
    {
        var key = new GroupKey(work.Layer, work.QueryTokens, work.Heads, work.SoftmaxScale, work.HasNewKv);
        if (_open.Remove(key, out var group))
        {
            if (group.CanTake(work, kvTokens, options)) _open.Add(key, group);
            else
            {
                _closed.Add(group);
                group = null;
            }
        }
        if (group is null)
        {
            group = _spare.Count > 0 ? _spare.Pop() : new Group();
            _open.Add(key, group);
        }
        group.Add(work, kvTokens);
    }

    /// <summary>Hands the group whose first request has waited longest to <paramref name="run"/> (which reads it at once).</summary>
    public void RunOldest(Action<IReadOnlyList<DecodeWork>> run)
    {
        int closedAt = -1;
        Group? oldest = null;
        GroupKey oldestKey = default;
        for (int i = 0; i < _closed.Count; i++)
            if (oldest is null || _closed[i].FirstArrival < oldest.FirstArrival) (closedAt, oldest) = (i, _closed[i]);
        foreach (var (key, group) in _open)
            if (oldest is null || group.FirstArrival < oldest.FirstArrival) (closedAt, oldestKey, oldest) = (-1, key, group);
        if (oldest is null) return;
        if (closedAt >= 0) _closed.RemoveAt(closedAt);
        else _open.Remove(oldestKey);
        run(oldest.Works);
        oldest.Clear();
        _spare.Push(oldest);
    }

    private readonly record struct GroupKey(int Layer, int QueryTokens, int Heads, float Scale, bool HasNewKv);

    private sealed class Group
    {
        private readonly HashSet<(Cache.Tenant?, ulong)> _ids = [];
        public List<DecodeWork> Works { get; } = [];
        public int Sequences => _ids.Count;
        public long KvTokens { get; private set; }
        public long FirstArrival => Works[0].ArrivedAt;

        public bool CanTake(DecodeWork work, long kvTokens, SchedulerOptions options)
        {
            if (_ids.Count + work.BatchSize > options.MaxBatchSequences) return false;
            if (KvTokens + kvTokens > options.MaxKvTokensPerCall) return false;
            foreach (ulong id in work.SequenceIds)
                if (_ids.Contains((work.Tenant, id))) return false;
            return true;
        }

        public void Add(DecodeWork work, long kvTokens)
        {
            Works.Add(work);
            KvTokens += kvTokens;
            foreach (ulong id in work.SequenceIds) _ids.Add((work.Tenant, id));
        }

        public void Clear()
        {
            Works.Clear();
            _ids.Clear();
            KvTokens = 0;
        }
    }
}
