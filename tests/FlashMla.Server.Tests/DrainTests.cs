using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Net.Sockets;
using FlashMla.Client;
using FlashMla.Http2;
using Grpc.Core;
using Grpc.Health.V1;
using Microsoft.Extensions.DependencyInjection;
using Xunit.Abstractions;

namespace FlashMla.Server.Tests;

/// <summary>
/// What SIGTERM does under load (the host stopping, as TestServer.StopAsync does it): health turns NOT_SERVING,
/// both ports send GOAWAY and stop taking streams, every request the server took is answered, and the process is
/// done within DrainTimeoutSeconds.
/// </summary>
public sealed class DrainTests(ITestOutputHelper output)
{
    private const int Sequences = 4, Length = 1024, Heads = 16;

    [Fact]
    public async Task Shutdown_under_load_answers_every_request_the_server_executed_on_both_ports()
    {
        const double drainSeconds = 8;
        var server = await TestServer.StartAsync(("DrainTimeoutSeconds", drainSeconds), ("TotalBlocks", 128), ("CpuThreads", 1));
        using var executed = new ExecutedDecodes(server);
        try
        {
            var ids = await RawHttp2Client.SequencesAsync(server, Sequences, Length);
            using var grpcPort = new FlashMlaClient(server.GrpcAddress);
            using var dataPlane = new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { DecodeAddress = server.DataPlaneAddress, DirectDecode = true });
            var loads = new[] { new PortLoad("grpc", grpcPort, ids), new PortLoad("data-plane", dataPlane, ids) };
            foreach (var load in loads) load.Start(streams: 2, inFlightPerStream: 3, unaryLoops: 2);
            // Every port has answered a few requests, so the load is flowing on both.
            var warm = Stopwatch.StartNew();
            while (loads.Any(l => l.Answered < 4) && warm.Elapsed < TimeSpan.FromSeconds(30)) await Task.Delay(20);

            using var probeChannel = Grpc.Net.Client.GrpcChannel.ForAddress(server.GrpcAddress);
            var health = new Health.HealthClient(probeChannel);
            using var watch = health.Watch(new HealthCheckRequest { Service = "flashmla.v1.Decoder" });
            Assert.True(await watch.ResponseStream.MoveNext());
            Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, watch.ResponseStream.Current.Status);

            var clock = Stopwatch.StartNew();
            foreach (var load in loads) load.MarkStop();
            var stopping = server.StopAsync();
            var watched = WatchUntilNotServingAsync(watch.ResponseStream);
            await stopping.WaitAsync(TimeSpan.FromSeconds(drainSeconds + 5));
            var stopTime = clock.Elapsed;
            await Task.WhenAll(loads.Select(l => l.Completion)).WaitAsync(TimeSpan.FromSeconds(10));

