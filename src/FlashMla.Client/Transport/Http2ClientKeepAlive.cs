namespace FlashMla.Client.Transport;

/// <summary>
/// The keep-alive of one client connection, as SocketsHttpHandler's: once the server has been silent for the
/// delay, a PING goes out, and an ack must come back within the timeout, or the connection is presumed dead and
/// closed, which fails its calls with UNAVAILABLE instead of leaving them waiting on a peer that is gone (a
/// crashed host, a dropped network path: nothing ever closes such a socket).
/// </summary>
internal sealed class Http2ClientKeepAlive(LargeFrameHttp2Options options)
{
    private TaskCompletionSource? _ack;
    private ulong _awaited;

    public static bool IsEnabled(LargeFrameHttp2Options options) => options.KeepAlivePingDelay != Timeout.InfiniteTimeSpan;

    /// <summary>Pings while <paramref name="closing"/> is not cancelled; calls <paramref name="onDead"/> once when an ack does not come.</summary>
    public async Task RunAsync(Http2ClientConnection connection, Action<Exception> onDead, CancellationToken closing)
    {
        long delay = (long)options.KeepAlivePingDelay.TotalMilliseconds;
        ulong opaque = 0;
        try
        {
            while (true)
            {
                long silent = Environment.TickCount64 - connection.LastFrameReceivedAt;
                bool idle = options.KeepAlivePingPolicy == HttpKeepAlivePingPolicy.WithActiveRequests && connection.ActiveStreams == 0;
                if (silent < delay || idle)
                {
                    await Task.Delay(TimeSpan.FromMilliseconds(idle ? delay : Math.Max(1, delay - silent)), closing).ConfigureAwait(false);
                    continue;
                }
                var ack = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                lock (this)
                {
                    _awaited = ++opaque;
                    _ack = ack;
                }
                connection.Writer.QueuePing(opaque);
                try
                {
                    await ack.Task.WaitAsync(options.KeepAlivePingTimeout, closing).ConfigureAwait(false);
                }
                catch (TimeoutException)
                {
                    onDead(new IOException($"the server did not acknowledge a keep-alive PING within {options.KeepAlivePingTimeout.TotalSeconds:0.###} s; " +
                        "the connection is presumed dead"));
                    return;
                }
            }
        }
        catch (OperationCanceledException) when (closing.IsCancellationRequested)
        {
            // The connection closed: nothing left to watch.
        }
    }

    /// <summary>A PING ack arrived (on the reader loop).</summary>
    public void OnAck(ulong opaque)
    {
        TaskCompletionSource? ack;
        lock (this)
        {
            if (opaque != _awaited) return; // not ours, or an old one
            ack = _ack;
            _ack = null;
        }
        ack?.TrySetResult();
    }
}
