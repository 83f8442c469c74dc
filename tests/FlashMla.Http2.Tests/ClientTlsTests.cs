using System.Net;
using System.Net.Security;
using System.Security.Cryptography.X509Certificates;
using FlashMla.Cli;
using FlashMla.Client.Transport;

namespace FlashMla.Http2.Tests;

/// <summary>
/// The client role over TLS (https://) against a scripted server: ALPN h2, the preface and the https scheme inside
/// TLS, and the refusals (no h2 by ALPN, a certificate the client does not trust or that names another server).
/// </summary>
public sealed class ClientTlsTests : IDisposable
{
    private readonly string _directory = Path.Combine(Path.GetTempPath(), "flashmla-client-tls-" + Guid.NewGuid().ToString("N"));
    private readonly X509Certificate2 _authority = DevCertificates.CreateAuthority("scripted test CA");

    public ClientTlsTests()
    {
        Directory.CreateDirectory(_directory);
        DevCertificates.Write(_authority, CaFile);
    }

    private string CaFile => Path.Combine(_directory, "ca.crt");

    private X509Certificate2 Certificate(params string[] names) => DevCertificates.IssueServer(_authority, names, names.Length == 0 ? [IPAddress.Loopback] : []);

    private static HttpRequestMessage Post(string address) => new(HttpMethod.Post, address + "/svc/Method") { Version = HttpVersion.Version20 };

    [Fact]
    public async Task Over_https_the_client_chooses_h2_by_ALPN_and_sends_the_preface_and_the_https_scheme_inside_TLS()
    {
        using var server = new ScriptedHttp2Server(Certificate());
        using var invoker = new HttpMessageInvoker(new LargeFrameHttp2Handler(new LargeFrameHttp2Options { Tls = new ClientTlsOptions { CaFile = CaFile } }));
        var send = invoker.SendAsync(Post(server.Address), default);
        using var connection = await server.AcceptAsync(); // checks the preface, read through TLS
        Assert.Equal(SslApplicationProtocol.Http2, server.NegotiatedProtocol);
        await connection.HandshakeAsync();
        var (headers, block) = await connection.ReadFrameAsync(Http2FrameType.Headers);
        var fields = new List<KeyValuePair<string, string>>();
        new HpackDecoder(4096).Decode(block, fields);
        Assert.Contains(new KeyValuePair<string, string>(":scheme", "https"), fields);

        await connection.WriteAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders | Http2FrameFlags.EndStream, headers.StreamId, ScriptedConnection.Headers(204));
        using var response = await send.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(HttpStatusCode.NoContent, response.StatusCode);
    }

    [Fact]
    public async Task A_server_that_does_not_choose_h2_by_ALPN_fails_the_request_before_any_HTTP_2_is_sent()
    {
        using var server = new ScriptedHttp2Server(Certificate(), SslApplicationProtocol.Http11);
        using var invoker = new HttpMessageInvoker(new LargeFrameHttp2Handler(new LargeFrameHttp2Options { Tls = new ClientTlsOptions { CaFile = CaFile } }));
        var send = invoker.SendAsync(Post(server.Address), default);
        var accepting = server.AcceptAsync(); // the handshake completes; the preface never comes
        var error = await Assert.ThrowsAsync<HttpRequestException>(() => send.WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Equal(HttpRequestError.SecureConnectionError, error.HttpRequestError);
        // The server refuses first (OpenSSL: "no application protocol"); a server that went on without ALPN would be refused by the client.
        Assert.Contains("application protocol", error.Message);
        await Assert.ThrowsAnyAsync<Exception>(() => accepting);
    }

    [Fact]
    public async Task A_certificate_the_client_does_not_trust_or_that_names_another_server_fails_the_request()
    {
        using var untrusted = DevCertificates.CreateAuthority("another CA");
        using (var server = new ScriptedHttp2Server(DevCertificates.IssueServer(untrusted, [], [IPAddress.Loopback])))
            await AssertRefusedAsync(server, new ClientTlsOptions { CaFile = CaFile });

        using (var server = new ScriptedHttp2Server(Certificate("flashmla.inference.svc")))
        {
            // By IP, the certificate's name does not match: refused; told the name to expect, the same server is accepted.
            await AssertRefusedAsync(server, new ClientTlsOptions { CaFile = CaFile });
            using var invoker = new HttpMessageInvoker(new LargeFrameHttp2Handler(new LargeFrameHttp2Options
                { Tls = new ClientTlsOptions { CaFile = CaFile, ServerName = "flashmla.inference.svc" } }));
            var send = invoker.SendAsync(Post(server.Address), default);
            using var connection = await server.AcceptAsync();
            await connection.HandshakeAsync();
            var (headers, _) = await connection.ReadFrameAsync(Http2FrameType.Headers);
            await connection.WriteAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders | Http2FrameFlags.EndStream, headers.StreamId, ScriptedConnection.Headers(204));
            using var response = await send.WaitAsync(TimeSpan.FromSeconds(10));
            Assert.Equal(HttpStatusCode.NoContent, response.StatusCode);
        }
    }

    private static async Task AssertRefusedAsync(ScriptedHttp2Server server, ClientTlsOptions tls)
    {
        using var invoker = new HttpMessageInvoker(new LargeFrameHttp2Handler(new LargeFrameHttp2Options { Tls = tls }));
        var send = invoker.SendAsync(Post(server.Address), default);
        var accepting = server.AcceptAsync();
        var error = await Assert.ThrowsAsync<HttpRequestException>(() => send.WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Equal(HttpRequestError.SecureConnectionError, error.HttpRequestError);
        await Assert.ThrowsAnyAsync<Exception>(() => accepting);
    }

    public void Dispose()
    {
        _authority.Dispose();
        Directory.Delete(_directory, recursive: true);
    }
}