            foreach (var load in loads)
                output.WriteLine($"{load.Port}: {load.Answered} answered ({load.AnsweredAfterStop} after the stop began), {load.Refused} refused with UNAVAILABLE, other: {string.Join("; ", load.Other)}");
            output.WriteLine($"server executed {executed.Count}; stop took {stopTime.TotalSeconds:F2} s; watch: {await watched}");
            // NOT_SERVING reached the watcher although the ports were going away.
            Assert.Equal("NotServing", await watched);
            foreach (var load in loads)
            {
                Assert.Empty(load.Other);
                Assert.True(load.AnsweredAfterStop > 0, $"{load.Port}: nothing was in flight when the stop began");
            }
            // Every request the server executed was answered: none computed and dropped.
            Assert.Equal(executed.Count, loads.Sum(l => l.Answered));
            // Well-behaved clients: the drain ends when their work is done, not at the timeout.
            Assert.True(stopTime < TimeSpan.FromSeconds(drainSeconds / 2), $"shutdown took {stopTime}");
        }
        finally
        {
            await server.DisposeAsync();
        }
    }

    /// <summary>The first status other than SERVING the watch gets, or how the watch ended without one.</summary>
    private static async Task<string> WatchUntilNotServingAsync(IAsyncStreamReader<HealthCheckResponse> watch)
    {
        try
        {
            while (await watch.MoveNext())
                if (watch.Current.Status != HealthCheckResponse.Types.ServingStatus.Serving) return watch.Current.Status.ToString();
            return "the watch ended without a status";
        }
        catch (RpcException ex)
        {
            return $"the watch failed: {ex.Status}";
        }
    }

    [Fact]
    public async Task A_stuck_client_does_not_hold_shutdown_past_the_drain_timeout_and_neither_port_takes_new_connections_meanwhile()
    {
        const double drainSeconds = 3;
        var server = await TestServer.StartAsync(("DrainTimeoutSeconds", drainSeconds), ("TotalBlocks", 128));
        try
        {
            var ids = await RawHttp2Client.SequencesAsync(server, 2, 64);
            // A client that opens a Decode stream with a 1 KiB window and never reads: its response can never be
            // sent whole, so the drain can only end at its timeout.
            await using var stuck = await RawHttp2Client.ConnectAsync(server.DataPlaneAddress!, [(Http2Setting.InitialWindowSize, 1024u)]);
            await stuck.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, 1, RawHttp2Client.RequestHeaders("/flashmla.v1.Decoder/Decode"));
            await stuck.SendMessageAsync(1, RawHttp2Client.GrpcMessage(ids, 64, 1), endStream: false);
            await stuck.ReadUntilAsync(h => h.Type == Http2FrameType.Data && h.StreamId == 1);
            // And one on the gRPC port likewise.
            await using var stuckGrpc = await RawHttp2Client.ConnectAsync(server.GrpcAddress, [(Http2Setting.InitialWindowSize, 1024u)]);
            await stuckGrpc.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, 1, RawHttp2Client.RequestHeaders("/flashmla.v1.Decoder/Decode"));
            await stuckGrpc.SendMessageAsync(1, RawHttp2Client.GrpcMessage(ids, 64, 1), endStream: false);
            await stuckGrpc.ReadUntilAsync(h => h.Type == Http2FrameType.Data && h.StreamId == 1);

            var clock = Stopwatch.StartNew();
            var stopping = server.StopAsync();
            await Task.Delay(300);
            Assert.False(stopping.IsCompleted, "the stuck clients should hold the drain");
            foreach (var address in new[] { server.DataPlaneAddress!, server.GrpcAddress })
            {
                using var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
                var refused = await Assert.ThrowsAsync<SocketException>(async () => await socket.ConnectAsync("127.0.0.1", new Uri(address).Port));
                Assert.Equal(SocketError.ConnectionRefused, refused.SocketErrorCode);
            }
            // Both stuck connections were told GOAWAY at once.
            Assert.NotNull(await stuck.ReadUntilAsync(h => h.Type == Http2FrameType.GoAway));
            Assert.NotNull(await stuckGrpc.ReadUntilAsync(h => h.Type == Http2FrameType.GoAway));

            await stopping.WaitAsync(TimeSpan.FromSeconds(drainSeconds + 10));
            output.WriteLine($"stop took {clock.Elapsed.TotalSeconds:F2} s");
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(drainSeconds + 0.5), $"shutdown took {clock.Elapsed}, DrainTimeoutSeconds is {drainSeconds}");
        }
        finally
        {
            await server.DisposeAsync();
        }
    }

    [Fact]
    public void The_host_shutdown_timeout_is_the_drain_timeout()
    {
        var app = FlashMla.Server.Hosting.FlashMlaServerApp.Build(["--FlashMla:DrainTimeoutSeconds=12.5", "--FlashMla:Backend=cpu", "--FlashMla:TotalBlocks=8"]);
        var host = app.Services.GetRequiredService<Microsoft.Extensions.Options.IOptions<Microsoft.Extensions.Hosting.HostOptions>>().Value;
        Assert.Equal(TimeSpan.FromSeconds(12.5), host.ShutdownTimeout);
    }

    /// <summary>Decode requests the server executed to success (its flashmla.decode.requests counter), this server's only.</summary>
    private sealed class ExecutedDecodes : IDisposable
    {
        private readonly MeterListener _listener = new();
        private long _count;

        public ExecutedDecodes(TestServer server)
        {
            var factory = server.Services.GetRequiredService<IMeterFactory>();
            _listener.InstrumentPublished = (instrument, listener) =>
            {
                if (instrument.Meter.Scope == factory && instrument.Name == "flashmla.decode.requests") listener.EnableMeasurementEvents(instrument);
            };
            _listener.SetMeasurementEventCallback<long>((_, value, _, _) => Interlocked.Add(ref _count, value));
            _listener.Start();
        }

        public long Count => Interlocked.Read(ref _count);

        public void Dispose() => _listener.Dispose();
    }

    /// <summary>
    /// Decode streams (several requests in flight each) and unary loops on one port, until the server goes: counts
    /// what was answered and how the rest failed. UNAVAILABLE is the only acceptable failure (the request was refused,
    /// never executed, and may be retried elsewhere).
    /// </summary>
    private sealed class PortLoad(string port, FlashMlaClient client, ulong[] ids)
    {
        private readonly List<Task> _tasks = [];
        private volatile bool _stopped;
        private int _answered, _answeredAfterStop, _refused;

        public string Port => port;
        public int Answered => Volatile.Read(ref _answered);
        public int AnsweredAfterStop => Volatile.Read(ref _answeredAfterStop);
        public int Refused => Volatile.Read(ref _refused);
        public List<string> Other { get; } = [];
        public Task Completion => Task.WhenAll(_tasks);

        public void Start(int streams, int inFlightPerStream, int unaryLoops)
        {
            for (int i = 0; i < streams; i++) _tasks.Add(Task.Run(() => StreamAsync(inFlightPerStream)));
            for (int i = 0; i < unaryLoops; i++) _tasks.Add(Task.Run(UnaryAsync));
        }

        public void MarkStop() => _stopped = true;

        private DecodeInput Input(int seed) => new(0, ids, 1, Heads, Random16.Bf16(new Random(seed), ids.Length * Heads * 576));

        private async Task UnaryAsync()
        {
            for (int seed = 0; ; seed++)
            {
                try
                {
                    using var output = await client.DecodeOnceAsync(Input(seed));
                    Answer(output);
                }
                catch (Exception ex)
                {
                    Fail(ex);
                    return;
                }
            }
        }

        private async Task StreamAsync(int inFlight)
        {
            var pending = new Queue<Task<DecodeOutput>>();
            try
            {
                await using var stream = client.OpenDecodeStream();
                for (int seed = 0; ; seed++)
                {
                    while (pending.Count >= inFlight) await CollectAsync(pending.Dequeue());
                    pending.Enqueue(await stream.SendAsync(Input(seed)));
                }
            }
            catch (Exception ex)
            {
                Fail(ex);
            }
            while (pending.Count > 0)
            {
                try
                {
                    await CollectAsync(pending.Dequeue());
                }
                catch (Exception ex)
                {
                    Fail(ex);
                }
            }
        }

        private async Task CollectAsync(Task<DecodeOutput> response)
        {
            using var output = await response;
            Answer(output);
        }

        private void Answer(DecodeOutput output)
        {
            if (output.Lse.Length != ids.Length * Heads) lock (Other) Other.Add($"an answer of {output.Lse.Length} lse values");
            Interlocked.Increment(ref _answered);
            if (_stopped) Interlocked.Increment(ref _answeredAfterStop);
        }

        private void Fail(Exception ex)
        {
            if (ex is RpcException { StatusCode: StatusCode.Unavailable } && _stopped) Interlocked.Increment(ref _refused);
            else lock (Other) Other.Add($"{ex.GetType().Name}: {ex.Message}");
        }
    }
}
