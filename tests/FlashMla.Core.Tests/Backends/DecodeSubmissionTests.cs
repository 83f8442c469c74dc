using FlashMla.Core.Backends;

namespace FlashMla.Core.Tests.Backends;

/// <summary>The action a submission runs when its outputs are ready: before it reads complete, at once if late, never on failure.</summary>
public sealed class DecodeSubmissionTests
{
    [Fact]
    public void The_outputs_action_runs_on_the_completing_thread_before_the_submission_reads_complete()
    {
        var submission = new DecodeSubmission();
        bool completeWhenRun = true;
        int runs = 0;
        submission.OnOutputsReady(() =>
        {
            completeWhenRun = submission.IsComplete;
            runs++;
        });
        Assert.Equal(0, runs);
        submission.MarkComplete();
        Assert.Equal(1, runs);
        Assert.False(completeWhenRun);
        Assert.True(submission.IsComplete);
    }

    [Fact]
    public void An_action_given_after_completion_runs_at_once_and_never_after_a_failure()
    {
        var completed = DecodeSubmission.CompletedNow();
        int runs = 0;
        completed.OnOutputsReady(() => runs++);
        Assert.Equal(1, runs);

        var failed = new DecodeSubmission();
        failed.OnOutputsReady(() => runs++);
        failed.MarkFailed(new BackendFaultException("lost", isSticky: false));
        var lateOnFailed = new DecodeSubmission();
        lateOnFailed.MarkFailed(new BackendFaultException("lost", isSticky: false));
        lateOnFailed.OnOutputsReady(() => runs++);
        Assert.Equal(1, runs);
        Assert.True(failed.IsComplete && lateOnFailed.IsComplete);
    }

    [Fact]
    public void An_action_that_throws_still_lets_the_submission_complete()
    {
        var submission = new DecodeSubmission();
        submission.OnOutputsReady(() => throw new InvalidOperationException("broken"));
        Assert.Throws<InvalidOperationException>(() => submission.MarkComplete());
        Assert.True(submission.IsComplete);
    }
}
