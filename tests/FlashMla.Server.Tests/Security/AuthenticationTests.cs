using FlashMla.Client;
using FlashMla.Contracts.V1;
using FlashMla.Http2;
using Grpc.Core;
using Grpc.Health.V1;
using Grpc.Net.Client;
using static FlashMla.Server.Tests.Security.TenantServer;

namespace FlashMla.Server.Tests.Security;

/// <summary>Bearer tokens from the token file, on both ports: missing, wrong and revoked tokens are UNAUTHENTICATED.</summary>
[Collection(DataPlaneCollection.Name)]
public sealed class AuthenticationTests
{
    private static DecodeInput Step(ulong id) => new(0, [id], 1, 4, Random16.Bf16(new Random(3), 4 * 576));

    private static async Task AssertUnauthenticated(Func<Task> call)
    {
        var error = await Assert.ThrowsAsync<RpcException>(call);
        Assert.Equal(StatusCode.Unauthenticated, error.StatusCode);
    }

    [Fact]
    public async Task The_grpc_port_refuses_calls_without_a_token_or_with_a_wrong_one()
    {
        await using var server = await TenantServer.StartAsync();
        var good = server.Client(TokenA);
        ulong id = await good.CreateSequenceAsync();
        await good.AppendKvAsync(id, 0, Random16.Bf16(new Random(1), 10 * 576));

        foreach (var bad in new[] { server.Client(null), server.Client("not-a-token-of-this-server"), server.Client(TokenA + "x") })
        {
            await AssertUnauthenticated(() => bad.CreateSequenceAsync());
            await AssertUnauthenticated(() => bad.GetStatsAsync());
            await AssertUnauthenticated(() => bad.GetConfigAsync());
            await AssertUnauthenticated(() => bad.AppendKvAsync(id, 0, Random16.Bf16(new Random(2), 576)));
            await AssertUnauthenticated(() => bad.DecodeOnceAsync(Step(id)));
        }
        Assert.Equal(10u, (await good.GetSequenceAsync(id)).LayerLengths[0]);
        var refused = (await PrometheusScrape.TakeAsync(server.Server)).Sum("flashmla_requests_failed_total", ("code", "Unauthenticated"));
        Assert.Equal(15, refused);
    }

    [Theory]
    [MemberData(nameof(DataPlanePortTests.Transports), MemberType = typeof(DataPlanePortTests))]
    public async Task The_data_plane_port_refuses_calls_without_a_token_or_with_a_wrong_one(DataPlanePortTests.ClientPath path)
    {
        await using var server = await TenantServer.StartAsync();
        var cache = server.Client(TokenA);
        ulong id = await cache.CreateSequenceAsync();
        await cache.AppendKvAsync(id, 0, Random16.Bf16(new Random(1), 10 * 576));

        var good = server.Client(TokenA, dataPlane: true, path);
        using (var output = await good.DecodeOnceAsync(Step(id))) Assert.Equal(4 * 512, output.Out.Length);
        foreach (string? token in new[] { null, "not-a-token-of-this-server" })
        {
            var bad = server.Client(token, dataPlane: true, path);
            await AssertUnauthenticated(() => bad.DecodeOnceAsync(Step(id)));
            await using var stream = bad.OpenDecodeStream();
            await AssertUnauthenticated(() => stream.DecodeAsync(Step(id)));
        }
    }

