using System.Collections.Concurrent;
using FlashMla.Contracts.V1;
using FlashMla.Contracts.Wire;
using FlashMla.Http2;
using Grpc.Core;

namespace FlashMla.Client;

/// <summary>
/// One bidirectional Decode stream with several requests in flight: <see cref="SendAsync"/> writes a request
/// and hands back the task of its response; <see cref="DecodeAsync"/> does both. A request's own failure
/// throws <see cref="RpcException"/> from its task and leaves the stream open. Responses are parsed into
/// pooled buffers: dispose each <see cref="DecodeOutput"/> when done with it.
/// <para>
/// A response's task completes on the thread that read its bytes off the socket, and the code awaiting it resumes
/// there at once (no thread-pool hop between the socket and the caller). Neither the connection's reader loop nor
/// this stream's response reader waits for that code: both move to another thread first, so a continuation that
/// computes for long, or blocks, holds up no other response (on this stream or any other).
/// </para>
/// </summary>
public sealed class DecodeStream : IAsyncDisposable
{
    private readonly AsyncDuplexStreamingCall<Leased<DecodeRequest>, Leased<DecodeResponse>> _call;
    private readonly ConcurrentDictionary<ulong, PendingDecode> _pending = new();
    private readonly SemaphoreSlim _sendLock = new(1, 1);
    private readonly Task _reader;
    private long _nextId;
    private volatile Exception? _closed;
    private int _disposed;

    internal DecodeStream(AsyncDuplexStreamingCall<Leased<DecodeRequest>, Leased<DecodeResponse>> call)
    {
        _call = call;
        _reader = Task.Run(ReadResponsesAsync);
    }

    public int InFlight => _pending.Count;

    /// <summary>
    /// Sends one step at once and completes when the request has been written to the stream: from then on
    /// the input's memory is no longer read and may be reused. The returned task completes with the response.
    /// </summary>
    public async Task<Task<DecodeOutput>> SendAsync(DecodeInput input, CancellationToken cancellationToken = default)
    {
        var pending = new PendingOutput();
        await SendAsync(input, pending, cancellationToken).ConfigureAwait(false);
        return pending.Task;
    }

    /// <summary>
    /// As <see cref="SendAsync(DecodeInput, CancellationToken)"/>, the outputs to be written into the caller's memory:
    /// <c>out [b, s_q, h_q, 512]</c> bf16 into the start of <paramref name="output"/>, <c>lse [b, h_q, s_q]</c> into the
    /// start of <paramref name="lse"/> (memory too short for them: <see cref="ArgumentException"/>, nothing sent). The copy
    /// from the received message into this memory is the only one after the socket, and the message's pooled buffer goes
    /// back before the returned task completes.
    /// <para>
    /// Ownership: <paramref name="output"/> and <paramref name="lse"/> belong to the call from this method's start until
    /// the returned task completes, however it completes; they are written only just before it completes with its
    /// result, and never after. A response whose tensors are not this step's sizes fails the task with INTERNAL and
    /// writes nothing. <paramref name="cancellationToken"/> cancels the send only (see <see cref="DecodeAsync(DecodeInput, Memory{ushort}, Memory{float}, CancellationToken)"/>).
    /// </para>
    /// </summary>
    public async Task<Task<DecodeResult>> SendAsync(DecodeInput input, Memory<ushort> output, Memory<float> lse, CancellationToken cancellationToken = default)
    {
        var pending = new PendingCopy(this, DecodeOutputLengths.For(input, output.Length, lse.Length), output, lse);
        await SendAsync(input, pending, cancellationToken).ConfigureAwait(false);
        return pending.Task;
    }

