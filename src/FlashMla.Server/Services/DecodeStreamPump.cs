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
    /// <param name="serve">Turns one request into its response (an error in the response, never an exception) and disposes the request.</param>
    public static async Task RunAsync(IAsyncStreamReader<Leased<DecodeRequest>> requests, IServerStreamWriter<Leased<DecodeResponse>> responses,
        Func<Leased<DecodeRequest>, Task<Leased<DecodeResponse>>> serve, int maxInFlight, CancellationToken cancellationToken)
    {
        using var slots = new SemaphoreSlim(maxInFlight, maxInFlight);
        using var writing = new SemaphoreSlim(1, 1); // the stream's writers take one write at a time
        Exception? writeFailure = null;
        var inFlight = new List<Task>();
        try
        {
            await foreach (var request in requests.ReadAllAsync(cancellationToken))
            {
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
        finally
        {
            // Every request taken is answered (or given back) before the stream ends, even when reading failed.
            await Task.WhenAll(inFlight).ConfigureAwait(false);
        }
        if (Volatile.Read(ref writeFailure) is { } failure) ExceptionDispatchInfo.Throw(failure);

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
