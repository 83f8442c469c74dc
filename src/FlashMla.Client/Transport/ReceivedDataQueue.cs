using System.Threading.Tasks.Sources;

namespace FlashMla.Client.Transport;

/// <summary>A DATA payload in a pooled array, waiting to be read.</summary>
internal readonly record struct ReceivedData(byte[] Array, int Offset, int Length);

/// <summary>
/// One stream's received DATA, from the connection's reader loop to the one application reader of the response
/// body. Unlike a channel, adding does not wake the reader: it says whether a reader waits, and the reader loop
/// wakes it with <see cref="Wake"/> after the frame, on the thread it hands off (the continuation then runs
/// inline, with no thread-pool hop). Completion from anywhere else (a failure, a cancellation) wakes through
/// the thread pool, so it never runs the reader's code on the thread that failed the stream.
/// </summary>
internal sealed class ReceivedDataQueue : IValueTaskSource<bool>, IThreadPoolWorkItem
{
    private readonly Queue<ReceivedData> _items = new();
    private ManualResetValueTaskSourceCore<bool> _wait; // continuations inline: Wake is called where they may run
    private CancellationTokenRegistration _cancellation;
    private bool _waiting, _completed;
    private Exception? _failure;

    private object Gate => _items;

    /// <summary>
    /// Queues <paramref name="data"/>; false when the queue is complete (the caller keeps the array). <paramref name="wakeOwed"/>:
    /// a reader waits, and the caller must <see cref="Wake"/> it.
    /// </summary>
    public bool TryAdd(ReceivedData data, out bool wakeOwed)
    {
        lock (Gate)
        {
            wakeOwed = _waiting;
            if (_completed) return false;
            _items.Enqueue(data);
            return true;
        }
    }

    /// <summary>
    /// Ends the queue (<paramref name="failure"/> null: the body ended; else reads throw it once the queued data is read).
    /// True when a reader waits and the caller must wake it (<see cref="Wake"/> or <see cref="WakeLater"/>); false also once already complete.
    /// </summary>
    public bool TryComplete(Exception? failure)
    {
        lock (Gate)
        {
            if (_completed) return false;
            _completed = true;
            _failure = failure;
            return _waiting;
        }
    }

    public bool TryTake(out ReceivedData data)
    {
        lock (Gate) return _items.TryDequeue(out data);
    }

    /// <summary>
    /// Waits until data is queued (true) or the queue is complete and empty (false, or the failure thrown). One reader:
    /// the next wait starts after this one's result was taken.
    /// </summary>
    public ValueTask<bool> WaitAsync(CancellationToken cancellationToken)
    {
        lock (Gate)
        {
            if (_items.Count > 0) return new ValueTask<bool>(true);
            if (_completed) return _failure is null ? new ValueTask<bool>(false) : ValueTask.FromException<bool>(_failure);
            _wait.Reset();
            _waiting = true;
            // Registered under the lock, so no wake can take the result before the registration is stored (a token
            // already cancelled runs Cancel here, on this thread: the lock is reentrant).
            if (cancellationToken.CanBeCanceled)
                _cancellation = cancellationToken.UnsafeRegister(static (state, token) => ((ReceivedDataQueue)state!).Cancel(token), this);
            return new ValueTask<bool>(this, _wait.Version);
        }
    }

    /// <summary>Wakes the waiting reader, if any, on this thread: its continuation runs inline.</summary>
    public void Wake()
    {
        Exception? failure = null;
        bool more;
        lock (Gate)
        {
            if (!_waiting) return;
            _waiting = false;
            // Nothing queued and not complete (a spurious wake): true, and the reader waits again.
            more = _items.Count > 0 || !_completed;
            if (!more) failure = _failure;
        }
        if (failure is null) _wait.SetResult(more);
        else _wait.SetException(failure);
    }

    /// <summary>Wakes the waiting reader from a thread-pool work item (completion off the reader loop).</summary>
    public void WakeLater() => ThreadPool.UnsafeQueueUserWorkItem(this, preferLocal: false);

    void IThreadPoolWorkItem.Execute() => Wake();

    private void Cancel(CancellationToken token)
    {
        lock (Gate)
        {
            if (!_waiting) return;
            _waiting = false;
        }
        _wait.SetException(new OperationCanceledException(token));
    }

    bool IValueTaskSource<bool>.GetResult(short token)
    {
        _cancellation.Unregister(); // not Dispose: this may run inside the cancellation callback itself
        _cancellation = default;
        return _wait.GetResult(token);
    }

    ValueTaskSourceStatus IValueTaskSource<bool>.GetStatus(short token) => _wait.GetStatus(token);

    void IValueTaskSource<bool>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags) =>
        _wait.OnCompleted(continuation, state, token, flags);
}
