using System.Diagnostics;
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
    /// <param name="serve">Turns one request into its response (an error in the response, never an exception) and disposes the request.</param>
    public static async Task RunAsync(IAsyncStreamReader<Leased<DecodeRequest>> requests, IServerStreamWriter<Leased<DecodeResponse>> responses,
        Func<Leased<DecodeRequest>, Task<Leased<DecodeResponse>>> serve, int maxInFlight, CancellationToken cancellationToken)
    {
        using var slots = new SemaphoreSlim(maxInFlight, maxInFlight);
        var completed = Channel.CreateBounded<(Leased<DecodeResponse> Response, long ReadyAt)>(new BoundedChannelOptions(maxInFlight) { SingleReader = true });
        var writer = WriteAllAsync(completed, responses, cancellationToken);
        var inFlight = new List<Task>();
        try
        {
            await foreach (var request in requests.ReadAllAsync(cancellationToken))
            {
                await slots.WaitAsync(cancellationToken);
                inFlight.RemoveAll(t => t.IsCompleted);
                inFlight.Add(ServeOneAsync(request));
            }
            await Task.WhenAll(inFlight);
        }
        finally
        {
            completed.Writer.TryComplete();
        }
        await writer;

        async Task ServeOneAsync(Leased<DecodeRequest> request)
        {
            var response = await serve(request);
            try
            {
                await completed.Writer.WriteAsync((response, Stopwatch.GetTimestamp()), cancellationToken);
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

    private static async Task WriteAllAsync(Channel<(Leased<DecodeResponse> Response, long ReadyAt)> completed, IServerStreamWriter<Leased<DecodeResponse>> responses,
        CancellationToken cancellationToken)
    {
        await Task.Yield(); // the writer runs beside the reading loop, not inline in it
        try
        {
            await foreach (var (response, readyAt) in completed.Reader.ReadAllAsync(CancellationToken.None))
            {
                try
                {
                    ResponseTimings.Waited(response.Message, readyAt);
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
            while (completed.Reader.TryRead(out var rest)) rest.Response.Dispose();
            throw;
        }
    }
}
