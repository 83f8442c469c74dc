using System.Diagnostics;
using FlashMla.Client;
using Grpc.Core;

namespace FlashMla.Server.Tests.Security;

/// <summary>
/// The data-plane port with TLS and a token file at once: the handshake comes first, then each call's bearer token
/// decides who it is (a call without one is refused, another tenant's sequence is not found), and on shutdown a
/// decode stream over TLS is drained like a cleartext one: its answered request stays answered, the stream ends
/// with UNAVAILABLE, and the stop does not wait for the drain's deadline.
/// </summary>
public sealed class TlsTenantDataPlaneTests : IDisposable
{
    private readonly TlsFixture _tls = new();
    private readonly string _tokens = Directory.CreateTempSubdirectory("flashmla-tokens-").FullName;

    public void Dispose()
    {
        _tls.Dispose();
        Directory.Delete(_tokens, recursive: true);
    }

    [Fact]
    public async Task Over_TLS_the_data_plane_authenticates_each_tenant_and_drains_its_streams_on_shutdown()
    {
        const double drainSeconds = 20;
        string tokenFile = Path.Combine(_tokens, "tokens.json");
        TenantServer.WriteTokenFile(tokenFile, TenantServer.DefaultTenants);
        var server = await TestServer.StartAsync(null, _tls.Client(), [.. _tls.ServerOptions(), ("TokenFile", tokenFile), ("DrainTimeoutSeconds", drainSeconds)]);
        try
        {
            Assert.StartsWith("https://", server.DataPlaneAddress);
            FlashMlaClient Client(string? token) => new(server.GrpcAddress,
                new FlashMlaClientOptions { Tls = _tls.Client(), BearerToken = token, DecodeAddress = server.DataPlaneAddress });
            using var tenantA = Client(TenantServer.TokenA);
            using var tenantB = Client(TenantServer.TokenB);
            using var anonymous = Client(null);

            ulong id = await tenantA.CreateSequenceAsync();
            await tenantA.AppendKvAsync(id, 0, Random16.Bf16(new Random(1), 10 * 576)); // ingest on the data plane, over TLS
            var input = new DecodeInput(0, [id], 1, 16, Random16.Bf16(new Random(2), 16 * 576));
            using (var output = await tenantA.DecodeOnceAsync(input)) Assert.Equal(16, output.Lse.Length);

            var unauthenticated = await Assert.ThrowsAsync<RpcException>(async () => (await anonymous.DecodeOnceAsync(input)).Dispose());
            Assert.Equal(StatusCode.Unauthenticated, unauthenticated.StatusCode);
            var foreign = await Assert.ThrowsAsync<RpcException>(async () => (await tenantB.DecodeOnceAsync(input)).Dispose());
            Assert.Equal(StatusCode.NotFound, foreign.StatusCode);

            await using var stream = tenantA.OpenDecodeStream();
            using (var output = await stream.DecodeAsync(input)) Assert.Equal(16, output.Lse.Length);
            var clock = Stopwatch.StartNew();
            await server.StopAsync().WaitAsync(TimeSpan.FromSeconds(drainSeconds + 5));
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(drainSeconds / 2), $"the stop took {clock.Elapsed}: the TLS connection waited for the deadline");
            var ended = await Assert.ThrowsAsync<RpcException>(async () => (await stream.DecodeAsync(input)).Dispose());
            Assert.Equal(StatusCode.Unavailable, ended.StatusCode);
        }
        finally
        {
            await server.DisposeAsync();
        }
    }
}
