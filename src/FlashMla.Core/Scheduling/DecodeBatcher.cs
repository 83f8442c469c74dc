namespace FlashMla.Core.Scheduling;

/// <summary>
/// Groups pending decode requests by (layer, s_q, h_q, scale, with or without new rows): each group becomes
/// one backend call. A request that names a sequence already in its group, or that would push the group
/// past the batch bounds, flushes the group first, so two steps of one sequence never share a call and
/// run in arrival order. A sequence is named by tenant and id: another tenant's request that names the same id
/// (which it cannot reach: refused on the loop as not found) neither flushes the group nor waits for it.
/// </summary>
internal sealed class DecodeBatcher(SchedulerOptions options, DecodeBatchExecutor executor)
{
    private readonly Dictionary<GroupKey, Group> _groups = [];

    public bool HasPending => _groups.Count > 0;

    /// <summary>True when some group holds as many sequences as one backend call takes.</summary>
    public bool IsFull
    {
        get
        {
            foreach (var group in _groups.Values)
                if (group.Sequences >= options.MaxBatchSequences) return true;
            return false;
        }
    }

    public void Add(DecodeWork work)
    {
        var key = new GroupKey(work.Layer, work.QueryTokens, work.Heads, work.SoftmaxScale, work.HasNewKv);
        if (_groups.TryGetValue(key, out var group) && !group.CanTake(work, options))
        {
            Flush(key, group);
            group = null;
        }
        if (group is null)
        {
            group = new Group();
            _groups.Add(key, group);
        }
        group.Add(work);
    }

    public void FlushAll()
    {
        while (_groups.Count > 0) FlushOldest();
    }

    /// <summary>Runs the group whose first request has waited longest; the others stay pending.</summary>
    public void FlushOldest()
    {
        GroupKey oldestKey = default;
        Group? oldest = null;
        foreach (var (key, group) in _groups)
            if (oldest is null || group.FirstArrival < oldest.FirstArrival) (oldestKey, oldest) = (key, group);
        if (oldest is not null) Flush(oldestKey, oldest);
    }

    private void Flush(GroupKey key, Group group)
    {
        _groups.Remove(key);
        executor.Run(group.Works);
    }

    private readonly record struct GroupKey(int Layer, int QueryTokens, int Heads, float Scale, bool HasNewKv);

    private sealed class Group
    {
        private readonly HashSet<(Cache.Tenant?, ulong)> _ids = [];
        public List<DecodeWork> Works { get; } = [];
        public int Sequences => _ids.Count;
        public long FirstArrival => Works[0].ArrivedAt;

        public bool CanTake(DecodeWork work, SchedulerOptions options)
        {
            if (_ids.Count + work.BatchSize > options.MaxBatchSequences) return false;
            foreach (ulong id in work.SequenceIds)
                if (_ids.Contains((work.Tenant, id))) return false;
            return true;
        }

        public void Add(DecodeWork work)
        {
            Works.Add(work);
            foreach (ulong id in work.SequenceIds) _ids.Add((work.Tenant, id));
        }
    }
}
