using FlashMla.Client.Transport;

namespace FlashMla.Http2.Tests;

/// <summary>A stream's queue of received DATA: adding never wakes the reader; the wake does, inline, on the waking thread.</summary>
public sealed class ReceivedDataQueueTests
{
    private static ReceivedData Data(int length) => new(new byte[length], 0, length);

    [Fact]
    public async Task Adding_says_whether_a_reader_waits_and_the_wake_resumes_it_on_the_waking_thread()
    {
        var queue = new ReceivedDataQueue();
        Assert.True(queue.TryAdd(Data(1), out bool owed));
        Assert.False(owed); // nobody waits
        Assert.True(queue.WaitAsync(default).IsCompletedSuccessfully); // data there: no wait at all
        Assert.True(queue.TryTake(out _));

        var wait = queue.WaitAsync(default).AsTask();
        int? resumedOn = null;
        var resumed = wait.ContinueWith(_ => resumedOn = Environment.CurrentManagedThreadId, TaskContinuationOptions.ExecuteSynchronously);
        Assert.True(queue.TryAdd(Data(2), out owed));
        Assert.True(owed);
        Assert.False(wait.IsCompleted); // adding does not wake: the reader loop wakes after the frame
        queue.Wake();
        Assert.True(resumed.IsCompleted);
        Assert.Equal(Environment.CurrentManagedThreadId, resumedOn);
        Assert.True(await wait);
        queue.Wake(); // nobody waits: nothing happens
        Assert.True(queue.TryTake(out var taken));
        Assert.Equal(2, taken.Length);
    }

    [Fact]
    public async Task Data_queued_before_a_failure_is_read_first_and_a_completed_queue_refuses_more()
    {
        var queue = new ReceivedDataQueue();
        var wait = queue.WaitAsync(default);
        var failure = new IOException("reset");
        Assert.True(queue.TryComplete(failure)); // a reader waits: the caller wakes it
        Assert.False(queue.TryComplete(null)); // once
        queue.Wake();
        Assert.Same(failure, await Assert.ThrowsAsync<IOException>(() => wait.AsTask()));
        Assert.False(queue.TryAdd(Data(1), out _));

        var second = new ReceivedDataQueue();
        Assert.True(second.TryAdd(Data(3), out _));
        Assert.False(second.TryComplete(failure)); // nobody waits
        Assert.True(await second.WaitAsync(default));
        Assert.True(second.TryTake(out var before));
        Assert.Equal(3, before.Length);
        Assert.Same(failure, await Assert.ThrowsAsync<IOException>(() => second.WaitAsync(default).AsTask()));

        var ended = new ReceivedDataQueue();
        Assert.False(ended.TryComplete(null));
        Assert.False(await ended.WaitAsync(default));
    }

    [Fact]
    public async Task A_cancelled_wait_throws_and_a_later_wait_is_woken_by_the_thread_pool()
    {
        var queue = new ReceivedDataQueue();
        using var cancel = new CancellationTokenSource();
        var wait = queue.WaitAsync(cancel.Token).AsTask();
        cancel.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => wait);
        Assert.True(queue.TryAdd(Data(1), out bool owed));
        Assert.False(owed); // the cancelled reader no longer waits

        Assert.True(queue.TryTake(out _));
        var again = queue.WaitAsync(cancel.Token); // an already cancelled token
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => again.AsTask());

        var later = queue.WaitAsync(default).AsTask();
        Assert.True(queue.TryComplete(null));
        queue.WakeLater();
        Assert.False(await later.WaitAsync(TimeSpan.FromSeconds(10)));
    }
}
