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
/// flashmla.v1.Decoder (and KV ingest, flashmla.v1.KvCache/AppendKv), over HTTP/2 with prior knowledge (cleartext, or TLS
/// when FlashMla:Tls has a certificate), with tensors received straight into
/// page-locked buffers and sent straight from them (docs/architecture.md, "Why the data plane is a hot path").
/// Health, reflection and the KvCache service stay on the gRPC port. On shutdown (<see cref="DrainAsync"/>, which
/// <see cref="GracefulShutdown"/> calls at once with Kestrel's stop) it stops accepting connections, sends GOAWAY on
/// every connection, ends open decode streams with UNAVAILABLE once the requests they read are answered, closes each
/// connection gracefully when its calls are done, and closes what is left at the drain's deadline.
/// </summary>
public sealed class DataPlaneListener(DecoderService service, KvCacheService kvCache, RequestFailures failures, IOptions<FlashMlaOptions> options,
    BoundEndpoints endpoints, FlashMlaMetrics metrics, ILogger<DataPlaneListener> logger, PinnedTensorPool tensorBuffers,
    Security.TenantDirectory tenants, ServerTls tls) : IHostedService
{
    private readonly HashSet<DataPlaneConnection> _connections = [];
    private readonly List<Task> _running = [];
    private readonly object _lock = new();
    private readonly CancellationTokenSource _handshakes = new(); // cancelled by the drain: ends TLS handshakes in progress
    private Socket? _listener;
    private Task? _acceptLoop;
    private DataPlaneDispatcher? _dispatcher;
    private Task? _drain; // under _lock
    private ConnectionTimeouts? _timeouts;
    private readonly CancellationTokenSource _stopWatching = new();
    private Task? _timeoutWatch;
    private bool _stopping; // under _lock
    private int _open; // accepted sockets not yet closed, in their TLS handshake or served; under _lock
    private int _maxConnections; // FlashMlaOptions.MaxConnectionsPerPort; 0: no limit
    private long _refused; // connections closed at the accept for the limit; under _lock

    /// <summary>The buffers each connection reads and writes frames through, and under TLS sends and receives its records
    /// through (pinned-heap arrays, retention capped).</summary>
    internal ConnectionBufferPool IoBuffers { get; } = new(FlashMla.Http2.Http2FrameReader.BufferSize, FlashMla.Http2.Http2FrameWriter.ScratchSize,
        FlashMla.Http2.TlsRecordBatchingStream.BufferSize);

    /// <summary>Connections closed as they were accepted because <see cref="FlashMlaOptions.MaxConnectionsPerPort"/> were open; under the lock.</summary>
    public long RefusedConnections
    {
        get
        {
            lock (_lock) return _refused;
        }
    }

    /// <summary>Connections open now: accepted and not yet closed, counted from the accept (a socket still in its TLS
    /// handshake, or not yet picked up by its task, is open too).</summary>
    public int OpenConnections
    {
        get
        {
            lock (_lock) return _open;
        }
    }

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
        _timeouts = o.ToConnectionTimeouts();
        _maxConnections = o.MaxConnectionsPerPort;
        _acceptLoop = AcceptAsync(listener);
        _timeoutWatch = WatchTimeoutsAsync(_stopWatching.Token);
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
                if (_stopping)
                {
                    // Accepted as the listener closed: the drain has begun, so the client is told nothing but a close.
                    socket.Dispose();
                    continue;
                }
                if (_maxConnections > 0 && _open >= _maxConnections)
                {
                    // Over MaxConnectionsPerPort: closed before any byte (or TLS handshake) is spent on it, as Kestrel
                    // does on the gRPC port; the client sees its connection fail (UNAVAILABLE).
                    socket.Dispose();
                    _refused++;
                    metrics.DataPlaneConnectionsRefused.Add(1);
                    continue;
                }
                _open++;
                _running.RemoveAll(static t => t.IsCompleted);
                _running.Add(Task.Run(async () =>
                {
                    try
                    {
                        await ServeAsync(socket).ConfigureAwait(false);
                    }
                    finally
                    {
                        lock (_lock) _open--;
                    }
                }));
            }
        }
    }

    /// <summary>One accepted socket: its transport (the TLS handshake, when on), then the connection until it ends.</summary>
    private async Task ServeAsync(Socket socket)
    {
        Stream transport;
        try
        {
            transport = await tls.AcceptAsync(socket, _handshakes.Token, IoBuffers).ConfigureAwait(false);
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
            if (!_stopping)
                _connections.Add(connection = new DataPlaneConnection(socket, transport, _dispatcher!, options.Value.MaxMessageBytes,
                    tensorBuffers.WithinBudget, options.Value.MaxStreamsPerConnection, _timeouts!, IoBuffers));
        }
        if (connection is null) // the drain began while the handshake ran
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

    /// <summary>How often every connection's timeouts are checked: one timer for all of them, not one per connection.</summary>
    private static readonly TimeSpan TimeoutCheckInterval = TimeSpan.FromMilliseconds(250);

    private async Task WatchTimeoutsAsync(CancellationToken stop)
    {
        using var timer = new PeriodicTimer(TimeoutCheckInterval);
        try
        {
            while (await timer.WaitForNextTickAsync(stop).ConfigureAwait(false))
            {
                DataPlaneConnection[] connections;
                lock (_lock) connections = [.. _connections];
                long now = Environment.TickCount64;
                foreach (var connection in connections) connection.CheckTimeouts(now);
            }
        }
        catch (OperationCanceledException)
        {
        }
    }

    public Task StopAsync(CancellationToken cancellationToken) => DrainAsync(cancellationToken);

    /// <summary>
    /// Stops accepting at once, then drains every connection (GOAWAY, the calls it accepted answered, a graceful
    /// close) until <paramref name="deadline"/>, and closes what is left then. Once: a second call waits for the first.
    /// </summary>
    public Task DrainAsync(CancellationToken deadline)
    {
        lock (_lock) return _drain ??= RunDrainAsync(deadline);
    }

    private async Task RunDrainAsync(CancellationToken deadline)
    {
        if (_listener is null) return;
        DataPlaneConnection[] connections;
        lock (_lock)
        {
            _stopping = true;
            connections = [.. _connections];
        }
        _listener.Dispose();
        await _handshakes.CancelAsync().ConfigureAwait(false);
        _stopWatching.Cancel(); // the drain's deadline bounds every connection now
        if (_acceptLoop is not null) await _acceptLoop.ConfigureAwait(false);
        if (_timeoutWatch is not null) await _timeoutWatch.ConfigureAwait(false);
        try
        {
            await Task.WhenAll(connections.Select(c => c.DrainAsync())).WaitAsync(deadline).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            logger.LogWarning("Data-plane calls still open at the drain's deadline; closing their connections");
        }
        foreach (var connection in connections) connection.Abort();
        Task[] running;
        lock (_lock) running = [.. _running];
        await Task.WhenAll(running).ConfigureAwait(false);
    }
}
