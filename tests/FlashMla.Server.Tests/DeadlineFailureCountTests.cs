using FlashMla.Client;
using Grpc.Core;

namespace FlashMla.Server.Tests;

/// <summary>
/// What an operator's failure counter says about calls whose callers gave up: a decode that was already computing when
/// its deadline passed still runs to the end, but its caller got DEADLINE_EXCEEDED, and flashmla_requests_failed_total
/// must count it so (an overloaded server whose callers all time out would otherwise show no failures), on either port.
/// </summary>
[Collection(DataPlaneCollection.Name)] // reads a counter every test server in the process adds to
public sealed class DeadlineFailureCountTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(10);
    private const string FailedMetric = "flashmla_requests_failed_total";
    private const string DecodeOnce = "/flashmla.v1.Decoder/DecodeOnce";
    private const string DecodeStream = "/flashmla.v1.Decoder/Decode";

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_decode_whose_deadline_passes_while_it_computes_is_counted_as_deadline_exceeded(bool dataPlane)
    {
        await using var held = await HeldServer.StartAsync(dataPlane);
        var before = await PrometheusScrape.TakeAsync(held.Server);

        var call = held.Client.DecodeOnceAsync(held.Input(), deadline: DateTime.UtcNow.AddMilliseconds(300));
        await held.Backend.WaitForSubmittedAsync(1);
        var error = await Assert.ThrowsAsync<RpcException>(() => call.WaitAsync(Patience));
        Assert.Equal(StatusCode.DeadlineExceeded, error.StatusCode);

        await held.ExpectCountedAsExpiredAsync(before, DecodeOnce);
    }

    /// <summary>
    /// The same on a stream: a request still computing when the stream's deadline passed finishes after the stream
    /// ended with DEADLINE_EXCEEDED, and is counted so (not as a success nobody received), on either port.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_stream_request_whose_deadline_passes_while_it_computes_is_counted_as_deadline_exceeded(bool dataPlane)
    {
        await using var held = await HeldServer.StartAsync(dataPlane);
        var before = await PrometheusScrape.TakeAsync(held.Server);

        await using var stream = held.Client.OpenDecodeStream(deadline: DateTime.UtcNow.AddMilliseconds(300));
        var response = await stream.SendAsync(held.Input());
        await held.Backend.WaitForSubmittedAsync(1);
        var error = await Assert.ThrowsAsync<RpcException>(() => response.WaitAsync(Patience));
        Assert.Equal(StatusCode.DeadlineExceeded, error.StatusCode);

        await held.ExpectCountedAsExpiredAsync(before, DecodeStream);
    }

    /// <summary>A test server whose decodes wait for <see cref="HeldBackend.Release"/>, a client on the port under test and one sequence to decode.</summary>
    private sealed class HeldServer : IAsyncDisposable
    {
        private readonly FlashMlaClient? _dataPlaneClient;
        private ulong _sequence;

        private HeldServer(TestServer server, HeldBackend backend, FlashMlaClient? dataPlaneClient)
        {
            (Server, Backend, _dataPlaneClient) = (server, backend, dataPlaneClient);
        }

        public TestServer Server { get; }
        public HeldBackend Backend { get; }
        public FlashMlaClient Client => _dataPlaneClient ?? Server.Client;

        public static async Task<HeldServer> StartAsync(bool dataPlane)
        {
            HeldBackend? backend = null;
            var server = await TestServer.StartAsync(HeldBackend.Install(b => backend = b));
            var dataPlaneClient = dataPlane
                ? new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { DecodeAddress = server.DataPlaneAddress })
                : null;
            var held = new HeldServer(server, backend!, dataPlaneClient);
            held._sequence = await held.Client.CreateSequenceAsync();
            await held.Client.AppendKvAsync(held._sequence, 0, Random16.Bf16(new Random(1), 16 * 576));
            return held;
        }

        public DecodeInput Input() => new(0, [_sequence], 1, 4, Random16.Bf16(new Random(2), 4 * 576));

        /// <summary>Lets the held decode finish, then expects one more DEADLINE_EXCEEDED (and no CANCELLED) for <paramref name="method"/> than <paramref name="before"/>.</summary>
        public async Task ExpectCountedAsExpiredAsync(PrometheusScrape before, string method)
        {
            await Task.Delay(300); // the client's timer may fire a little before the server's
            Backend.Release();

            double Delta(PrometheusScrape after, string code) =>
                after.Sum(FailedMetric, ("code", code), ("method", method)) - before.Sum(FailedMetric, ("code", code), ("method", method));
            var until = DateTime.UtcNow + Patience;
            var scrape = await PrometheusScrape.TakeAsync(Server);
            while (Delta(scrape, "DeadlineExceeded") == 0 && DateTime.UtcNow < until)
            {
                await Task.Delay(50);
                scrape = await PrometheusScrape.TakeAsync(Server);
            }
            Assert.Equal(1, Delta(scrape, "DeadlineExceeded"));
            Assert.Equal(0, Delta(scrape, "Cancelled"));
            Assert.Equal(1ul, (await Client.GetStatsAsync()).DecodeRequests); // it was computed: the count says what the caller saw
        }

        public async ValueTask DisposeAsync()
        {
            _dataPlaneClient?.Dispose();
            await Server.DisposeAsync();
        }
    }
}
