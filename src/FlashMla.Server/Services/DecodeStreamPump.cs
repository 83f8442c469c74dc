using System.Threading.Channels;
using FlashMla.Contracts.V1;
using FlashMla.Contracts.Wire;
using Grpc.Core;

namespace FlashMla.Server.Services;

/// <summary>
/// Runs one Decode stream: reads its requests, keeps up to <c>maxInFlight</c> of them in the scheduler at once
/// (the next read waits for a slot), and writes each response through one writer as soon as its request
/// completes, so responses leave in completion order, each carrying its request id. Whatever ends the
/// stream, no response's pooled buffers stay leased.
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
        var completed = Channel.CreateBounded<Leased<DecodeResponse>>(new BoundedChannelOptions(maxInFlight) { SingleReader = true });
        var writer = WriteAllAsync(completed, responses, cancellationToken);
        var inFlight = new List<Task>();
        using var reading = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, stopReading);
        Exception? readFailure = null;
        try
        {
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
            await Task.WhenAll(inFlight);
        }
        finally
        {
            completed.Writer.TryComplete();
        }
        await writer;
        if (readFailure is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(readFailure);

        async Task ServeOneAsync(Leased<DecodeRequest> request)
        {
            var response = await serve(request);
            try
            {
                await completed.Writer.WriteAsync(response, cancellationToken);
            }
            catch
            {
                response.Dispose();
                throw;
            }
            finally
            {
                slots.Release();
            }
        }
    }

    private static async Task WriteAllAsync(Channel<Leased<DecodeResponse>> completed, IServerStreamWriter<Leased<DecodeResponse>> responses,
        CancellationToken cancellationToken)
    {
        await Task.Yield(); // the writer runs beside the reading loop, not inline in it
        try
        {
            await foreach (var response in completed.Reader.ReadAllAsync(CancellationToken.None))
            {
                try
                {
                    await responses.WriteAsync(response, cancellationToken);
                }
                catch
                {
                    response.Dispose(); // a write that failed before serializing never gave its buffers back
                    throw;
                }
            }
        }
        catch (Exception ex)
        {
            // Nothing more can be sent: later responses are refused (their senders give them back) and the
            // queued ones go back to the pool now, so no batch's output buffers stay leased.
            completed.Writer.TryComplete(ex);
            while (completed.Reader.TryRead(out var rest)) rest.Dispose();
            throw;
        }
    }
}
