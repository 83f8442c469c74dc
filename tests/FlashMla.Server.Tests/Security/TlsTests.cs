using System.Diagnostics;
using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using FlashMla.Cli;
using FlashMla.Client;
using FlashMla.Client.Transport;
using FlashMla.Http2;
using Grpc.Core;
using Serilog.Events;

namespace FlashMla.Server.Tests.Security;

/// <summary>
/// TLS on the gRPC port (Kestrel) and the data-plane port (the service's own listener), over real loopback sockets:
/// the handshake and ALPN, calls through the client library over TLS on both ports, a rotated certificate taken
/// up without dropping open connections, mTLS, and cleartext as the default.
/// </summary>
public sealed class TlsTests : IDisposable
{
    private readonly TlsFixture _tls = new();

    public void Dispose() => _tls.Dispose();

    [Fact]
    public async Task Both_ports_complete_a_TLS_handshake_choosing_h2_by_ALPN_with_the_configured_certificate()
    {
        await using var server = await TestServer.StartAsync(null, _tls.Client(), _tls.ServerOptions());
        string expected = _tls.ServerCertificate().Thumbprint;
        foreach (string address in new[] { server.GrpcAddress, server.DataPlaneAddress! })
        {
            Assert.StartsWith("https://", address);
            await using var ssl = await _tls.HandshakeAsync(address);
            Assert.Equal(SslApplicationProtocol.Http2, ssl.NegotiatedApplicationProtocol);
            Assert.True(ssl.SslProtocol is SslProtocols.Tls12 or SslProtocols.Tls13, $"{address}: {ssl.SslProtocol}");
            Assert.Equal(expected, new X509Certificate2(ssl.RemoteCertificate!).Thumbprint);
            // HTTP/2 inside: the server's first frame is SETTINGS.
            await ssl.WriteAsync(Http2Frames.Preface.ToArray());
            var head = new byte[Http2FrameHeader.Size];
            await ssl.ReadExactlyAsync(head).AsTask().WaitAsync(TimeSpan.FromSeconds(10));
            Assert.Equal(Http2FrameType.Settings, Http2FrameHeader.Read(head).Type);
        }
    }

