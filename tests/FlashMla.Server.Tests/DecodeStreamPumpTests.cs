using FlashMla.Contracts.V1;
using FlashMla.Contracts.Wire;
using FlashMla.Server.Services;
using Grpc.Core;

namespace FlashMla.Server.Tests;

/// <summary>The stream pump on its own: slots, completion order, and no lease left behind when writing fails.</summary>
public sealed class DecodeStreamPumpTests
{
    /// <param name="then">What the read after the last request does: null ends the stream; else it throws this, or
    /// (a TaskCanceledException) waits until the read is cancelled.</param>
    private sealed class Requests(int count, Exception? then = null) : IAsyncStreamReader<Leased<DecodeRequest>>
    {
        private int _next;

        public int Read => _next;
        public Leased<DecodeRequest> Current { get; private set; } = null!;

        public async Task<bool> MoveNext(CancellationToken cancellationToken)
        {
            if (_next == count && then is TaskCanceledException) await Task.Delay(Timeout.Infinite, cancellationToken);
            if (_next == count && then is not null) throw then;
            return await NextAsync();
        }

        private Task<bool> NextAsync()
        {
            if (_next == count) return Task.FromResult(false);
            Current = new Leased<DecodeRequest>(new DecodeRequest { RequestId = (ulong)_next++ });
            return Task.FromResult(true);
        }
    }

    private sealed class Responses(int failAfter = int.MaxValue) : IServerStreamWriter<Leased<DecodeResponse>>
    {
        public List<ulong> Written { get; } = [];
        public WriteOptions? WriteOptions { get; set; }

        public Task WriteAsync(Leased<DecodeResponse> message)
        {
            if (Written.Count == failAfter) throw new IOException("the stream broke");
            lock (Written) Written.Add(message.Message.RequestId);
            message.Dispose();
            return Task.CompletedTask;
        }
    }

    private sealed class Lease : IDisposable
    {
        public bool Disposed { get; private set; }
        public void Dispose() => Disposed = true;
    }

    [Fact]
    public async Task At_most_max_in_flight_run_at_once_and_responses_leave_in_completion_order()
    {
        var requests = new Requests(4);
        var responses = new Responses();
        var gates = Enumerable.Range(0, 4).Select(_ => new TaskCompletionSource<Leased<DecodeResponse>>(TaskCreationOptions.RunContinuationsAsynchronously)).ToArray();
        int started = 0;
        var pump = DecodeStreamPump.RunAsync(requests, responses, request =>
        {
            int id = (int)request.Message.RequestId;
            Interlocked.Increment(ref started);
            return gates[id].Task;
        }, maxInFlight: 2, CancellationToken.None);

        await Task.Delay(50);
        Assert.Equal(2, Volatile.Read(ref started)); // the third read waits for a slot
        gates[1].SetResult(new Leased<DecodeResponse>(new DecodeResponse { RequestId = 1 }));
        await WaitUntilAsync(() => Volatile.Read(ref started) == 3);
        gates[2].SetResult(new Leased<DecodeResponse>(new DecodeResponse { RequestId = 2 }));
        gates[0].SetResult(new Leased<DecodeResponse>(new DecodeResponse { RequestId = 0 }));
        gates[3].SetResult(new Leased<DecodeResponse>(new DecodeResponse { RequestId = 3 }));
        await pump.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.Equal(1ul, responses.Written[0]);
        Assert.Equal([0ul, 1ul, 2ul, 3ul], responses.Written.Order());
    }

