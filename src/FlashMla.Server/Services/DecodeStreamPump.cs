using System.Diagnostics;
using System.Runtime.ExceptionServices;
using FlashMla.Contracts.V1;
using FlashMla.Contracts.Wire;
using Grpc.Core;

namespace FlashMla.Server.Services;

/// <summary>
/// Runs one Decode stream: reads its requests, keeps up to <c>maxInFlight</c> of them in the scheduler at once
/// (the next read waits for a slot), and writes each response as soon as its request completes, from the task
/// that awaited it (one write at a time, in completion order, each carrying its request id): no writer task to
/// wake in between. Once a write fails nothing more is sent, later responses go back unsent and the stream ends
/// with that failure; whatever ends the stream, no response's pooled buffers stay leased.
/// </summary>
internal static class DecodeStreamPump
{
    /// <summary>What an open stream ends with when shutdown stops it reading (the requests it had read were answered).</summary>
    public static readonly Status ShuttingDown = new(StatusCode.Unavailable,
        "the server is shutting down: requests on this stream that got no response were not executed and may be sent elsewhere");

    /// <param name="serve">Turns one request into its response (an error in the response, never an exception) and disposes the request.</param>
    /// <param name="stopReading">Shutdown: no more requests are read; those read are answered, then the stream ends with
    /// <see cref="ShuttingDown"/>. A failed read (the request stream broke, or the data-plane listener ended it) likewise
    /// answers what was read before the failure goes on.</param>
    public static async Task RunAsync(IAsyncStreamReader<Leased<DecodeRequest>> requests, IServerStreamWriter<Leased<DecodeResponse>> responses,
        Func<Leased<DecodeRequest>, Task<Leased<DecodeResponse>>> serve, int maxInFlight, CancellationToken cancellationToken,
        CancellationToken stopReading = default)
    {
        using var slots = new SemaphoreSlim(maxInFlight, maxInFlight);
        using var writing = new SemaphoreSlim(1, 1); // the stream's writers take one write at a time
        Exception? writeFailure = null;
        var inFlight = new List<Task>();
        using var reading = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, stopReading);
        Exception? readFailure = null;
        try
        {
            while (await requests.MoveNext(reading.Token))
            {
                var request = requests.Current;
                try
                {
                    await slots.WaitAsync(cancellationToken);
                }
                catch
                {
                    request.Dispose();
                    throw;
                }
                if (Volatile.Read(ref writeFailure) is not null)
                {
                    slots.Release();
                    request.Dispose();
                    break;
                }
                inFlight.RemoveAll(t => t.IsCompleted);
                inFlight.Add(ServeOneAsync(request));
            }
        }
        catch (Exception ex) when (!cancellationToken.IsCancellationRequested)
        {
            // Whatever stopped the reading, the requests already read are answered first (they may have been
            // executed; an answer is owed), and the stream ends after their responses.
            readFailure = ex is OperationCanceledException && stopReading.IsCancellationRequested ? new RpcException(ShuttingDown) : ex;
        }
        finally
        {
            // Every request taken is answered (or given back) before the stream ends, even when reading failed.
            await Task.WhenAll(inFlight).ConfigureAwait(false);
        }
        // A failed write ends the stream first: nothing more could be sent.
        if (Volatile.Read(ref writeFailure) is { } failure) ExceptionDispatchInfo.Throw(failure);
        if (readFailure is not null) ExceptionDispatchInfo.Throw(readFailure);

        async Task ServeOneAsync(Leased<DecodeRequest> request)
        {
            try
            {
                var response = await serve(request);
                long readyAt = Stopwatch.GetTimestamp();
                try
                {
                    await writing.WaitAsync(cancellationToken);
                    try
                    {
                        if (Volatile.Read(ref writeFailure) is not null)
                        {
                            response.Dispose();
                            return;
                        }
                        ResponseTimings.Waited(response.Message, readyAt);
                        await responses.WriteAsync(response, cancellationToken);
                    }
                    finally
                    {
                        writing.Release();
                    }
                }
                catch (Exception ex)
                {
                    Interlocked.CompareExchange(ref writeFailure, ex, null);
                    response.Dispose(); // a write that failed before serializing never gave its buffers back; twice is harmless
                }
            }
            finally
            {
                slots.Release();
            }
        }
    }
}