    [Fact]
    public async Task Cache_and_decode_calls_through_the_client_over_TLS_on_both_ports_match_the_float64_reference()
    {
        await using var server = await TestServer.StartAsync(null, _tls.Client(), _tls.ServerOptions());
        var counters = new Http2TransportCounters();
        foreach (string? decodeAddress in new[] { null, server.DataPlaneAddress })
        {
            using var client = new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { Tls = _tls.Client(), DecodeAddress = decodeAddress, Counters = counters });
            var report = await VerifyRun.RunAsync(client, new VerifySettings(Cases: 2, MaxLength: 130, LongLength: 0, Seed: 3), CancellationToken.None);
            Assert.True(report.Passed, $"decode on {decodeAddress ?? "the gRPC port"}: worst out error {report.WorstOut}, lse {report.WorstLse}");
            Assert.Equal(2, report.Cases.Count);
        }
        // The library's own HTTP/2 path carried the calls over TLS (SocketsHttpHandler would not count here), with its large frames.
        Assert.True(counters.DataBytesSent > 100_000, counters.ToString());
        Assert.True(counters.LargestDataFrameReceived > 16 * 1024 || counters.LargestDataFrameSent > 16 * 1024, counters.ToString());
    }

    [Fact]
    public async Task A_rotated_certificate_serves_new_handshakes_on_both_ports_while_open_connections_keep_working()
    {
        var log = new LogCapture();
        await using var server = await TestServer.StartAsync(null, _tls.Client(), [.. _tls.ServerOptions(reloadSeconds: 0.1), .. log.ServerOptions, ("Serilog:MinimumLevel:Default", "Information")]);
        string before = _tls.ServerCertificate().Thumbprint;
        var counters = new Http2TransportCounters();
        using var client = new FlashMlaClient(server.GrpcAddress,
            new FlashMlaClientOptions { Tls = _tls.Client(), DecodeAddress = server.DataPlaneAddress, Counters = counters });
        ulong id = await client.CreateSequenceAsync();
        var rows = Random16.Bf16(new Random(5), 70 * 576);
        await client.AppendKvAsync(id, 0, rows);
        await using var stream = client.OpenDecodeStream();
        var input = new DecodeInput(0, [id], 1, 16, Random16.Bf16(new Random(6), 16 * 576));
        ushort[] first;
        using (var output = await stream.DecodeAsync(input)) first = output.Out.ToArray();
        Assert.Equal(2, counters.ConnectionsOpened); // one to each port

        string after = _tls.RotateServerCertificate().Thumbprint;
        Assert.NotEqual(before, after);
        foreach (string address in new[] { server.GrpcAddress, server.DataPlaneAddress! })
            Assert.True(after == await ThumbprintOnceItChangesAsync(address, before), string.Join("\n", log.Events.Select(e => e.RenderMessage() + e.Exception)));
        Assert.Contains(log.Events, e => e.Level == LogEventLevel.Information && e.MessageTemplate.Text.StartsWith("TLS certificate reloaded", StringComparison.Ordinal));
        Assert.DoesNotContain(log.Events, e => e.Level >= LogEventLevel.Error);

        // The connections opened before the rotation still carry calls: cache calls on one, the open decode stream on the other.
        Assert.Equal(rows, await client.ReadKvAsync(id, 0));
        using (var output = await stream.DecodeAsync(input)) Assert.Equal(first, output.Out.ToArray());
        Assert.Equal(2, counters.ConnectionsOpened);
    }

    private async Task<string> ThumbprintOnceItChangesAsync(string address, string before)
    {
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (true)
        {
            await using var ssl = await _tls.HandshakeAsync(address);
            string seen = new X509Certificate2(ssl.RemoteCertificate!).Thumbprint;
            if (seen != before || DateTime.UtcNow > deadline) return seen;
            await Task.Delay(50);
        }
    }

    [Fact]
    public async Task With_a_client_CA_both_ports_refuse_a_client_without_a_certificate_and_serve_one_with()
    {
        await using var server = await TestServer.StartAsync(null, _tls.Client(withClientCertificate: true), _tls.ServerOptions(mutual: true));

        using (var anonymous = new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { Tls = _tls.Client(), DecodeAddress = server.DataPlaneAddress }))
        {
            var cache = await Assert.ThrowsAsync<RpcException>(() => anonymous.GetConfigAsync());
            Assert.Equal(StatusCode.Unavailable, cache.StatusCode);
            var decode = await Assert.ThrowsAsync<RpcException>(() => anonymous.DecodeOnceAsync(new DecodeInput(0, [1], 1, 16, new ushort[16 * 576])));
            Assert.Equal(StatusCode.Unavailable, decode.StatusCode);
        }
        foreach (string address in new[] { server.GrpcAddress, server.DataPlaneAddress! })
            Assert.True(await RefusedAsync(address, null), $"{address} served a client without a certificate");

        // A certificate of another CA is refused as well.
        using (var stranger = DevCertificates.CreateAuthority("not the server's client CA"))
        using (var foreign = DevCertificates.IssueClient(stranger, "stranger"))
            foreach (string address in new[] { server.GrpcAddress, server.DataPlaneAddress! })
                Assert.True(await RefusedAsync(address, foreign), $"{address} served a client certificate of an unknown CA");

        using var trusted = new FlashMlaClient(server.GrpcAddress,
            new FlashMlaClientOptions { Tls = _tls.Client(withClientCertificate: true), DecodeAddress = server.DataPlaneAddress });
        ulong id = await trusted.CreateSequenceAsync();
        await trusted.AppendKvAsync(id, 0, Random16.Bf16(new Random(1), 3 * 576));
        using var output = await trusted.DecodeOnceAsync(new DecodeInput(0, [id], 1, 16, Random16.Bf16(new Random(2), 16 * 576)));
        Assert.Equal(16 * 512, output.Out.Length);
    }

    /// <summary>
    /// Whether the port refuses the client: the handshake fails, or (TLS 1.3, where the client finishes before the
    /// server has checked its certificate) the connection ends before the server's first HTTP/2 frame.
    /// </summary>
    private async Task<bool> RefusedAsync(string address, X509Certificate2? clientCertificate)
    {
        SslStream ssl;
        try
        {
            ssl = await _tls.HandshakeAsync(address, clientCertificate);
        }
        catch (Exception ex) when (ex is AuthenticationException or IOException)
        {
            return true;
        }
        await using (ssl)
        {
            try
            {
                await ssl.WriteAsync(Http2Frames.Preface.ToArray());
                var head = new byte[Http2FrameHeader.Size];
                int n = await ssl.ReadAtLeastAsync(head, head.Length, throwOnEndOfStream: false).AsTask().WaitAsync(TimeSpan.FromSeconds(10));
                return n < head.Length;
            }
            catch (Exception ex) when (ex is AuthenticationException or IOException)
            {
                return true;
            }
        }
    }

    [Fact]
    public async Task The_start_up_log_says_cleartext_or_TLS_for_each_port()
    {
        var plain = new LogCapture();
        await using (var server = await TestServer.StartAsync([.. plain.ServerOptions, ("Serilog:MinimumLevel:Default", "Information")]))
            Assert.StartsWith("http://", server.DataPlaneAddress);
        var secured = new LogCapture();
        await using (var server = await TestServer.StartAsync(null, _tls.Client(withClientCertificate: true),
            [.. secured.ServerOptions, ("Serilog:MinimumLevel:Default", "Information"), .. _tls.ServerOptions(mutual: true)]))
            Assert.StartsWith("https://", server.DataPlaneAddress);

        var plainLine = StartupLine(plain);
        Assert.Equal("cleartext h2c", Property(plainLine, "GrpcTransport"));
        Assert.Equal("cleartext h2c", Property(plainLine, "DataPlaneTransport"));
        var securedLine = StartupLine(secured);
        foreach (string port in new[] { "GrpcTransport", "DataPlaneTransport" })
        {
            string said = Property(securedLine, port);
            Assert.StartsWith("TLS 1.2/1.3, ALPN h2, certificate CN=localhost", said);
            Assert.Contains("client certificates required", said);
        }
        Assert.Contains("metrics on port", securedLine.MessageTemplate.Text);
        Assert.Contains("(cleartext HTTP/1.1)", securedLine.MessageTemplate.Text);
    }

    [Fact]
    public async Task The_SocketsHttpHandler_transport_trusts_the_same_CA_and_checks_a_given_server_name()
    {
        await using var server = await TestServer.StartAsync(null, _tls.Client(), _tls.ServerOptions());
        foreach (string? decodeAddress in new[] { null, server.DataPlaneAddress })
        {
            using var client = new FlashMlaClient(server.GrpcAddress,
                new FlashMlaClientOptions { Transport = ClientTransport.SocketsHttpHandler, Tls = _tls.Client() with { ServerName = "localhost" }, DecodeAddress = decodeAddress });
            ulong id = await client.CreateSequenceAsync();
            await client.AppendKvAsync(id, 0, Random16.Bf16(new Random(3), 2 * 576));
            using var output = await client.DecodeOnceAsync(new DecodeInput(0, [id], 1, 16, Random16.Bf16(new Random(4), 16 * 576)));
            Assert.Equal(16 * 512, output.Out.Length);
        }
        using var wrongName = new FlashMlaClient(server.GrpcAddress,
            new FlashMlaClientOptions { Transport = ClientTransport.SocketsHttpHandler, Tls = _tls.Client() with { ServerName = "elsewhere.example" } });
        using var untrusting = new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { Transport = ClientTransport.SocketsHttpHandler });
        using var untrustingLargeFrames = new FlashMlaClient(server.GrpcAddress);
        // Grpc.Net.Client reports a handshake the client refused as INTERNAL ("Error starting gRPC call"), over either transport.
        foreach (var refusing in new[] { wrongName, untrusting, untrustingLargeFrames })
        {
            var error = await Assert.ThrowsAsync<RpcException>(() => refusing.GetConfigAsync());
            Assert.Equal(StatusCode.Internal, error.StatusCode);
            Assert.Contains("certificate", error.Status.Detail);
        }
    }

    [Fact]
    public async Task A_cluster_from_DNS_with_TLS_dials_each_replica_by_IP_over_https_and_expects_the_DNS_name_in_its_certificate()
    {
        await using var server = await TestServer.StartAsync(null, _tls.Client(), _tls.ServerOptions());
        int grpcPort = new Uri(server.GrpcAddress).Port, dataPlanePort = new Uri(server.DataPlaneAddress!).Port;
        using var cluster = await FlashMla.Client.Routing.FlashMlaCluster.FromDnsAsync("localhost", grpcPort, new FlashMlaClientOptions { Tls = _tls.Client() }, dataPlanePort);
        Assert.All(cluster.Ring.Replicas, r => Assert.StartsWith("https://", r));
        // The server listens on 127.0.0.1 only (localhost may resolve to ::1 too); its certificate names localhost.
        var replica = cluster.ClientFor($"https://127.0.0.1:{grpcPort}");
        ulong id = await replica.CreateSequenceAsync();
        await replica.AppendKvAsync(id, 0, Random16.Bf16(new Random(3), 2 * 576));
        using var output = await replica.DecodeOnceAsync(new DecodeInput(0, [id], 1, 16, Random16.Bf16(new Random(4), 16 * 576)));
        Assert.Equal(16 * 512, output.Out.Length);
    }

    [Fact]
    public async Task A_certificate_that_expires_within_two_weeks_is_logged_as_a_warning_and_a_fresh_one_is_not()
    {
        var log = new LogCapture();
        await using (await TestServer.StartAsync(null, _tls.Client(), [.. _tls.ServerOptions(), .. log.ServerOptions]))
        {
            await Task.Delay(300);
            Assert.DoesNotContain(log.Events, e => e.MessageTemplate.Text.StartsWith("The TLS certificate", StringComparison.Ordinal));
        }
        using (var authority = X509Certificate2.CreateFromPemFile(_tls.Files.Ca, Path.Combine(_tls.Directory, "ca.key")))
        using (var soon = DevCertificates.IssueServer(authority, ["localhost"], [System.Net.IPAddress.Loopback], days: 3))
            DevCertificates.Write(soon, _tls.Files.Certificate, _tls.Files.Key);
        var expiring = new LogCapture();
        await using (await TestServer.StartAsync(null, _tls.Client(), [.. _tls.ServerOptions(), .. expiring.ServerOptions]))
        {
            var deadline = DateTime.UtcNow.AddSeconds(10);
            // Wait for the certificate's warning itself: the "authentication off" warning can come first.
            while (!expiring.Events.Any(e => e.MessageTemplate.Text.StartsWith("The TLS certificate", StringComparison.Ordinal)) && DateTime.UtcNow < deadline)
                await Task.Delay(50);
            var warning = Assert.Single(expiring.Events, e => e.MessageTemplate.Text.StartsWith("The TLS certificate", StringComparison.Ordinal));
            Assert.Equal(LogEventLevel.Warning, warning.Level);
            Assert.Contains("expires in 3.0 days", warning.RenderMessage());
        }
    }

    [Fact]
    public async Task Start_up_refuses_half_a_TLS_configuration_and_files_that_do_not_hold_a_matching_certificate_and_key()
    {
        string wrongKey = Path.Combine(_tls.Directory, "client.key"); // a key, but of the client certificate
        var cases = new (string Problem, (string, object)[] Options)[]
        {
            ("Tls:CertificateFile and Tls:KeyFile go together", [("Tls:KeyFile", _tls.Files.Key)]),
            ("Tls:ClientCaFile needs Tls:CertificateFile", [("Tls:ClientCaFile", _tls.Files.Ca)]),
            ("cannot be read", [("Tls:CertificateFile", Path.Combine(_tls.Directory, "missing.crt")), ("Tls:KeyFile", _tls.Files.Key)]),
            ("does not match", [("Tls:CertificateFile", _tls.Files.Certificate), ("Tls:KeyFile", wrongKey)]),
            ("holds no PEM certificate", [.. _tls.ServerOptions(), ("Tls:ClientCaFile", _tls.Files.Key)]),
        };
        foreach (var (problem, options) in cases)
        {
            var error = await Assert.ThrowsAsync<Microsoft.Extensions.Options.OptionsValidationException>(() => TestServer.StartAsync(options));
            Assert.Contains(error.Failures, f => f.Contains(problem, StringComparison.Ordinal));
        }
    }

    /// <summary>
    /// TLS and a token file at once on the data-plane port: the handshake first, then each call's bearer token decides
    /// who it is (none: refused; another tenant's sequence: not found), and on shutdown a decode stream over TLS is
    /// drained like a cleartext one (its answered request stays answered, it ends with UNAVAILABLE, and the stop does
    /// not wait for the drain's deadline).
    /// </summary>
    [Fact]
    public async Task Over_TLS_the_data_plane_authenticates_each_tenant_and_drains_its_streams_on_shutdown()
    {
        const double drainSeconds = 20;
        string tokenFile = Path.Combine(_tls.Directory, "tokens.json"); // deleted with the certificates
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

    private static LogEvent StartupLine(LogCapture capture) =>
        Assert.Single(capture.Events, e => e.MessageTemplate.Text.StartsWith("FlashMLA service on", StringComparison.Ordinal));

    private static string Property(LogEvent e, string name) => ((ScalarValue)e.Properties[name]).Value!.ToString()!;
}
