using FlashMla.Client;
using FlashMla.Contracts.V1;
using Grpc.Core;
using static FlashMla.Server.Tests.Security.TenantServer;

namespace FlashMla.Server.Tests.Security;

/// <summary>
/// The data-plane port answers a call it refuses from its headers at once (trailers-only, then RST_STREAM(NO_ERROR):
/// RFC 9113, section 8.1), while the client may still be sending the request body. The client must take that as a
/// completed call with the server's status: the writes still to come end quietly, and the caller sees the status,
/// never a write's failure.
/// </summary>
[Collection(DataPlaneCollection.Name)]
public sealed class EarlyRefusalTests
{
    /// <summary>More than the data-plane port's stream window (32 MiB): the client is still sending, or waiting for
    /// credit the server will never give, when the refusal arrives.</summary>
    private const int Rows = (40 << 20) / (576 * 2);

    [Theory]
    [MemberData(nameof(DataPlanePortTests.Transports), MemberType = typeof(DataPlanePortTests))]
    public async Task A_large_AppendKv_refused_for_its_token_reports_UNAUTHENTICATED_and_the_connection_serves_on(DataPlanePortTests.ClientPath path)
    {
        await using var server = await TenantServer.StartAsync();
        var owner = server.Client(TokenA);
        ulong id = await owner.CreateSequenceAsync();
        await owner.AppendKvAsync(id, 0, Random16.Bf16(new Random(1), 3 * 576));
        var largeBody = new ushort[Rows * 576];

        foreach (string? token in new[] { null, "not-a-token-of-this-server" })
        {
            var refused = server.Client(token, dataPlane: true, path);
            for (int i = 0; i < 3; i++)
            {
                var error = await Assert.ThrowsAsync<RpcException>(() => refused.AppendKvAsync(id, 0, largeBody).WaitAsync(TimeSpan.FromMinutes(2)));
                Assert.Equal(StatusCode.Unauthenticated, error.StatusCode);
            }
        }
        Assert.Equal(3u, (await owner.GetSequenceAsync(id)).LayerLengths[0]); // nothing of the refused bodies landed

        // The same port, and a connection that carried refusals, still serve: a tenant's upload over the data plane lands.
        var ingest = server.Client(TokenA, dataPlane: true, path);
        Assert.Equal(2ul, (await ingest.AppendKvAsync(id, 0, Random16.Bf16(new Random(2), 2 * 576))).Rows);
        Assert.Equal(5u, (await owner.GetSequenceAsync(id)).LayerLengths[0]);
        var scrape = await PrometheusScrape.TakeAsync(server.Server);
        Assert.Equal(6, scrape.Sum("flashmla_dataplane_calls_total", ("method", "/flashmla.v1.KvCache/AppendKv"), ("code", "Unauthenticated")));
    }

    /// <summary>
    /// Through the generated stub, as any grpc-dotnet caller writes it: the call's status is the refusal, on the
    /// library's HTTP/2 handler and on SocketsHttpHandler alike. A write that races the refusal may fail first: with
    /// the call's status, or (SocketsHttpHandler cancels the body's write on the reset, and Grpc.Net.Client may see
    /// that before it has read the trailers) with CANCELLED; either way the call's status that follows is the server's.
    /// On the library's own handler the writes after the reset end quietly (the stream stops taking the body), so the
    /// only failure a write there can show is the call's own status.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task The_call_status_of_a_stub_upload_refused_while_it_writes_is_the_refusal(bool largeFrames)
    {
        var transport = largeFrames ? ClientTransport.LargeFrames : ClientTransport.SocketsHttpHandler;
        await using var server = await TenantServer.StartAsync();
        using var channel = FlashMlaClient.CreateChannel(server.Server.DataPlaneAddress!, new FlashMlaClientOptions { Transport = transport });
        var ingest = new KvCache.KvCacheClient(channel);
        var chunk = new AppendKvChunk { SequenceId = 1, Layer = 0, Kv = TensorBytes.Bf16(new ushort[2048 * 576], 2048, 576) };
        for (int i = 0; i < 6; i++) // the race is between two threads of the client: give it several chances
        {
            using var call = ingest.AppendKv();
            try
            {
                for (int written = 0; written < 20; written++) await call.RequestStream.WriteAsync(chunk); // 47 MB in all
                await call.RequestStream.CompleteAsync();
            }
            catch (RpcException write)
            {
                if (largeFrames) Assert.Equal(StatusCode.Unauthenticated, write.StatusCode);
                else Assert.Contains(write.StatusCode, new[] { StatusCode.Unauthenticated, StatusCode.Cancelled });
            }
            var error = await Assert.ThrowsAsync<RpcException>(() => call.ResponseAsync.WaitAsync(TimeSpan.FromMinutes(2)));
            Assert.Equal(StatusCode.Unauthenticated, error.StatusCode);
        }
    }
}