    [Fact]
    public async Task The_data_plane_port_refuses_AppendKv_without_a_token_or_with_a_wrong_one_and_appends_nothing()
    {
        await using var server = await TenantServer.StartAsync();
        var cache = server.Client(TokenA);
        ulong id = await cache.CreateSequenceAsync();
        await cache.AppendKvAsync(id, 0, Random16.Bf16(new Random(1), 10 * 576));

        using var channel = GrpcChannel.ForAddress(server.Server.DataPlaneAddress!);
        var ingest = new KvCache.KvCacheClient(channel);
        async Task<AppendKvResponse> Append(Metadata headers)
        {
            using var call = ingest.AppendKv(headers);
            try
            {
                await call.RequestStream.WriteAsync(new AppendKvChunk { SequenceId = id, Layer = 0, Kv = TensorBytes.Bf16(Random16.Bf16(new Random(2), 576), 1, 576) });
                await call.RequestStream.CompleteAsync();
            }
            catch (RpcException)
            {
                // The server answered before the request was sent (a refusal, then RST_STREAM(NO_ERROR)): a write that
                // races it fails, and the call's status is what the server said, as any client reads it.
            }
            return await call;
        }
        await AssertUnauthenticated(() => Append([]));
        await AssertUnauthenticated(() => Append(new Metadata { { "authorization", "Bearer not-a-token-of-this-server" } }));
        await AssertUnauthenticated(() => server.Client(null, dataPlane: true).AppendKvAsync(id, 0, Random16.Bf16(new Random(3), 576)));
        Assert.Equal(10u, (await cache.GetSequenceAsync(id)).LayerLengths[0]);

        // With the tenant's token the same call lands, on the same port.
        Assert.Equal(1ul, (await Append(new Metadata { { "authorization", "Bearer " + TokenA } })).Rows);
        Assert.Equal(11u, (await cache.GetSequenceAsync(id)).LayerLengths[0]);
        var scrape = await PrometheusScrape.TakeAsync(server.Server);
        Assert.Equal(3, scrape.Sum("flashmla_dataplane_calls_total", ("method", "/flashmla.v1.KvCache/AppendKv"), ("code", "Unauthenticated")));
    }

    [Fact]
    public async Task A_stream_refused_from_its_headers_reports_the_refusal_not_the_cancelled_write()
    {
        // SocketsHttpHandler fails the first write of a stream the server has already answered as cancelled, about one
        // time in ten here: the client reports the server's status instead.
        await using var server = await TenantServer.StartAsync();
        var bad = server.Client(null, dataPlane: true, DataPlanePortTests.ClientPath.GrpcSockets);
        for (int i = 0; i < 40; i++)
        {
            await using var stream = bad.OpenDecodeStream();
            await AssertUnauthenticated(() => stream.DecodeAsync(Step(1)));
        }
    }