    private async Task SendAsync(DecodeInput input, PendingDecode pending, CancellationToken cancellationToken)
    {
        ulong id = (ulong)Interlocked.Increment(ref _nextId);
        var request = input.ToRequest(id);
        pending.Id = id;
        _pending[id] = pending;
        if (_closed is { } closed)
        {
            _pending.TryRemove(id, out _);
            throw closed;
        }
        await _sendLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            await _call.RequestStream.WriteAsync(new Leased<DecodeRequest>(request), cancellationToken).ConfigureAwait(false);
        }
        catch (RpcException write) when (write.StatusCode == StatusCode.Cancelled && !cancellationToken.IsCancellationRequested)
        {
            _pending.TryRemove(id, out _);
            // The server ended the stream before reading it (refused it from its headers: UNAUTHENTICATED, say), and the
            // write, racing the response, failed as cancelled; the status the server sent says why.
            if (await Task.WhenAny(_reader, Task.Delay(TimeSpan.FromSeconds(1), CancellationToken.None)).ConfigureAwait(false) == _reader
                && _closed is RpcException { StatusCode: not StatusCode.Cancelled } answered)
                throw answered;
            throw;
        }
        catch
        {
            _pending.TryRemove(id, out _);
            throw;
        }
        finally
        {
            _sendLock.Release();
        }
    }

    /// <summary>
    /// Sends one step and waits for its response. Cancelling while the response is awaited cancels the task; the
    /// response, when it comes, gives its pooled buffers back (the caller never holds it to dispose it).
    /// </summary>
    public async Task<DecodeOutput> DecodeAsync(DecodeInput input, CancellationToken cancellationToken = default)
    {
        var response = await SendAsync(input, cancellationToken).ConfigureAwait(false);
        try
        {
            return await response.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            _ = response.ContinueWith(static answered => answered.Result.Dispose(), CancellationToken.None,
                TaskContinuationOptions.OnlyOnRanToCompletion | TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
            throw;
        }
    }

    /// <summary>
    /// Sends one step and waits for its outputs, written into the caller's memory as
    /// <see cref="SendAsync(DecodeInput, Memory{ushort}, Memory{float}, CancellationToken)"/> says. Cancelling
    /// <paramref name="cancellationToken"/> while the response is awaited cancels the task at once unless the response is
    /// already being copied (then the task completes with it a moment later): either way, once the task has completed
    /// nothing writes the memory. The response of a cancelled request is dropped when it comes; the stream stays open.
    /// </summary>
    public async Task<DecodeResult> DecodeAsync(DecodeInput input, Memory<ushort> output, Memory<float> lse, CancellationToken cancellationToken = default)
    {
        var pending = new PendingCopy(this, DecodeOutputLengths.For(input, output.Length, lse.Length), output, lse);
        await SendAsync(input, pending, cancellationToken).ConfigureAwait(false);
        pending.CancelOn(cancellationToken);
        return await pending.Task.ConfigureAwait(false);
    }

    private async Task ReadResponsesAsync()
    {
        Exception? failure = null;
        try
        {
            await foreach (var leased in _call.ResponseStream.ReadAllAsync().ConfigureAwait(false))
            {
                var response = leased.Message;
                if (!_pending.TryRemove(response.RequestId, out var pending))
                {
                    leased.Dispose();
                    continue;
                }
                Answer answer;
                if (response.Error is { } error)
                {
                    leased.Dispose();
                    answer = new Answer(pending, null, new RpcException(new Status((StatusCode)error.Code, error.Message)));
                }
                else
                {
                    answer = new Answer(pending, leased, null);
                }
                // The caller's code resumes on this thread, inside the completion: this loop goes on on another one first.
                await new ThreadHandOff<Answer>(static a => a.Complete(), answer);
            }
        }
        catch (Exception ex)
        {
            failure = ex;
        }
        failure ??= new RpcException(new Status(StatusCode.Unavailable, "the decode stream ended before this request was answered"));
        _closed = failure;
        // One work item each: a caller's continuation runs inline on whichever thread completes its task.
        foreach (var id in _pending.Keys)
            if (_pending.TryRemove(id, out var pending))
                ThreadPool.UnsafeQueueUserWorkItem(static a => a.Complete(), new Answer(pending, null, failure), preferLocal: false);
    }

    /// <summary>What one request's task completes with: its response (the pending request takes it over), or the request's own failure.</summary>
    private readonly record struct Answer(PendingDecode Pending, Leased<DecodeResponse>? Response, Exception? Failure)
    {
        public void Complete()
        {
            if (Response is { } response) Pending.Complete(response);
            else Pending.Fail(Failure!);
        }
    }

    /// <summary>A request sent and not yet answered. Continuations run inline: the reader hands itself off before completing one.</summary>
    private abstract class PendingDecode
    {
        public ulong Id { get; set; }

        /// <summary>Takes over <paramref name="response"/> (gives it back when it is not wanted).</summary>
        public abstract void Complete(Leased<DecodeResponse> response);

        public abstract void Fail(Exception failure);
    }

    /// <summary>A request whose task completes with the response's own pooled buffers (<see cref="DecodeOutput"/>).</summary>
    private sealed class PendingOutput : PendingDecode
    {
        private readonly TaskCompletionSource<DecodeOutput> _completion = new();

        public Task<DecodeOutput> Task => _completion.Task;

        public override void Complete(Leased<DecodeResponse> response)
        {
            var output = new DecodeOutput(response);
            if (!_completion.TrySetResult(output)) output.Dispose();
        }

        public override void Fail(Exception failure) => _completion.TrySetException(failure);
    }

    /// <summary>
    /// A request whose outputs are copied into the caller's memory. Its state moves once, from waiting to answered or
    /// to cancelled, so a cancellation never races the copy: the one that moves it first decides.
    /// </summary>
    private sealed class PendingCopy(DecodeStream owner, DecodeOutputLengths lengths, Memory<ushort> output, Memory<float> lse) : PendingDecode
    {
        private const int Waiting = 0, Answered = 1, Cancelled = 2;
        private readonly TaskCompletionSource<DecodeResult> _completion = new();
        private CancellationTokenRegistration _registration;
        private int _state;

        public Task<DecodeResult> Task => _completion.Task;

        public void CancelOn(CancellationToken cancellationToken)
        {
            if (cancellationToken.CanBeCanceled)
                _registration = cancellationToken.UnsafeRegister(static (state, token) => ((PendingCopy)state!).Cancel(token), this);
        }

        private void Cancel(CancellationToken token)
        {
            if (Interlocked.CompareExchange(ref _state, Cancelled, Waiting) != Waiting) return;
            owner._pending.TryRemove(Id, out _);
            _completion.TrySetCanceled(token);
        }

        public override void Complete(Leased<DecodeResponse> response)
        {
            try
            {
                if (Interlocked.CompareExchange(ref _state, Answered, Waiting) != Waiting) return;
                _registration.Unregister();
                DecodeResult result;
                try
                {
                    result = lengths.CopyOut(response.Message, output.Span, lse.Span);
                }
                catch (RpcException wrongSize)
                {
                    _completion.TrySetException(wrongSize);
                    return;
                }
                response.Dispose(); // the buffer goes back before the caller resumes
                _completion.TrySetResult(result);
            }
            finally
            {
                response.Dispose();
            }
        }

        public override void Fail(Exception failure)
        {
            if (Interlocked.CompareExchange(ref _state, Answered, Waiting) != Waiting) return;
            _registration.Unregister();
            _completion.TrySetException(failure);
        }
    }

    /// <summary>Ends the request side and waits for the responses still due; a second call returns at once.</summary>
    public async ValueTask DisposeAsync()
    {
        // Once only: the first call keeps the send lock (no request may follow the end), so a second one waited for it forever.
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        try
        {
            await _sendLock.WaitAsync().ConfigureAwait(false);
            await _call.RequestStream.CompleteAsync().ConfigureAwait(false);
            await _reader.ConfigureAwait(false);
        }
        catch (RpcException)
        {
            // The stream already failed; the pending requests have their errors.
        }
        finally
        {
            _call.Dispose();
        }
    }
}
