using System.Runtime.CompilerServices;

namespace FlashMla.Http2;

/// <summary>
/// An awaitable that swaps roles between a loop and the code it wakes: the awaiting method (a reader loop) goes
/// on as a new thread-pool work item, and <c>work(state)</c> runs now, on the thread the loop was on. A loop
/// that has just received what someone waits for then lets that someone resume on the thread (and the warm
/// cache) that read the bytes, with no wake-up of another thread in between, and the loop itself never runs the
/// woken code: however long that code takes, even if it blocks, the loop carries on elsewhere.
/// <para>
/// The awaiting method is queued before <c>work</c> starts, so it may already be running on another thread
/// while <c>work</c> runs: the two must share nothing but thread-safe state. <c>work</c> must not throw (it
/// runs inside the await's scheduling; an exception there is fatal to the process, like one thrown by a
/// task's continuation).
/// </para>
/// </summary>
internal readonly struct ThreadHandOff<TState> : ICriticalNotifyCompletion
{
    private readonly Action<TState> _work;
    private readonly TState _state;

    public ThreadHandOff(Action<TState> work, TState state)
    {
        _work = work;
        _state = state;
    }

    public ThreadHandOff<TState> GetAwaiter() => this;

    public bool IsCompleted => false;

    public void GetResult()
    {
    }

    public void OnCompleted(Action continuation)
    {
        // Task.Yield's awaiter queues to the thread pool (an async method's box without a delegate allocation),
        // with the execution context flowing here and not in UnsafeOnCompleted.
        Task.Yield().GetAwaiter().OnCompleted(continuation);
        _work(_state);
    }

    public void UnsafeOnCompleted(Action continuation)
    {
        Task.Yield().GetAwaiter().UnsafeOnCompleted(continuation);
        _work(_state);
    }
}
