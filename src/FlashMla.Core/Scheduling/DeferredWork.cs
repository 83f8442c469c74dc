namespace FlashMla.Core.Scheduling;

/// <summary>
/// Work the loop holds back, in arrival order: cache commands on a sequence that has decodes unfinished (or
/// barriers, while anything is unfinished), and decodes that name a sequence such a command waits on, so that a
/// sequence's work runs in the order it came and a steady stream of decodes cannot starve a command on it.
/// Work on other sequences passes it by. Loop only.
/// </summary>
internal sealed class DeferredWork
{
    private readonly List<object> _items = [];
    private readonly Dictionary<ulong, int> _touched = [];
    private readonly HashSet<ulong> _scanTouched = [];
    private int _barriers;

    public int Count => _items.Count;

    /// <summary>Decodes held back (they count against what the loop takes in).</summary>
    public int Decodes { get; private set; }

    /// <summary>True when something held back must go before work with <paramref name="access"/>.</summary>
    public bool MustPrecede(CacheAccess access) =>
        access.IsEverything ? _items.Count > 0 : access.IsSequence && (_barriers > 0 || _touched.ContainsKey(access.SequenceId));

    /// <summary>True when something held back must go before a decode over <paramref name="ids"/>.</summary>
    public bool MustPrecede(ulong[] ids)
    {
        if (_barriers > 0) return true;
        if (_touched.Count == 0) return false;
        foreach (ulong id in ids)
            if (_touched.ContainsKey(id)) return true;
        return false;
    }

    public void Add(DecodeWork work)
    {
        _items.Add(work);
        Decodes++;
        foreach (ulong id in work.SequenceIds) Touch(id, +1);
    }

    public void Add(IDeferrableCommand command)
    {
        _items.Add(command);
        if (command.Access.IsEverything) _barriers++;
        else if (command.Access.IsSequence) Touch(command.Access.SequenceId, +1);
    }

    /// <summary>
    /// Offers each item, in order, to <paramref name="tryRun"/> unless an earlier item still held back touches what
    /// it touches; the items it takes (returns true for) leave the queue. With <paramref name="force"/> every item
    /// is offered (draining, when nothing is unfinished any more).
    /// </summary>
    public void Release(Func<object, bool> tryRun, bool force = false)
    {
        if (_items.Count == 0) return;
        _scanTouched.Clear();
        bool barrierKept = false;
        int kept = 0;
        for (int i = 0; i < _items.Count; i++)
        {
            var item = _items[i];
            bool blocked = !force && (barrierKept || (kept > 0 && IsBarrier(item)) || TouchesAny(item, _scanTouched));
            if (!blocked && tryRun(item))
            {
                Forget(item);
                continue;
            }
            _items[kept++] = item;
            if (IsBarrier(item)) barrierKept = true;
            else foreach (ulong id in Touches(item)) _scanTouched.Add(id);
        }
        _items.RemoveRange(kept, _items.Count - kept);
    }

    private static bool IsBarrier(object item) => item is IDeferrableCommand { Access.IsEverything: true };

    private static bool TouchesAny(object item, HashSet<ulong> ids)
    {
        if (ids.Count == 0) return false;
        foreach (ulong id in Touches(item))
            if (ids.Contains(id)) return true;
        return false;
    }

    private static ReadOnlySpan<ulong> Touches(object item) => item switch
    {
        DecodeWork work => work.SequenceIds,
        IDeferrableCommand { Access.IsSequence: true } command => new[] { command.Access.SequenceId },
        _ => [],
    };

    private void Forget(object item)
    {
        if (item is DecodeWork work)
        {
            Decodes--;
            foreach (ulong id in work.SequenceIds) Touch(id, -1);
        }
        else if (item is IDeferrableCommand command)
        {
            if (command.Access.IsEverything) _barriers--;
            else if (command.Access.IsSequence) Touch(command.Access.SequenceId, -1);
        }
    }

    private void Touch(ulong id, int delta)
    {
        _touched.TryGetValue(id, out int n);
        n += delta;
        if (n <= 0) _touched.Remove(id);
        else _touched[id] = n;
    }
}

/// <summary>A cache command as the loop orders it: what it touches.</summary>
internal interface IDeferrableCommand
{
    CacheAccess Access { get; }
}
