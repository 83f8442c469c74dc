using System.Net;
using System.Net.Sockets;
using FlashMla.Core.Memory;
using FlashMla.Core.Telemetry;
using FlashMla.Server.Hosting;
using FlashMla.Server.Services;
using Microsoft.Extensions.Options;

namespace FlashMla.Server.DataPlane;

/// <summary>
/// The data-plane port (option DataPlanePort): a listener of its own, beside Kestrel, that serves
/// flashmla.v1.Decoder (and KV ingest, flashmla.v1.KvCache/AppendKv), over HTTP/2 cleartext with prior knowledge, with tensors received straight into
/// page-locked buffers and sent straight from them (docs/architecture.md, "Why the data plane is a hot path").
/// Health, reflection and the KvCache service stay on the gRPC port. On shutdown it stops accepting, sends GOAWAY, ends open decode
/// streams with UNAVAILABLE once their in-flight requests are answered, and closes what is left after the drain timeout.
/// </summary>
public sealed class DataPlaneListener(DecoderService service, KvCacheService kvCache, RequestFailures failures, IOptions<FlashMlaOptions> options,
    BoundEndpoints endpoints, FlashMlaMetrics metrics, ILogger<DataPlaneListener> logger, PinnedTensorPool tensorBuffers,
    Security.TenantDirectory tenants) : IHostedService
{
    private readonly HashSet<DataPlaneConnection> _connections = [];
    private readonly List<Task> _running = [];
    private readonly object _lock = new();
    private Socket? _listener;
    private Task? _acceptLoop;
    private DataPlaneDispatcher? _dispatcher;

    public Task StartAsync(CancellationToken cancellationToken)
    {
        var o = options.Value;
        if (o.DataPlanePort < 0) return Task.CompletedTask;
        var address = o.ListenAddress == "loopback" ? IPAddress.Loopback : IPAddress.Any;
        var listener = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        listener.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
        listener.Bind(new IPEndPoint(address, o.DataPlanePort));
        listener.Listen(512);
        _listener = listener;
        endpoints.DataPlanePort = ((IPEndPoint)listener.LocalEndPoint!).Port;
        _dispatcher = new DataPlaneDispatcher(service, kvCache, failures, metrics, tenants, logger);
        _acceptLoop = AcceptAsync(listener);
        return Task.CompletedTask;
    }

    private async Task AcceptAsync(Socket listener)
    {
        while (true)
        {
            Socket socket;
            try
            {
                socket = await listener.AcceptAsync().ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is SocketException or ObjectDisposedException)
            {
                return; // stopped
            }
            // Large socket buffers and no Nagle: megabyte messages one way, small control frames the other.
            socket.NoDelay = true;
            socket.SendBufferSize = 4 << 20;
            socket.ReceiveBufferSize = 4 << 20;
            var connection = new DataPlaneConnection(socket, _dispatcher!, options.Value.MaxMessageBytes, tensorBuffers.WithinBudget,
                options.Value.MaxStreamsPerConnection);
            _dispatcher!.ConnectionOpened();
            lock (_lock)
            {
                _connections.Add(connection);
                _running.RemoveAll(static t => t.IsCompleted);
                _running.Add(Task.Run(async () =>
                {
                    await connection.RunAsync().ConfigureAwait(false);
                    _dispatcher.ConnectionClosed();
                    lock (_lock) _connections.Remove(connection);
                }));
            }
        }
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (_listener is null) return;
        _listener.Dispose();
        if (_acceptLoop is not null) await _acceptLoop.ConfigureAwait(false);
        DataPlaneConnection[] connections;
        Task[] running;
        lock (_lock)
        {
            connections = [.. _connections];
            running = [.. _running];
        }
        foreach (var connection in connections) connection.BeginShutdown();
        var drained = WaitForCallsAsync(connections);
        var timeout = TimeSpan.FromSeconds(options.Value.DrainTimeoutSeconds);
        if (await Task.WhenAny(drained, Task.Delay(timeout, CancellationToken.None)).ConfigureAwait(false) != drained)
            logger.LogWarning("Data-plane calls still open after {Timeout}; closing their connections", timeout);
        foreach (var connection in connections) connection.Abort();
        await Task.WhenAll(running).ConfigureAwait(false);
    }

    private static async Task WaitForCallsAsync(DataPlaneConnection[] connections)
    {
        while (connections.Any(c => c.ActiveCalls > 0)) await Task.Delay(20).ConfigureAwait(false);
    }
}
