using System.Net;
using System.Net.Sockets;
using System.Security.Authentication;
using FlashMla.Core.Memory;
using FlashMla.Core.Telemetry;
using FlashMla.Server.Hosting;
using FlashMla.Server.Security.Tls;
using FlashMla.Server.Services;
using Microsoft.Extensions.Options;

namespace FlashMla.Server.DataPlane;

/// <summary>
/// The data-plane port (option DataPlanePort): a listener of its own, beside Kestrel, that serves
/// flashmla.v1.Decoder only, over HTTP/2 with prior knowledge (cleartext, or TLS when FlashMla:Tls has a certificate), with tensors received straight into
/// page-locked buffers and sent straight from them (docs/architecture.md, "Why the data plane is a hot path").
/// Health, reflection and the KvCache service stay on the gRPC port. On shutdown it stops accepting, sends GOAWAY, ends open decode
/// streams with UNAVAILABLE once their in-flight requests are answered, and closes what is left after the drain timeout.
/// </summary>
public sealed class DataPlaneListener(DecoderService service, RequestFailures failures, IOptions<FlashMlaOptions> options,
    BoundEndpoints endpoints, FlashMlaMetrics metrics, ILogger<DataPlaneListener> logger, PinnedTensorPool tensorBuffers, ServerTls tls) : IHostedService
{
    private readonly HashSet<DataPlaneConnection> _connections = [];
    private readonly List<Task> _running = [];
    private readonly object _lock = new();
    private readonly CancellationTokenSource _stopping = new(); // ends handshakes in progress
    private bool _stopped; // under _lock
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
        _dispatcher = new DataPlaneDispatcher(service, failures, metrics, logger);
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
            lock (_lock)
            {
                _running.RemoveAll(static t => t.IsCompleted);
                _running.Add(Task.Run(() => ServeAsync(socket)));
            }
        }
    }

    /// <summary>One accepted socket: its transport (the TLS handshake, when on), then the connection until it ends.</summary>
    private async Task ServeAsync(Socket socket)
    {
        Stream transport;
        try
        {
            transport = await tls.AcceptAsync(socket, _stopping.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is AuthenticationException or IOException or OperationCanceledException or SocketException or ObjectDisposedException)
        {
            // A scanner, a client without (or with an untrusted) certificate, a stalled handshake: as Kestrel, at Debug.
            logger.LogDebug("Data-plane TLS handshake with {Peer} failed: {Reason}", socket.RemoteEndPoint, ex.Message);
            socket.Dispose();
            return;
        }
        DataPlaneConnection? connection = null;
        lock (_lock)
        {
            if (!_stopped) _connections.Add(connection = new DataPlaneConnection(socket, transport, _dispatcher!, options.Value.MaxMessageBytes, tensorBuffers));
        }
        if (connection is null) // the listener stopped while the handshake ran
        {
            await transport.DisposeAsync().ConfigureAwait(false);
            socket.Dispose();
            return;
        }
        _dispatcher!.ConnectionOpened();
        await connection.RunAsync().ConfigureAwait(false);
        _dispatcher.ConnectionClosed();
        lock (_lock) _connections.Remove(connection);
    }

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (_listener is null) return;
        _listener.Dispose();
        if (_acceptLoop is not null) await _acceptLoop.ConfigureAwait(false);
        await _stopping.CancelAsync().ConfigureAwait(false);
        DataPlaneConnection[] connections;
        Task[] running;
        lock (_lock)
        {
            _stopped = true;
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
