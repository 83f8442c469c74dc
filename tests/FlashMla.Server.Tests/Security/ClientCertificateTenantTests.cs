using FlashMla.Client;
using FlashMla.Client.Transport;
using Grpc.Core;
using static FlashMla.Server.Tests.Security.TenantServer;

namespace FlashMla.Server.Tests.Security;

/// <summary>
/// The tenant from a verified client certificate (Tls:ClientCertificateTenant), over real TLS sockets with
/// certificates of a generated CA, on the gRPC port and the data-plane port alike: a certificate the token file maps
/// to a tenant is that tenant, one it does not map needs a token, a token and a certificate of different tenants are
/// refused, and a reload of the file changes the mapping on open connections too.
/// </summary>
[Collection(DataPlaneCollection.Name)]
public sealed class ClientCertificateTenantTests : IDisposable
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    private readonly TlsFixture _tls = new();
    private readonly List<FlashMlaClient> _clients = [];

    public void Dispose()
    {
        foreach (var client in _clients) client.Dispose();
        _tls.Dispose();
    }

    private string TokenFilePath => Path.Combine(_tls.Directory, "tokens.json");

    private static object Tenant(string name, string[] tokens, string[] certificateNames, bool admin = false) =>
        new { name, tokens, certificateNames, admin };

    private static object[] Mapped(string hostOfA = "host-a") =>
        [Tenant("a", [TokenA], [hostOfA]), Tenant("b", [TokenB], ["host-b"]), Tenant("ops", [TokenOps], [], admin: true)];

    private async Task<TestServer> StartAsync(string source = "subject-cn", object[]? tenants = null)
    {
        WriteTokenFile(TokenFilePath, tenants ?? Mapped());
        return await TestServer.StartAsync(null, _tls.Client(withClientCertificate: true),
        [
            .. _tls.ServerOptions(mutual: true), ("TokenFile", TokenFilePath), ("TokenReloadSeconds", 0.1), ("Tls:ClientCertificateTenant", source),
        ]);
    }

    /// <summary>A client presenting <paramref name="tls"/>'s certificate and <paramref name="token"/>; decode and AppendKv on the data-plane port when asked.</summary>
    private FlashMlaClient Client(TestServer server, ClientTlsOptions tls, string? token, bool dataPlane)
    {
        var client = new FlashMlaClient(server.GrpcAddress,
            new FlashMlaClientOptions { Tls = tls, BearerToken = token, DecodeAddress = dataPlane ? server.DataPlaneAddress : null });
        _clients.Add(client);
        return client;
    }

    private static DecodeInput Step(ulong id) => new(0, [id], 1, 4, Random16.Bf16(new Random(3), 4 * 576));

    private static async Task<StatusCode> StatusOf(Func<Task> call)
    {
        var error = await Assert.ThrowsAsync<RpcException>(call);
        return error.StatusCode;
    }

    public static TheoryData<bool> Ports => [false, true];

    [Theory]
    [MemberData(nameof(Ports))]
    public async Task A_certificate_mapped_to_a_tenant_is_that_tenant_and_another_tenants_certificate_gets_NOT_FOUND(bool dataPlane)
    {
        await using var server = await StartAsync();
        var hostA = Client(server, _tls.ClientWithCertificate("host-a"), null, dataPlane);
        var hostB = Client(server, _tls.ClientWithCertificate("host-b"), null, dataPlane);
        ulong id = await hostA.CreateSequenceAsync();
        var rows = Random16.Bf16(new Random(1), 5 * 576);
        Assert.Equal(5ul, (await hostA.AppendKvAsync(id, 0, rows)).Rows);
        using (var output = await hostA.DecodeOnceAsync(Step(id))) Assert.Equal(4 * 512, output.Out.Length);
        Assert.Equal(rows, await hostA.ReadKvAsync(id, 0));

        Assert.Equal(StatusCode.NotFound, await StatusOf(() => hostB.GetSequenceAsync(id)));
        Assert.Equal(StatusCode.NotFound, await StatusOf(() => hostB.AppendKvAsync(id, 0, Random16.Bf16(new Random(2), 576))));
        Assert.Equal(StatusCode.NotFound, await StatusOf(async () => (await hostB.DecodeOnceAsync(Step(id))).Dispose()));
        Assert.Equal(5u, (await hostA.GetSequenceAsync(id)).LayerLengths[0]); // B changed nothing

        // The tenant is the token file's: a's token on a certificate the file does not map sees the same sequence,
        // and a's counts are a's whichever way it came in.
        var tokenA = Client(server, _tls.Client(withClientCertificate: true), TokenA, dataPlane);
        Assert.Equal(5u, (await tokenA.GetSequenceAsync(id)).LayerLengths[0]);
        Assert.Equal((await tokenA.GetStatsAsync()).UsedBlocks, (await hostA.GetStatsAsync()).UsedBlocks);
        Assert.Equal(0u, (await hostB.GetStatsAsync()).UsedBlocks);
    }

    [Theory]
    [MemberData(nameof(Ports))]
    public async Task A_valid_certificate_the_file_does_not_map_is_UNAUTHENTICATED_unless_a_token_names_the_tenant(bool dataPlane)
    {
        await using var server = await StartAsync();
        var owner = Client(server, _tls.ClientWithCertificate("host-a"), null, dataPlane);
        ulong id = await owner.CreateSequenceAsync();
        await owner.AppendKvAsync(id, 0, Random16.Bf16(new Random(1), 3 * 576));

        var unmapped = Client(server, _tls.ClientWithCertificate("host-nobody-knows"), null, dataPlane);
        Assert.Equal(StatusCode.Unauthenticated, await StatusOf(() => unmapped.GetConfigAsync()));
        Assert.Equal(StatusCode.Unauthenticated, await StatusOf(() => unmapped.AppendKvAsync(id, 0, Random16.Bf16(new Random(2), 576))));
        Assert.Equal(StatusCode.Unauthenticated, await StatusOf(async () => (await unmapped.DecodeOnceAsync(Step(id))).Dispose()));

        // With b's token the same certificate is b: its own sequences, and a's are not found.
        var withToken = Client(server, _tls.ClientWithCertificate("host-nobody-knows"), TokenB, dataPlane);
        ulong own = await withToken.CreateSequenceAsync();
        Assert.Equal(1ul, (await withToken.AppendKvAsync(own, 0, Random16.Bf16(new Random(4), 576))).Rows);
        Assert.Equal(StatusCode.NotFound, await StatusOf(async () => (await withToken.DecodeOnceAsync(Step(id))).Dispose()));
        Assert.Equal(3u, (await owner.GetSequenceAsync(id)).LayerLengths[0]);
    }

    [Theory]
    [MemberData(nameof(Ports))]
    public async Task A_token_and_a_certificate_of_different_tenants_are_refused_and_of_the_same_tenant_accepted(bool dataPlane)
    {
        await using var server = await StartAsync();
        var hostA = _tls.ClientWithCertificate("host-a");
        var same = Client(server, hostA, TokenA, dataPlane);
        ulong id = await same.CreateSequenceAsync();
        await same.AppendKvAsync(id, 0, Random16.Bf16(new Random(1), 2 * 576));
        using (var output = await same.DecodeOnceAsync(Step(id))) Assert.Equal(4 * 512, output.Out.Length);

        foreach (string token in new[] { TokenB, TokenOps, "not-a-token-of-this-server" })
        {
            var mixed = Client(server, hostA, token, dataPlane);
            var error = await Assert.ThrowsAsync<RpcException>(() => mixed.GetSequenceAsync(id));
            Assert.Equal(StatusCode.Unauthenticated, error.StatusCode);
            Assert.Contains(token == "not-a-token-of-this-server" ? "not valid" : "different tenants", error.Status.Detail);
            Assert.Equal(StatusCode.Unauthenticated, await StatusOf(() => mixed.AppendKvAsync(id, 0, Random16.Bf16(new Random(2), 576))));
            Assert.Equal(StatusCode.Unauthenticated, await StatusOf(async () => (await mixed.DecodeOnceAsync(Step(id))).Dispose()));
        }
        Assert.Equal(2u, (await same.GetSequenceAsync(id)).LayerLengths[0]);
    }

    [Fact]
    public async Task A_reload_that_moves_a_certificate_name_to_another_tenant_applies_to_open_connections_on_both_ports()
    {
        await using var server = await StartAsync();
        var hostA = Client(server, _tls.ClientWithCertificate("host-a"), null, dataPlane: true);
        var tokenA = Client(server, _tls.Client(withClientCertificate: true), TokenA, dataPlane: true);
        ulong id = await hostA.CreateSequenceAsync();
        await hostA.AppendKvAsync(id, 0, Random16.Bf16(new Random(1), 3 * 576)); // opens the data-plane connection
        await using var stream = hostA.OpenDecodeStream();
        using (await stream.DecodeAsync(Step(id))) { }

        // host-a becomes b's: on the connections already open, new calls are b's and a's sequence is not found.
        WriteTokenFile(TokenFilePath, [Tenant("a", [TokenA], []), Tenant("b", [TokenB], ["host-b", "host-a"]), Tenant("ops", [TokenOps], [], admin: true)]);
        Assert.Equal(StatusCode.NotFound, await EventuallyAsync(() => hostA.GetSequenceAsync(id), StatusCode.NotFound));
        Assert.Equal(StatusCode.NotFound, await StatusOf(async () => (await hostA.DecodeOnceAsync(Step(id))).Dispose()));
        Assert.Equal(StatusCode.NotFound, await StatusOf(() => hostA.AppendKvAsync(id, 0, Random16.Bf16(new Random(2), 576))));
        // The stream opened as a ends: its next request is refused, as for a revoked token.
        Assert.Equal(StatusCode.Unauthenticated, await StatusOf(async () => (await stream.DecodeAsync(Step(id))).Dispose()));
        ulong ofB = await hostA.CreateSequenceAsync();
        Assert.Equal(StatusCode.NotFound, await StatusOf(() => tokenA.GetSequenceAsync(ofB)));

        // Dropped from the file: the certificate names no tenant any more.
        WriteTokenFile(TokenFilePath, [Tenant("a", [TokenA], []), Tenant("b", [TokenB], ["host-b"])]);
        Assert.Equal(StatusCode.Unauthenticated, await EventuallyAsync(() => hostA.GetConfigAsync(), StatusCode.Unauthenticated));
        Assert.Equal(StatusCode.Unauthenticated, await StatusOf(async () => (await hostA.DecodeOnceAsync(Step(ofB))).Dispose()));
        Assert.Equal(3u, (await tokenA.GetSequenceAsync(id)).LayerLengths[0]); // a's rows, untouched by b's calls
    }

    /// <summary>Repeats <paramref name="call"/> until it fails with <paramref name="expected"/> (the reload has been read) or the patience runs out.</summary>
    private static async Task<StatusCode?> EventuallyAsync(Func<Task> call, StatusCode expected)
    {
        var deadline = DateTime.UtcNow + Patience;
        StatusCode? last = null;
        while (DateTime.UtcNow < deadline)
        {
            try
            {
                await call();
                last = StatusCode.OK;
            }
            catch (RpcException ex)
            {
                last = ex.StatusCode;
                if (ex.StatusCode == expected) return last;
            }
            await Task.Delay(50);
        }
        return last;
    }

    [Theory]
    [MemberData(nameof(Ports))]
    public async Task With_dns_san_the_subject_alternative_names_name_the_tenant_and_the_common_name_does_not(bool dataPlane)
    {
        await using var server = await StartAsync("dns-san", [Tenant("a", [TokenA], ["decode.a.example"]), Tenant("b", [TokenB], ["decode.b.example"])]);
        var bySan = Client(server, _tls.ClientWithCertificate("anything", "other.example", "decode.a.example"), null, dataPlane);
        ulong id = await bySan.CreateSequenceAsync();
        Assert.Equal(2ul, (await bySan.AppendKvAsync(id, 0, Random16.Bf16(new Random(1), 2 * 576))).Rows);
        using (var output = await bySan.DecodeOnceAsync(Step(id))) Assert.Equal(4 * 512, output.Out.Length);
        Assert.Equal(2u, (await Client(server, _tls.Client(withClientCertificate: true), TokenA, dataPlane).GetSequenceAsync(id)).LayerLengths[0]);

        var byCommonName = Client(server, _tls.ClientWithCertificate("decode.a.example"), null, dataPlane);
        Assert.Equal(StatusCode.Unauthenticated, await StatusOf(() => byCommonName.GetConfigAsync()));
        Assert.Equal(StatusCode.Unauthenticated, await StatusOf(async () => (await byCommonName.DecodeOnceAsync(Step(id))).Dispose()));
        // Names of two tenants in one certificate name none.
        var ambiguous = Client(server, _tls.ClientWithCertificate("x", "decode.a.example", "decode.b.example"), null, dataPlane);
        Assert.Equal(StatusCode.Unauthenticated, await StatusOf(() => ambiguous.GetConfigAsync()));
        Assert.Equal(StatusCode.Unauthenticated, await StatusOf(async () => (await ambiguous.DecodeOnceAsync(Step(id))).Dispose()));
    }

    [Theory]
    [MemberData(nameof(Ports))]
    public async Task With_uri_san_a_SPIFFE_ID_names_the_tenant_and_DNS_names_and_the_common_name_do_not(bool dataPlane)
    {
        const string spiffeA = "spiffe://cluster.local/ns/infer-a/sa/orchestrator", spiffeB = "spiffe://cluster.local/ns/infer-b/sa/orchestrator";
        await using var server = await StartAsync("uri-san", [Tenant("a", [TokenA], [spiffeA]), Tenant("b", [TokenB], [spiffeB])]);
        var byUri = Client(server, _tls.ClientWithUris("anything", ["https://other.example/x", spiffeA], "decode.b.example"), null, dataPlane);
        ulong id = await byUri.CreateSequenceAsync();
        Assert.Equal(2ul, (await byUri.AppendKvAsync(id, 0, Random16.Bf16(new Random(1), 2 * 576))).Rows);
        using (var output = await byUri.DecodeOnceAsync(Step(id))) Assert.Equal(4 * 512, output.Out.Length);
        Assert.Equal(2u, (await Client(server, _tls.Client(withClientCertificate: true), TokenA, dataPlane).GetSequenceAsync(id)).LayerLengths[0]);
        // B's SPIFFE ID is B: A's sequence does not exist for it.
        var tenantB = Client(server, _tls.ClientWithUris("anything", [spiffeB]), null, dataPlane);
        Assert.Equal(StatusCode.NotFound, await StatusOf(() => tenantB.GetSequenceAsync(id)));

        // The ID as a DNS name or as the common name names nobody; so does a URI that differs in case (compared as written).
        var byCommonName = Client(server, _tls.ClientWithCertificate(spiffeA), null, dataPlane);
        Assert.Equal(StatusCode.Unauthenticated, await StatusOf(() => byCommonName.GetConfigAsync()));
        var byOtherCase = Client(server, _tls.ClientWithUris("x", [spiffeA.Replace("infer-a", "INFER-A")]), null, dataPlane);
        Assert.Equal(StatusCode.Unauthenticated, await StatusOf(() => byOtherCase.GetConfigAsync()));
        Assert.Equal(StatusCode.Unauthenticated, await StatusOf(async () => (await byOtherCase.DecodeOnceAsync(Step(id))).Dispose()));
        var ambiguous = Client(server, _tls.ClientWithUris("x", [spiffeA, spiffeB]), null, dataPlane);
        Assert.Equal(StatusCode.Unauthenticated, await StatusOf(() => ambiguous.GetConfigAsync()));
    }

    [Fact]
    public async Task Start_up_refuses_a_certificate_tenant_source_without_a_client_CA_or_a_token_file_or_that_it_does_not_know()
    {
        WriteTokenFile(TokenFilePath, Mapped());
        var cases = new (string Problem, (string, object)[] Options)[]
        {
            ("Tls:ClientCertificateTenant needs Tls:ClientCaFile", [.. _tls.ServerOptions(), ("TokenFile", TokenFilePath), ("Tls:ClientCertificateTenant", "subject-cn")]),
            ("Tls:ClientCertificateTenant needs TokenFile", [.. _tls.ServerOptions(mutual: true), ("Tls:ClientCertificateTenant", "dns-san")]),
            ("must be off, subject-cn, dns-san or uri-san", [.. _tls.ServerOptions(mutual: true), ("TokenFile", TokenFilePath), ("Tls:ClientCertificateTenant", "CN")]),
        };
        foreach (var (problem, options) in cases)
        {
            var error = await Assert.ThrowsAsync<Microsoft.Extensions.Options.OptionsValidationException>(() => TestServer.StartAsync(options));
            Assert.Contains(error.Failures, f => f.Contains(problem, StringComparison.Ordinal));
        }
    }
}
