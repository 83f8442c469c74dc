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

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_decode_whose_deadline_passes_while_it_computes_is_counted_as_deadline_exceeded(bool dataPlane)
    {
        HeldBackend? backend = null;
        await using var server = await TestServer.StartAsync(HeldBackend.Install(b => backend = b));
        using var dataPlaneClient = dataPlane
            ? new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { DecodeAddress = server.DataPlaneAddress })
            : null;
        var client = dataPlaneClient ?? server.Client;
        ulong id = await client.CreateSequenceAsync();
        await client.AppendKvAsync(id, 0, Random16.Bf16(new Random(1), 16 * 576));
        var before = await PrometheusScrape.TakeAsync(server);

        var call = client.DecodeOnceAsync(new DecodeInput(0, [id], 1, 4, Random16.Bf16(new Random(2), 4 * 576)),
            deadline: DateTime.UtcNow.AddMilliseconds(300));
        await backend!.WaitForSubmittedAsync(1);
        var error = await Assert.ThrowsAsync<RpcException>(() => call.WaitAsync(Patience));
        Assert.Equal(StatusCode.DeadlineExceeded, error.StatusCode);
        await Task.Delay(300); // the client's timer may fire a little before the server's
        backend.Release();

        double Delta(PrometheusScrape after, string code) =>
            after.Sum(FailedMetric, ("code", code), ("method", DecodeOnce)) - before.Sum(FailedMetric, ("code", code), ("method", DecodeOnce));
        var until = DateTime.UtcNow + Patience;
        var scrape = await PrometheusScrape.TakeAsync(server);
        while (Delta(scrape, "DeadlineExceeded") == 0 && DateTime.UtcNow < until)
        {
            await Task.Delay(50);
            scrape = await PrometheusScrape.TakeAsync(server);
        }
        Assert.Equal(1, Delta(scrape, "DeadlineExceeded"));
        Assert.Equal(0, Delta(scrape, "Cancelled"));
        Assert.Equal(1ul, (await client.GetStatsAsync()).DecodeRequests); // it was computed: the count says what the caller saw
    }
}
