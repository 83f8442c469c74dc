namespace FlashMla.Core.Scheduling;

/// <summary>
/// Which sequences the scheduler loop has work on that has not finished: decodes queued in the batcher or in
/// flight on the backend (and KV appends in flight). A cache command on such a sequence waits; one on any other
/// sequence runs at once. Loop only.
/// </summary>
internal sealed class SequenceActivity
{
    private readonly Dictionary<ulong, int> _holders = [];

    /// <summary>Sequences with unfinished work.</summary>
    public int Count => _holders.Count;

    public bool IsBusy(ulong id) => _holders.ContainsKey(id);

    public void Enter(ulong id)
    {
        _holders.TryGetValue(id, out int n);
        _holders[id] = n + 1;
    }

    public void Enter(ulong[] ids)
    {
        foreach (ulong id in ids) Enter(id);
    }

    public void Leave(ulong id)
    {
        if (!_holders.TryGetValue(id, out int n)) return;
        if (n <= 1) _holders.Remove(id);
        else _holders[id] = n - 1;
    }

    public void Leave(ulong[] ids)
    {
        foreach (ulong id in ids) Leave(id);
    }
}
