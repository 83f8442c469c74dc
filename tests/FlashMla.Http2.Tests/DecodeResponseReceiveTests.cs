using System.Buffers.Binary;
using System.Runtime.InteropServices;
using FlashMla.Client;
using FlashMla.Client.Transport;
using FlashMla.Contracts.V1;
using Google.Protobuf;
using Grpc.Core;

namespace FlashMla.Http2.Tests;

/// <summary>
/// Decode responses reach the caller as the server sent them, byte for byte, however the server cuts them into
/// frames (a prefix split over frames, two messages in one frame, megabyte frames), on unary calls and streams,
/// into the response's pooled buffer or into the caller's memory; a response cut short, one declared over the
/// limit, one of the wrong size, and a cancellation mid-response each end the call with a clear status and give
/// every pooled buffer back.
/// </summary>
public sealed class DecodeResponseReceiveTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(20);

    private static DecodeInput Step(int batch, int heads, int queryTokens = 1) =>
        new(0, [.. Enumerable.Range(1, batch).Select(i => (ulong)i)], queryTokens, heads, new ushort[576]); // q's size is the server's to check

    private static FlashMlaClient Client(string address, CountingPool pool, int maxMessageBytes = 256 << 20, Http2TransportCounters? counters = null) =>
        new(address, new FlashMlaClientOptions
        {
            BufferPool = pool,
            MaxMessageBytes = maxMessageBytes,
            Counters = counters,
            LargeFrames = new LargeFrameHttp2Options { KeepAlivePingDelay = Timeout.InfiniteTimeSpan },
        });

    /// <summary>Frames of sizes drawn from a seeded mix: 1 byte (splits a prefix), a few bytes, tens of KiB, a MiB.</summary>
    private static Func<byte[], IEnumerable<ArraySegment<byte>>> RandomCuts(int seed)
    {
        var random = new Random(seed);
        int[] sizes = [1, 3, 7, 100, 4096, 16384, 65536, 300_000, 1 << 20];
        return body => Cuts(body, () => sizes[random.Next(sizes.Length)]);
    }

    private static IEnumerable<ArraySegment<byte>> Cuts(byte[] body, Func<int> next)
    {
        for (int at = 0; at < body.Length;)
        {
            int n = Math.Min(next(), body.Length - at);
            yield return new ArraySegment<byte>(body, at, n);
            at += n;
        }
    }

    private static async Task<(ScriptedConnection Connection, Task Serving)> ServeAsync(ScriptedHttp2Server server, Func<ScriptedConnection, ScriptedDecodeServer> script,
        CancellationToken until)
    {
        var connection = await server.AcceptAsync();
        await connection.HandshakeAsync((Http2Setting.MaxFrameSize, 1 << 20));
        var decoder = script(connection);
        return (connection, Task.Run(() => decoder.RunAsync(until)));
    }

    private static void AssertSame(DecodeResponse sent, DecodeOutput received)
    {
        Assert.Equal(sent.RequestId, received.RequestId);
        Assert.True(sent.Out.Data.Span.SequenceEqual(MemoryMarshal.AsBytes(received.Out)), "out differs from what the server sent");
        Assert.True(sent.Lse.Data.Span.SequenceEqual(MemoryMarshal.AsBytes(received.Lse)), "lse differs from what the server sent");
        Assert.Equal(sent.Timings.ComputeUs, received.Timings.ComputeUs);
    }

    private static void AssertSame(DecodeResponse sent, DecodeResult result, ushort[] output, float[] lse)
    {
        Assert.Equal(sent.RequestId, result.RequestId);
        Assert.Equal(sent.Out.Data.Length / 2, result.OutLength);
        Assert.Equal(sent.Lse.Data.Length / 4, result.LseLength);
        Assert.True(sent.Out.Data.Span.SequenceEqual(MemoryMarshal.AsBytes(output.AsSpan(0, result.OutLength))), "out differs from what the server sent");
        Assert.True(sent.Lse.Data.Span.SequenceEqual(MemoryMarshal.AsBytes(lse.AsSpan(0, result.LseLength))), "lse differs from what the server sent");
        Assert.All(output[result.OutLength..], v => Assert.Equal(Sentinel, v)); // nothing written past the outputs
        Assert.Equal(sent.Timings.ComputeUs, result.Timings.ComputeUs);
    }

    private const ushort Sentinel = 0xBEEF;

    private static ushort[] Sentinels(int length)
    {
        var values = new ushort[length];
        values.AsSpan().Fill(Sentinel);
        return values;
    }

    [Fact]
    public async Task Unary_outputs_are_byte_for_byte_what_the_server_sent_at_every_size_and_cut()
    {
        using var server = new ScriptedHttp2Server();
        using var stop = new CancellationTokenSource();
        var pool = new CountingPool();
        using var client = Client(server.Address, pool);
        (int B, int H, int Sq)[] shapes = [(1, 1, 1), (1, 16, 1), (3, 7, 2), (32, 16, 1), (5, 128, 2), (64, 128, 1)]; // out 1 KiB .. 8 MiB
        ScriptedDecodeServer? script = null;
        int salt = 0;
        var first = client.DecodeOnceAsync(Step(1, 1));
        var (connection, serving) = await ServeAsync(server, c => script = new ScriptedDecodeServer(c)
        {
            Respond = request => ScriptedDecodeServer.RandomAnswer(request, Interlocked.Increment(ref salt)),
            Cut = RandomCuts(11),
        }, stop.Token);
        using (var answer = await first.WaitAsync(Bound)) AssertSame(script!.Sent[^1].Response, answer);

        for (int round = 0; round < 3; round++)
        {
            foreach (var (b, h, sq) in shapes)
            {
                using (var pooled = await client.DecodeOnceAsync(Step(b, h, sq)).WaitAsync(Bound))
                    AssertSame(script.Sent[^1].Response, pooled);
                var output = Sentinels(b * sq * h * 512 + 3);
                var lse = new float[b * h * sq + 1];
                var result = await client.DecodeOnceAsync(Step(b, h, sq), output, lse).WaitAsync(Bound);
                AssertSame(script.Sent[^1].Response, result, output, lse);
            }
        }
        await pool.AllReturnedAsync();
        // Each response was received into one array of the pool, exactly its message's size: no other buffer of its size.
        Assert.Equal(script.Sent.Sum(s => (long)s.Response.CalculateSize()), pool.RequestedBytes);
        Assert.Equal(script.Sent.Count, pool.Rents);
        stop.Cancel();
        connection.Dispose();
    }

    [Theory]
    [InlineData(1)] // each answer in frames of its own
    [InlineData(3)] // three answers packed together: frames carry the end of one message and the start of the next
    public async Task Stream_responses_split_or_packed_across_frames_arrive_whole_and_in_order(int coalesce)
    {
        using var server = new ScriptedHttp2Server();
        using var stop = new CancellationTokenSource();
        var pool = new CountingPool();
        using var client = Client(server.Address, pool);
        await using var stream = client.OpenDecodeStream();
        ScriptedDecodeServer? script = null;
        var firstSend = stream.SendAsync(Step(2, 16));
        var (connection, serving) = await ServeAsync(server, c => script = new ScriptedDecodeServer(c)
        {
            Respond = request => ScriptedDecodeServer.RandomAnswer(request),
            Cut = RandomCuts(coalesce),
            Coalesce = coalesce,
        }, stop.Token);
        var pending = new List<(DecodeInput Input, Task<DecodeOutput>? Pooled, Task<DecodeResult>? Copied, ushort[]? Out, float[]? Lse)>
            { (Step(2, 16), await firstSend.WaitAsync(Bound), null, null, null) };
        var random = new Random(5);
        for (int i = 1; i < 30; i++)
        {
            // Up to 1 MiB each, all of them within the stream's 16 MiB window (the script does not wait for credit).
            var input = Step(random.Next(1, 9), random.Next(1, 65), random.Next(1, 3));
            if (i % 2 == 0)
            {
                pending.Add((input, await stream.SendAsync(input).WaitAsync(Bound), null, null, null));
            }
            else
            {
                var output = Sentinels(input.SequenceIds.Count * input.QueryTokens * input.Heads * 512 + 5);
                var lse = new float[input.SequenceIds.Count * input.Heads * input.QueryTokens];
                pending.Add((input, null, await stream.SendAsync(input, output, lse).WaitAsync(Bound), output, lse));
            }
        }
        // Ends the request side: the script flushes what it holds back, then its trailers.
        await stream.DisposeAsync().AsTask().WaitAsync(Bound);
        for (int i = 0; i < pending.Count; i++)
        {
            var sent = script!.Sent.Single(s => s.Response.RequestId == (ulong)(i + 1)).Response;
            if (pending[i].Pooled is { } pooled)
            {
                using var output = await pooled.WaitAsync(Bound);
                AssertSame(sent, output);
            }
            else
            {
                AssertSame(sent, await pending[i].Copied!.WaitAsync(Bound), pending[i].Out!, pending[i].Lse!);
            }
        }
        await pool.AllReturnedAsync();
        stop.Cancel();
        connection.Dispose();
    }

    [Fact]
    public async Task Concurrent_streams_on_one_connection_each_get_their_own_bytes()
    {
        using var server = new ScriptedHttp2Server();
        using var stop = new CancellationTokenSource();
        var pool = new CountingPool();
        using var client = Client(server.Address, pool);
        var streams = Enumerable.Range(0, 4).Select(_ => client.OpenDecodeStream()).ToArray();
        ScriptedDecodeServer? script = null;
        var opening = streams[0].SendAsync(Step(1, 1));
        var (connection, serving) = await ServeAsync(server, c => script = new ScriptedDecodeServer(c)
        {
            Respond = request => ScriptedDecodeServer.RandomAnswer(request, salt: (int)request.HQ), // streams reuse request ids: the heads tell them apart
            Cut = RandomCuts(3),
        }, stop.Token);
        (await (await opening.WaitAsync(Bound)).WaitAsync(Bound)).Dispose();

        var workers = streams.Select((stream, k) => Task.Run(async () =>
        {
            int heads = 10 + k; // each stream its own shape, so its answers are recognisably its own
            for (int i = 0; i < 12; i++)
            {
                var input = Step(8 + i, heads);
                var output = Sentinels(input.SequenceIds.Count * heads * 512);
                var lse = new float[input.SequenceIds.Count * heads];
                var result = await stream.DecodeAsync(input, output, lse);
                var expected = ScriptedDecodeServer.RandomAnswer(new DecodeRequest { RequestId = result.RequestId, SequenceIds = { input.SequenceIds }, SQ = 1, HQ = (uint)heads },
                    salt: heads);
                AssertSame(expected, result, output, lse);
            }
        })).ToArray();
        await Task.WhenAll(workers).WaitAsync(Bound * 2);
        foreach (var stream in streams) await stream.DisposeAsync();
        await pool.AllReturnedAsync();
        stop.Cancel();
        connection.Dispose();
    }

    /// <summary>A server that sends the response headers and half of a large answer, then waits.</summary>
    private static async Task<(ScriptedConnection Connection, int StreamId, byte[] Body)> HalfAnswerAsync(ScriptedHttp2Server server, int heads, int batch)
    {
        var connection = await server.AcceptAsync();
        await connection.HandshakeAsync((Http2Setting.MaxFrameSize, 1 << 20));
        var (headers, _) = await connection.ReadFrameAsync(Http2FrameType.Headers);
        await connection.WriteAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, headers.StreamId, ScriptedDecodeServer.ResponseHeaders);
        var request = new DecodeRequest { RequestId = 1, SequenceIds = { Enumerable.Range(1, batch).Select(i => (ulong)i) }, SQ = 1, HQ = (uint)heads };
        var body = ScriptedDecodeServer.Body(ScriptedDecodeServer.RandomAnswer(request).ToByteArray());
        await connection.WriteAsync(Http2FrameType.Data, Http2FrameFlags.None, headers.StreamId, body[..(body.Length / 2)]);
        return (connection, headers.StreamId, body);
    }

    /// <summary>The call's connection accepted and handshaken, its request's HEADERS read and the response's sent.</summary>
    private static async Task<(ScriptedConnection Connection, Http2FrameHeader Headers)> ResponseStartedAsync(ScriptedHttp2Server server)
    {
        var connection = await server.AcceptAsync();
        await connection.HandshakeAsync();
        var (headers, _) = await connection.ReadFrameAsync(Http2FrameType.Headers);
        await connection.WriteAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, headers.StreamId, ScriptedDecodeServer.ResponseHeaders);
        return (connection, headers);
    }

    private static async Task WaitUntilAsync(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow + Bound;
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "the condition did not come true in time");
            await Task.Delay(5);
        }
    }

    private static async Task<int> ResetOfAsync(ScriptedConnection connection)
    {
        var (reset, payload) = await connection.ReadFrameAsync(Http2FrameType.RstStream);
        Assert.Equal((uint)Http2ErrorCode.Cancel, BinaryPrimitives.ReadUInt32BigEndian(payload));
        return reset.StreamId;
    }

    [Fact]
    public async Task Cancelling_a_unary_call_mid_response_fails_it_cancelled_resets_the_stream_and_writes_nothing()
    {
        using var server = new ScriptedHttp2Server();
        var pool = new CountingPool();
        using var client = Client(server.Address, pool);
        using var cancel = new CancellationTokenSource();
        var output = Sentinels(16 * 64 * 512);
        var lse = new float[16 * 64];
        var call = client.DecodeOnceAsync(Step(16, 64), output, lse, cancel.Token);
        var (connection, id, body) = await HalfAnswerAsync(server, 64, 16); // out 1 MiB: half of it in one frame
        using (connection)
        {
            await WaitUntilAsync(() => pool.Rents > 0); // the message's array is out, half filled
            cancel.Cancel();
            var error = await Assert.ThrowsAsync<RpcException>(() => call.WaitAsync(Bound));
            Assert.Equal(StatusCode.Cancelled, error.StatusCode);
            Assert.Equal(id, await ResetOfAsync(connection));
            await connection.WriteAsync(Http2FrameType.Data, Http2FrameFlags.None, id, body[(body.Length / 2)..]); // the rest, too late: discarded
            await pool.AllReturnedAsync();
            Assert.All(output, v => Assert.Equal(Sentinel, v));
        }
    }

    [Fact]
    public async Task Cancelling_a_stream_request_mid_response_cancels_its_task_drops_the_late_answer_and_keeps_the_stream()
    {
        using var server = new ScriptedHttp2Server();
        var pool = new CountingPool();
        using var client = Client(server.Address, pool);
        await using var stream = client.OpenDecodeStream();
        using var cancel = new CancellationTokenSource();
        var output = Sentinels(16 * 64 * 512);
        var lse = new float[16 * 64];
        var call = stream.DecodeAsync(Step(16, 64), output, lse, cancel.Token);
        var (connection, id, body) = await HalfAnswerAsync(server, 64, 16);
        using (connection)
        {
            await WaitUntilAsync(() => pool.Rents > 0);
            cancel.Cancel();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => call.WaitAsync(Bound));
            await connection.WriteAsync(Http2FrameType.Data, Http2FrameFlags.None, id, body[(body.Length / 2)..]); // the answer completes after all
            await WaitUntilAsync(() => pool.Outstanding == 0); // received whole, then dropped
            Assert.All(output, v => Assert.Equal(Sentinel, v)); // never written: the task completed first

            // The stream goes on: the next request's answer arrives.
            var script = new ScriptedDecodeServer(connection) { Respond = request => ScriptedDecodeServer.RandomAnswer(request) };
            script.Adopt(id);
            using var stop = new CancellationTokenSource();
            var serving = Task.Run(() => script.RunAsync(stop.Token));
            var next = Sentinels(4 * 16 * 512);
            var result = await stream.DecodeAsync(Step(4, 16), next, new float[64]).WaitAsync(Bound);
            Assert.Equal(2ul, result.RequestId);
            Assert.True(script.Sent[^1].Response.Out.Data.Span.SequenceEqual(MemoryMarshal.AsBytes(next.AsSpan())));
            stop.Cancel();
        }
    }

    [Fact]
    public async Task The_late_answer_of_a_cancelled_pooled_stream_request_goes_back_to_the_pool()
    {
        using var server = new ScriptedHttp2Server();
        var pool = new CountingPool();
        using var client = Client(server.Address, pool);
        await using var stream = client.OpenDecodeStream();
        using var cancel = new CancellationTokenSource();
        var call = stream.DecodeAsync(Step(16, 64), cancel.Token); // the pooled form: its task would own the DecodeOutput
        var (connection, id, body) = await HalfAnswerAsync(server, 64, 16);
        using (connection)
        {
            await WaitUntilAsync(() => pool.Rents > 0);
            cancel.Cancel();
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => call.WaitAsync(Bound));
            await connection.WriteAsync(Http2FrameType.Data, Http2FrameFlags.None, id, body[(body.Length / 2)..]);
            // Nobody can dispose the answer the cancelled caller never saw: the stream must (before, it went to the GC).
            await WaitUntilAsync(() => pool.Outstanding == 0);
        }
    }

    [Fact]
    public async Task A_response_that_ends_inside_a_message_fails_internal_and_gives_the_buffer_back()
    {
        using var server = new ScriptedHttp2Server();
        var pool = new CountingPool();
        using var client = Client(server.Address, pool);
        var call = client.DecodeOnceAsync(Step(8, 16));
        var (connection, id, _) = await HalfAnswerAsync(server, 16, 8);
        using (connection)
        {
            await connection.WriteAsync(Http2FrameType.Data, Http2FrameFlags.EndStream, id, []); // the body ends half way through the message
            var error = await Assert.ThrowsAsync<RpcException>(() => call.WaitAsync(Bound));
            Assert.Equal(StatusCode.Internal, error.StatusCode);
            Assert.Contains("ended inside a message", error.Status.Detail);
            await pool.AllReturnedAsync();
        }
    }

    [Fact]
    public async Task A_prefix_cut_short_at_the_end_of_the_body_fails_internal()
    {
        using var server = new ScriptedHttp2Server();
        var pool = new CountingPool();
        using var client = Client(server.Address, pool);
        var call = client.DecodeOnceAsync(Step(1, 1));
        var (connection, headers) = await ResponseStartedAsync(server);
        using var owned = connection;
        await connection.WriteAsync(Http2FrameType.Data, Http2FrameFlags.EndStream, headers.StreamId, [0, 0, 0]);
        var error = await Assert.ThrowsAsync<RpcException>(() => call.WaitAsync(Bound));
        Assert.Equal(StatusCode.Internal, error.StatusCode);
        Assert.Contains("prefix", error.Status.Detail);
        Assert.Equal(0, pool.Rents);
    }

    [Fact]
    public async Task A_message_declared_over_the_limit_fails_resource_exhausted_before_anything_is_rented_and_resets_the_stream()
    {
        using var server = new ScriptedHttp2Server();
        var pool = new CountingPool();
        using var client = Client(server.Address, pool, maxMessageBytes: 1 << 20);
        var call = client.DecodeOnceAsync(Step(1, 1));
        var (connection, headers) = await ResponseStartedAsync(server);
        using var owned = connection;
        var prefix = new byte[5 + 1000];
        BinaryPrimitives.WriteUInt32BigEndian(prefix.AsSpan(1), (1 << 20) + 1);
        await connection.WriteAsync(Http2FrameType.Data, Http2FrameFlags.None, headers.StreamId, prefix);
        var error = await Assert.ThrowsAsync<RpcException>(() => call.WaitAsync(Bound));
        Assert.Equal(StatusCode.ResourceExhausted, error.StatusCode);
        Assert.Contains($"{(1 << 20) + 1} > {1 << 20}", error.Status.Detail);
        Assert.Equal(headers.StreamId, await ResetOfAsync(connection)); // the server is told to stop sending
        Assert.Equal(0, pool.Rents);
    }

    [Fact]
    public async Task A_compressed_message_the_client_never_asked_for_fails_internal()
    {
        using var server = new ScriptedHttp2Server();
        var pool = new CountingPool();
        using var client = Client(server.Address, pool);
        var call = client.DecodeOnceAsync(Step(1, 1));
        var (connection, headers) = await ResponseStartedAsync(server);
        using var owned = connection;
        await connection.WriteAsync(Http2FrameType.Data, Http2FrameFlags.None, headers.StreamId, [1, 0, 0, 0, 2, 8, 1]);
        var error = await Assert.ThrowsAsync<RpcException>(() => call.WaitAsync(Bound));
        Assert.Equal(StatusCode.Internal, error.StatusCode);
        Assert.Contains("compressed", error.Status.Detail);
        Assert.Equal(0, pool.Rents);
    }

    [Theory]
    [InlineData(-2)] // out two bytes short
    [InlineData(2)] // out two bytes over
    public async Task An_answer_whose_out_is_not_the_steps_size_fails_internal_and_writes_nothing_into_the_callers_memory(int outBytesDelta)
    {
        using var server = new ScriptedHttp2Server();
        using var stop = new CancellationTokenSource();
        var pool = new CountingPool();
        using var client = Client(server.Address, pool);
        var output = Sentinels(4 * 16 * 512 + 8);
        var call = client.DecodeOnceAsync(Step(4, 16), output, new float[64]);
        var (connection, serving) = await ServeAsync(server, c => new ScriptedDecodeServer(c)
            { Respond = request => ScriptedDecodeServer.RandomAnswer(request, outBytesDelta: outBytesDelta) }, stop.Token);
        var error = await Assert.ThrowsAsync<RpcException>(() => call.WaitAsync(Bound));
        Assert.Equal(StatusCode.Internal, error.StatusCode);
        Assert.Contains($"is {4 * 16 * 512 * 2} bytes", error.Status.Detail);
        Assert.All(output, v => Assert.Equal(Sentinel, v));

        // The same on a stream, which stays open for the next request.
        await using var stream = client.OpenDecodeStream();
        error = await Assert.ThrowsAsync<RpcException>(() => stream.DecodeAsync(Step(4, 16), output, new float[64]).WaitAsync(Bound));
        Assert.Equal(StatusCode.Internal, error.StatusCode);
        Assert.All(output, v => Assert.Equal(Sentinel, v));
        await pool.AllReturnedAsync();
        stop.Cancel();
        connection.Dispose();
    }

    [Fact]
    public async Task Caller_memory_too_short_for_the_outputs_is_refused_before_anything_is_sent()
    {
        using var server = new ScriptedHttp2Server();
        var pool = new CountingPool();
        var counters = new Http2TransportCounters();
        using var client = Client(server.Address, pool, counters: counters);
        var shortOut = await Assert.ThrowsAsync<ArgumentException>(() => client.DecodeOnceAsync(Step(4, 16), new ushort[4 * 16 * 512 - 1], new float[64]));
        Assert.Equal("output", shortOut.ParamName);
        await using var stream = client.OpenDecodeStream();
        var shortLse = await Assert.ThrowsAsync<ArgumentException>(() => stream.DecodeAsync(Step(4, 16), new ushort[4 * 16 * 512], new float[63]));
        Assert.Equal("lse", shortLse.ParamName);
        await Assert.ThrowsAsync<ArgumentException>(() => stream.SendAsync(Step(4, 16), new ushort[10], new float[64]));
        Assert.Equal(0, counters.DataFramesSent);
        Assert.Equal(0, stream.InFlight);
    }
}