    [Fact]
    public async Task The_data_plane_port_answers_an_unauthenticated_call_from_its_headers_without_reading_its_body()
    {
        await using var server = await TenantServer.StartAsync();
        await using var raw = await RawHttp2Client.ConnectAsync(server.Server.DataPlaneAddress!);
        // HEADERS without END_STREAM: the body would follow; the answer comes first, trailers-only, then RST_STREAM(NO_ERROR).
        await raw.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, 1,
            RawHttp2Client.RequestHeaders("/flashmla.v1.Decoder/DecodeOnce", null, ("authorization", "Bearer wrong-token-0000000000")));
        var answer = await raw.ReadUntilAsync(h => h.StreamId == 1 && h.Type == Http2FrameType.Headers);
        Assert.NotNull(answer);
        Assert.True(answer.Value.Header.Has(Http2FrameFlags.EndStream));
        var fields = RawHttp2Client.Decode(answer.Value.Payload);
        Assert.Equal("16", fields["grpc-status"]);
        var reset = await raw.ReadUntilAsync(h => h.StreamId == 1 && h.Type == Http2FrameType.RstStream);
        Assert.NotNull(reset);
    }

    [Fact]
    public async Task Health_checks_and_metrics_stay_open_without_a_token()
    {
        await using var server = await TenantServer.StartAsync();
        using var channel = GrpcChannel.ForAddress(server.Server.GrpcAddress);
        var health = await new Health.HealthClient(channel).CheckAsync(new HealthCheckRequest { Service = "flashmla.v1.Decoder" });
        Assert.Equal(HealthCheckResponse.Types.ServingStatus.Serving, health.Status);
        await AssertUnauthenticated(async () => await new KvCache.KvCacheClient(channel).GetStatsAsync(new GetStatsRequest()));
        using var http = new HttpClient();
        Assert.Contains("flashmla_tenant_sequences", await http.GetStringAsync(server.Server.MetricsAddress + "/metrics"));
        Assert.Equal(System.Net.HttpStatusCode.OK, (await http.GetAsync(server.Server.MetricsAddress + "/healthz")).StatusCode);
    }

    [Fact]
    public async Task A_token_removed_from_the_file_fails_on_both_ports_and_on_an_open_stream_and_a_new_one_works()
    {
        await using var server = await TenantServer.StartAsync();
        var cache = server.Client(TokenA);
        var dataPlane = server.Client(TokenA, dataPlane: true);
        ulong id = await cache.CreateSequenceAsync();
        await cache.AppendKvAsync(id, 0, Random16.Bf16(new Random(1), 10 * 576));
        await using var open = dataPlane.OpenDecodeStream();
        using (await open.DecodeAsync(Step(id))) { }

        const string rotated = "token-of-tenant-a-0002";
        server.Rewrite(Tenant("a", [rotated]), Tenant("b", [TokenB]));
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (DateTime.UtcNow < deadline)
        {
            try
            {
                await cache.GetStatsAsync();
                await Task.Delay(50);
            }
            catch (RpcException ex) when (ex.StatusCode == StatusCode.Unauthenticated)
            {
                break;
            }
        }
        await AssertUnauthenticated(() => cache.GetSequenceAsync(id));
        await AssertUnauthenticated(() => dataPlane.DecodeOnceAsync(Step(id)));
        await AssertUnauthenticated(() => open.DecodeAsync(Step(id))); // the stream outlived its token: its next request fails

        // The new token is tenant a's: it finds a's sequence, on both ports.
        var renewed = server.Client(rotated, dataPlane: true);
        Assert.Equal(10u, (await renewed.GetSequenceAsync(id)).LayerLengths[0]);
        using (var output = await renewed.DecodeOnceAsync(Step(id))) Assert.Equal(4 * 512, output.Out.Length);
        Assert.NotEqual(0ul, await server.Client(TokenB).CreateSequenceAsync()); // b's token was kept
        await AssertUnauthenticated(() => server.Client(TokenOps).GetStatsAsync()); // dropped from the file
    }

    [Fact]
    public async Task A_token_file_that_turns_invalid_keeps_the_tokens_in_force()
    {
        await using var server = await TenantServer.StartAsync();
        File.WriteAllText(server.TokenFilePath, "{ \"tenants\": [ { \"name\": \"a\", \"tokens\": [\"short\"] } ] }");
        await Task.Delay(500); // five reload periods
        Assert.NotEqual(0ul, await server.Client(TokenA).CreateSequenceAsync());
        Assert.NotEqual(0ul, await server.Client(TokenB).CreateSequenceAsync());
    }

    [Fact]
    public async Task A_server_whose_token_file_is_invalid_does_not_start()
    {
        var path = Path.GetTempFileName();
        try
        {
            File.WriteAllText(path, "{ \"tenants\": [ { \"name\": \"a\", \"tokens\": [\"token-of-tenant-a-0001\"], \"maxBlock\": 4 } ] }");
            var error = await Assert.ThrowsAsync<Microsoft.Extensions.Options.OptionsValidationException>(() => TestServer.StartAsync(("TokenFile", path)));
            Assert.Contains("TokenFile", error.Message);
            Assert.Contains("maxBlock", error.Message);
            Assert.DoesNotContain("token-of-tenant-a-0001", error.Message);
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public async Task Without_a_token_file_every_call_is_the_anonymous_tenants_and_a_warning_says_so()
    {
        var log = new LogCapture();
        await using var server = await TestServer.StartAsync([.. log.ServerOptions]);
        using var client = new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { BearerToken = "any-token-whatsoever-000" });
        ulong id = await server.Client.CreateSequenceAsync();
        Assert.Equal(id, (await client.GetSequenceAsync(id)).SequenceId); // a token is ignored, not refused
        Assert.Contains(log.Events, e => e.Level == Serilog.Events.LogEventLevel.Warning && e.RenderMessage().Contains("Authentication off"));
    }
}
