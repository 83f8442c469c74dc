using System.Collections.Concurrent;
using FlashMla.Contracts.V1;
using Grpc.Core;

namespace FlashMla.Client;

/// <summary>
/// One bidirectional Decode stream with several requests in flight: <see cref="DecodeAsync"/> sends at once
/// and completes when the response with its id arrives. A request's own failure throws
/// <see cref="RpcException"/> from its task and leaves the stream open.
/// </summary>
public sealed class DecodeStream : IAsyncDisposable
{
    private readonly AsyncDuplexStreamingCall<DecodeRequest, DecodeResponse> _call;
    private readonly ConcurrentDictionary<ulong, TaskCompletionSource<DecodeOutput>> _pending = new();
    private readonly SemaphoreSlim _sendLock = new(1, 1);
    private readonly Task _reader;
    private long _nextId;
    private volatile Exception? _closed;

    internal DecodeStream(AsyncDuplexStreamingCall<DecodeRequest, DecodeResponse> call)
    {
        _call = call;
        _reader = Task.Run(ReadResponsesAsync);
    }

    public int InFlight => _pending.Count;

    public async Task<DecodeOutput> DecodeAsync(DecodeInput input, CancellationToken cancellationToken = default)
    {
        ulong id = (ulong)Interlocked.Increment(ref _nextId);
        var request = input.ToRequest(id);
        var completion = new TaskCompletionSource<DecodeOutput>(TaskCreationOptions.RunContinuationsAsynchronously);
        _pending[id] = completion;
        if (_closed is { } closed)
        {
            _pending.TryRemove(id, out _);
            throw closed;
        }
        await _sendLock.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            await _call.RequestStream.WriteAsync(request, cancellationToken).ConfigureAwait(false);
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
        return await completion.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
    }

    private async Task ReadResponsesAsync()
    {
        Exception? failure = null;
        try
        {
            await foreach (var response in _call.ResponseStream.ReadAllAsync().ConfigureAwait(false))
            {
                if (!_pending.TryRemove(response.RequestId, out var completion)) continue;
                if (response.Error is { } error)
                    completion.TrySetException(new RpcException(new Status((StatusCode)error.Code, error.Message)));
                else
                    completion.TrySetResult(new DecodeOutput(response));
            }
        }
        catch (Exception ex)
        {
            failure = ex;
        }
        failure ??= new RpcException(new Status(StatusCode.Unavailable, "the decode stream ended before this request was answered"));
        _closed = failure;
        foreach (var id in _pending.Keys)
            if (_pending.TryRemove(id, out var completion)) completion.TrySetException(failure);
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
