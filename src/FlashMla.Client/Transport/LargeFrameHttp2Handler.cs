using FlashMla.Http2;
namespace FlashMla.Client.Transport;

/// <summary>
/// An <see cref="HttpMessageHandler"/> for gRPC over HTTP/2 (http://: cleartext with prior knowledge; https://: TLS
/// with ALPN h2, as <see cref="LargeFrameHttp2Options.Tls"/> says) whose frames are
/// as large as the server allows: it advertises a large SETTINGS_MAX_FRAME_SIZE (1 MiB by default), so the
/// server sends megabyte DATA frames, and sends its own DATA frames up to the server's limit. SocketsHttpHandler
/// keeps both directions at 16 KiB frames (dotnet/runtime#56542), which caps a connection far below the
/// socket's speed for tensor-sized messages. Streams are multiplexed on one connection until the server's
/// MAX_CONCURRENT_STREAMS is reached or it sends GOAWAY; then a new connection opens.
/// </summary>
public sealed class LargeFrameHttp2Handler : HttpMessageHandler
{
    private readonly LargeFrameHttp2Options _options;
    private readonly ClientTlsCredentials _tls;
    private readonly List<(string Authority, Http2ClientConnection Connection)> _connections = [];
    private readonly Dictionary<string, Task<Http2ClientConnection>> _connecting = [];
    private bool _disposed;

    public LargeFrameHttp2Handler(LargeFrameHttp2Options? options = null)
    {
        _options = options ?? new LargeFrameHttp2Options();
        _options.Validate();
        _tls = (_options.Tls ?? new ClientTlsOptions()).Load(); // here, so that a bad file fails the constructor, not a call
        Counters = _options.Counters ?? new Http2TransportCounters();
    }

    /// <summary>Frames and bytes this handler moved (shared with others when the options name one set).</summary>
    public Http2TransportCounters Counters { get; }

    protected override HttpResponseMessage Send(HttpRequestMessage request, CancellationToken cancellationToken) =>
        SendAsync(request, cancellationToken).GetAwaiter().GetResult();

    protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        var uri = request.RequestUri ?? throw new InvalidOperationException("the request has no URI");
        if (!uri.IsAbsoluteUri || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps))
            throw new NotSupportedException($"LargeFrameHttp2Handler speaks HTTP/2 over http:// (h2c) and https:// (TLS), not '{uri.Scheme}'");
        for (int attempt = 0; ; attempt++)
        {
            var connection = await GetConnectionAsync(uri, cancellationToken).ConfigureAwait(false);
            try
            {
                return await connection.SendAsync(request, cancellationToken).ConfigureAwait(false);
            }
            catch (Http2ConnectionUnavailableException) when (attempt < 3)
            {
                // The connection closed between picking it and sending HEADERS: nothing went out, try a fresh one.
            }
        }
    }

    /// <summary>A live connection to the request's server with a stream slot reserved for the caller.</summary>
    private async Task<Http2ClientConnection> GetConnectionAsync(Uri uri, CancellationToken cancellationToken)
    {
        string authority = uri.Scheme + "://" + uri.Authority; // the same host and port over TLS and cleartext are two servers
        while (true)
        {
            Task<Http2ClientConnection> pending;
            lock (_connections)
            {
                ObjectDisposedException.ThrowIf(_disposed, this);
                _connections.RemoveAll(c => !c.Connection.IsAccepting && c.Connection.ActiveStreams == 0);
                foreach (var (key, connection) in _connections)
                    if (key == authority && connection.TryReserveStream()) return connection;
                if (!_connecting.TryGetValue(authority, out pending!))
                {
                    bool https = uri.Scheme == Uri.UriSchemeHttps;
                    pending = Task.Run(() => ConnectAsync(uri.IdnHost, uri.Port, https, authority), CancellationToken.None);
                    _connecting[authority] = pending;
                }
            }
            // Every caller waiting on a connect takes its own slot afterwards; a failed connect fails them all.
            await pending.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
    }

    private async Task<Http2ClientConnection> ConnectAsync(string host, int port, bool https, string authority)
    {
        try
        {
            var connection = await Http2ClientConnection.ConnectAsync(host, port, https ? _tls : null, _options, Counters, CancellationToken.None)
                .ConfigureAwait(false);
            lock (_connections)
            {
                if (_disposed)
                {
                    _ = connection.DisposeAsync().AsTask();
                    throw new ObjectDisposedException(nameof(LargeFrameHttp2Handler));
                }
                _connections.Add((authority, connection));
            }
            return connection;
        }
        finally
        {
            lock (_connections) _connecting.Remove(authority);
        }
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            Http2ClientConnection[] open;
            lock (_connections)
            {
                _disposed = true;
                open = [.. _connections.Select(c => c.Connection)];
                _connections.Clear();
            }
            foreach (var connection in open) _ = connection.DisposeAsync().AsTask();
        }
        base.Dispose(disposing);
    }
}
