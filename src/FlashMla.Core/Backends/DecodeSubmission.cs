using System.Diagnostics;

namespace FlashMla.Core.Backends;

/// <summary>
/// A decode batch (or a KV write, <see cref="IAttentionBackend.SubmitWriteKv"/>) handed to a backend whose work may still be running: the backend completes it once the
/// batch's <c>Out</c> and <c>Lse</c> are in host memory, or fails it with the fault that stopped it. Until
/// then the caller must neither read nor reuse those outputs. A backend that computes synchronously
/// returns <see cref="CompletedNow"/>. Completion comes from whichever thread the backend finishes on.
/// </summary>
public sealed class DecodeSubmission
{
    private static readonly Action Completed = static () => { };
    private static readonly Action Failed = static () => { };

    private readonly TaskCompletionSource _done = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private BackendFaultException? _fault;
    private long _completedAt;
    private Action? _onOutputsReady; // the caller's action, or Completed / Failed once the backend is done

    /// <summary>True once the outputs are in host memory or the batch failed.</summary>
    public bool IsComplete => _done.Task.IsCompleted;

    /// <summary>Completes (never faults) when <see cref="IsComplete"/> turns true; for waking an async loop.</summary>
    public Task Completion => _done.Task;

    /// <summary>Device time of the batch's phases, when the backend measures them (null: it does not, e.g. the CPU backend).</summary>
    public DevicePhases? Phases { get; private set; }

    /// <summary>When the backend completed it (<see cref="Stopwatch.GetTimestamp"/>), or 0 while pending.</summary>
    public long CompletedAt => Volatile.Read(ref _completedAt);

    /// <summary>A submission already complete: the outputs were written before it was returned.</summary>
    public static DecodeSubmission CompletedNow()
    {
        var submission = new DecodeSubmission();
        submission.MarkComplete();
        return submission;
    }

    /// <summary>
    /// Runs <paramref name="action"/> once the outputs are in host memory: on the thread that completes the submission,
    /// before <see cref="IsComplete"/> turns true (so whoever sees it complete sees the action done), or at once when
    /// that has happened already. Never when the batch fails. One action per submission.
    /// </summary>
    public void OnOutputsReady(Action action)
    {
        ArgumentNullException.ThrowIfNull(action);
        var previous = Interlocked.CompareExchange(ref _onOutputsReady, action, null);
        if (previous == Completed) action();
        else if (previous is not null && previous != Failed) throw new InvalidOperationException("the submission already has an action for its outputs");
    }

    /// <summary>Blocks until complete; throws the fault if the batch failed.</summary>
    public void Wait()
    {
        _done.Task.Wait();
        if (_fault is { } fault) throw fault;
    }

    /// <summary>For backends: the outputs are in host memory; <paramref name="phases"/> says where the device time went.</summary>
    public void MarkComplete(DevicePhases? phases = null)
    {
        Phases = phases;
        Volatile.Write(ref _completedAt, Stopwatch.GetTimestamp());
        var action = Interlocked.Exchange(ref _onOutputsReady, Completed);
        try
        {
            if (action is not null && action != Completed && action != Failed) action();
        }
        finally
        {
            _done.TrySetResult();
        }
    }

    /// <summary>For backends: the batch failed; its outputs are undefined.</summary>
    public void MarkFailed(BackendFaultException fault)
    {
        ArgumentNullException.ThrowIfNull(fault);
        _fault = fault;
        Volatile.Write(ref _completedAt, Stopwatch.GetTimestamp());
        Interlocked.Exchange(ref _onOutputsReady, Failed);
        _done.TrySetResult();
    }
}

/// <summary>
/// Where a decode batch's device time went, from the device's own clock: host-to-device copies, the kernels
/// alone (append, split-KV decode, combine), device-to-host copies; microseconds.
/// </summary>
public readonly record struct DevicePhases(double UploadMicroseconds, double KernelMicroseconds, double DownloadMicroseconds);
