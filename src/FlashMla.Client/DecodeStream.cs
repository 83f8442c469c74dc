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
    private readonly ConcurrentDictionary<ulong, TaskCompletionSource<DecodeOutput>> _pending = new();
    private readonly SemaphoreSlim _sendLock = new(1, 1);
    private readonly Task _reader;
    private long _nextId;
    private volatile Exception? _closed;

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
        ulong id = (ulong)Interlocked.Increment(ref _nextId);
        var request = input.ToRequest(id);
        // Continuations inline: the reader hands itself off before completing it (ReadResponsesAsync).
        var completion = new TaskCompletionSource<DecodeOutput>();
        _pending[id] = completion;
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
        return completion.Task;
    }

    /// <summary>Sends one step and waits for its response.</summary>
    public async Task<DecodeOutput> DecodeAsync(DecodeInput input, CancellationToken cancellationToken = default)
    {
        var response = await SendAsync(input, cancellationToken).ConfigureAwait(false);
        return await response.WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    private async Task ReadResponsesAsync()
    {
        Exception? failure = null;
        try
        {
            await foreach (var leased in _call.ResponseStream.ReadAllAsync().ConfigureAwait(false))
            {
                var response = leased.Message;
                if (!_pending.TryRemove(response.RequestId, out var completion))
                {
                    leased.Dispose();
                    continue;
                }
                Answer answer;
                if (response.Error is { } error)
                {
                    leased.Dispose();
                    answer = new Answer(completion, null, new RpcException(new Status((StatusCode)error.Code, error.Message)));
                }
                else
                {
                    answer = new Answer(completion, new DecodeOutput(leased), null);
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
            if (_pending.TryRemove(id, out var completion))
                ThreadPool.UnsafeQueueUserWorkItem(static a => a.Complete(), new Answer(completion, null, failure), preferLocal: false);
    }

    /// <summary>What one request's task completes with: its output, or the request's own failure.</summary>
    private readonly record struct Answer(TaskCompletionSource<DecodeOutput> Completion, DecodeOutput? Output, Exception? Failure)
    {
        public void Complete()
        {
            if (Output is { } output)
            {
                if (!Completion.TrySetResult(output)) output.Dispose();
            }
            else
            {
                Completion.TrySetException(Failure!);
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
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
