using FlashMla.Client;
using FlashMla.Client.Transport;
using FlashMla.Core.Scheduling;
using FlashMla.Server.Hosting;
using FlashMla.Server.Security.Tls;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;

namespace FlashMla.Server.Tests;

/// <summary>A real server (Kestrel on loopback, free ports, CPU backend) for one test class or test.</summary>
public sealed class TestServer : IAsyncDisposable
{
    private readonly WebApplication _app;

    private TestServer(WebApplication app, ClientTlsOptions? clientTls)
    {
        _app = app;
        var endpoints = app.Services.GetRequiredService<BoundEndpoints>();
        // With FlashMla:Tls set both gRPC ports speak TLS; metrics stays cleartext.
        string scheme = app.Services.GetRequiredService<ServerTls>().Enabled ? "https" : "http";
        GrpcAddress = $"{scheme}://127.0.0.1:{endpoints.GrpcPort}";
        MetricsAddress = $"http://127.0.0.1:{endpoints.MetricsPort}";
        DataPlaneAddress = endpoints.DataPlanePort == 0 ? null : $"{scheme}://127.0.0.1:{endpoints.DataPlanePort}";
        Client = new FlashMlaClient(GrpcAddress, new FlashMlaClientOptions { Tls = clientTls });
    }

    public string GrpcAddress { get; }
    public string MetricsAddress { get; }

    /// <summary>The data-plane listener (flashmla.v1.Decoder only); null when the test turned it off.</summary>
    public string? DataPlaneAddress { get; }
    public FlashMlaClient Client { get; }
    public Scheduler Scheduler => _app.Services.GetRequiredService<Scheduler>();
    public IServiceProvider Services => _app.Services;

    /// <summary>
    /// Starts a server; <paramref name="options"/> are FlashMla option overrides (name, value), or measurement switches
    /// (FLASHMLA_*, which are environment variables: given here as the command-line keys of the same name), or Serilog
    /// configuration keys (Serilog:*, as <see cref="LogCapture.ServerOptions"/> gives them).
    /// </summary>
    public static Task<TestServer> StartAsync(params (string Name, object Value)[] options) => StartAsync(null, options);

    /// <summary>Starts a server whose services <paramref name="overrideServices"/> may replace (see <see cref="FlashMlaServerApp.Build"/>).</summary>
    public static Task<TestServer> StartAsync(Action<IServiceCollection>? overrideServices, params (string Name, object Value)[] options) =>
        StartAsync(overrideServices, null, options);

    /// <summary>Starts a server whose <see cref="Client"/> speaks TLS as <paramref name="clientTls"/> says (a TLS server: FlashMla:Tls options).</summary>
    public static async Task<TestServer> StartAsync(Action<IServiceCollection>? overrideServices, ClientTlsOptions? clientTls,
        params (string Name, object Value)[] options)
    {
        var args = new List<string>
        {
            "--FlashMla:GrpcPort=0", "--FlashMla:MetricsPort=0", "--FlashMla:DataPlanePort=0", "--FlashMla:ListenAddress=loopback",
            "--FlashMla:Backend=cpu", "--FlashMla:Layers=2", "--FlashMla:TotalBlocks=64", "--FlashMla:BatchWindowMicroseconds=0",
            "--Serilog:MinimumLevel:Default=Warning",
        };
        foreach (var (name, value) in options)
            args.Add(name.StartsWith("FLASHMLA_", StringComparison.Ordinal) || name.StartsWith("Serilog:", StringComparison.Ordinal)
                ? $"--{name}={value}"
                : $"--FlashMla:{name}={value}");
        var app = FlashMlaServerApp.Build([.. args], overrideServices);
        await app.StartAsync();
        return new TestServer(app, clientTls);
    }

    /// <summary>What SIGTERM does: the host stops (drain first, then Kestrel).</summary>
    public Task StopAsync() => _app.StopAsync();

    public async ValueTask DisposeAsync()
    {
        Client.Dispose();
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
