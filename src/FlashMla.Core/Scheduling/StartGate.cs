namespace FlashMla.Core.Scheduling;

/// <summary>
/// The one race of a queued request: the loop starting it against its caller cancelling it. Whoever moves the
/// gate first wins: a cancelled request never starts (its work is never computed), a started one is no longer
/// cancelled (its buffers are in use until it completes).
/// </summary>
internal struct StartGate
{
    private const int Queued = 0, Started = 1, Cancelled = 2;
    private int _state;

    public bool IsCancelled => Volatile.Read(ref _state) == Cancelled;

    /// <summary>The loop takes the request; false when it was cancelled.</summary>
    public bool TryStart() => Interlocked.CompareExchange(ref _state, Started, Queued) == Queued;

    /// <summary>The caller gives up; false when the loop started it already.</summary>
    public bool TryCancel() => Interlocked.CompareExchange(ref _state, Cancelled, Queued) == Queued;
}