    [Fact]
    public async Task When_writing_fails_no_response_stays_leased_no_later_request_is_served_and_the_stream_fails()
    {
        var leases = Enumerable.Range(0, 6).Select(_ => new Lease()).ToArray();
        var served = new bool[6];
        var responses = new Responses(failAfter: 1);
        var pump = DecodeStreamPump.RunAsync(new Requests(6), responses, request =>
        {
            int id = (int)request.Message.RequestId;
            served[id] = true;
            return Task.FromResult(new Leased<DecodeResponse>(new DecodeResponse { RequestId = (ulong)id }, leases[id]));
        }, maxInFlight: 8, CancellationToken.None);
        await Assert.ThrowsAsync<IOException>(() => pump.WaitAsync(TimeSpan.FromSeconds(5)));
        Assert.Single(responses.Written);
        // The response whose write failed went back; the stream broke there, so the requests read after it were not run.
        Assert.Equal([true, true, false, false, false, false], served);
        Assert.True(leases[0].Disposed && leases[1].Disposed);
    }

    [Fact]
    public async Task Responses_that_complete_while_a_write_is_under_way_wait_for_it_and_then_leave_in_completion_order()
    {
        var responses = new BlockingResponses();
        var gates = Enumerable.Range(0, 3).Select(_ => new TaskCompletionSource<Leased<DecodeResponse>>(TaskCreationOptions.RunContinuationsAsynchronously)).ToArray();
        var pump = DecodeStreamPump.RunAsync(new Requests(3), responses, request => gates[(int)request.Message.RequestId].Task,
            maxInFlight: 3, CancellationToken.None);
        gates[2].SetResult(new Leased<DecodeResponse>(new DecodeResponse { RequestId = 2 }));
        await WaitUntilAsync(() => responses.Started == 1); // the first write is under way and holds the stream
        gates[0].SetResult(new Leased<DecodeResponse>(new DecodeResponse { RequestId = 0 }));
        await Task.Delay(20);
        gates[1].SetResult(new Leased<DecodeResponse>(new DecodeResponse { RequestId = 1 }));
        await Task.Delay(50);
        Assert.Equal(1, responses.Started); // never two writes at once
        responses.Release.SetResult();
        await pump.WaitAsync(TimeSpan.FromSeconds(5));
        Assert.Equal([2ul, 0ul, 1ul], responses.Written);
    }

    /// <summary>A response stream whose first write blocks until released, and which fails if two writes overlap.</summary>
    private sealed class BlockingResponses : IServerStreamWriter<Leased<DecodeResponse>>
    {
        private int _writing;
        public List<ulong> Written { get; } = [];
        public int Started;
        public TaskCompletionSource Release { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public WriteOptions? WriteOptions { get; set; }

        public async Task WriteAsync(Leased<DecodeResponse> message)
        {
            if (Interlocked.Exchange(ref _writing, 1) != 0) throw new InvalidOperationException("two writes at once");
            Interlocked.Increment(ref Started);
            await Release.Task;
            Written.Add(message.Message.RequestId);
            message.Dispose();
            Volatile.Write(ref _writing, 0);
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Requests_read_before_the_reading_stops_are_answered_before_the_stream_ends_with_unavailable(bool shutdown)
    {
        // shutdown: the stop-reading token fires while the pump waits for a fourth request; else the fourth read
        // fails as the data-plane listener's does on shutdown.
        var requests = new Requests(3, shutdown ? new TaskCanceledException() : new RpcException(new Status(StatusCode.Unavailable, "shutting down")));
        var responses = new Responses();
        using var stop = new CancellationTokenSource();
        var pump = DecodeStreamPump.RunAsync(requests, responses, async request =>
        {
            await Task.Delay(200); // still computing when the reading stops
            return new Leased<DecodeResponse>(new DecodeResponse { RequestId = request.Message.RequestId });
        }, maxInFlight: 8, CancellationToken.None, stop.Token);
        await WaitUntilAsync(() => requests.Read == 3);
        stop.Cancel();
        var error = await Assert.ThrowsAsync<RpcException>(() => pump.WaitAsync(TimeSpan.FromSeconds(5)));
        Assert.Equal(StatusCode.Unavailable, error.StatusCode);
        Assert.Equal([0ul, 1ul, 2ul], responses.Written.Order());
    }

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        for (int i = 0; i < 500 && !condition(); i++) await Task.Delay(10);
        Assert.True(condition());
    }
}
