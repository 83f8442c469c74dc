using Grpc.Core;

namespace FlashMla.Server.Services;

/// <summary>
/// Bounds the log lines failed requests write: per status code, the first <c>linesPerWindow</c> of each window are
/// logged one by one, the rest only counted, and one summary line per code reports how many were not (at the end of
/// the window, from a one-shot timer, or at the next failure after it). An id scan or a flood of refusals then costs
/// a few lines per window, not one per request; the failure counter (flashmla_requests_failed_total) still counts each.
/// </summary>
internal sealed class RefusalLogThrottle(int linesPerWindow, TimeSpan window, TimeProvider time, Action<StatusCode, long, TimeSpan> summarize)
    : IDisposable
{
    private readonly Lock _lock = new();
    private readonly Dictionary<StatusCode, Window> _windows = [];
    private bool _disposed;

    /// <summary>True when this failure of <paramref name="code"/> gets its own line; false when it is counted for the summary.</summary>
    public bool ShouldLog(StatusCode code)
    {
        long due;
        bool log;
        lock (_lock)
        {
            if (!_windows.TryGetValue(code, out var current)) _windows[code] = current = new Window { Start = time.GetTimestamp() };
            due = time.GetElapsedTime(current.Start) >= window ? TakeLocked(current) : 0;
            log = current.Logged < linesPerWindow;
            if (log)
            {
                current.Logged++;
            }
            else
            {
                current.Suppressed++;
                if (current.Flush is null && !_disposed)
                {
                    var left = window - time.GetElapsedTime(current.Start);
                    current.Flush = time.CreateTimer(_ => Flush(code), null, left > TimeSpan.Zero ? left : TimeSpan.Zero, Timeout.InfiniteTimeSpan);
                }
            }
        }
        if (due > 0) summarize(code, due, window);
        return log;
    }

    /// <summary>The window ran out: its count of unlogged failures is reported and a new window begins.</summary>
    private void Flush(StatusCode code)
    {
        long due;
        lock (_lock)
        {
            if (!_windows.TryGetValue(code, out var current)) return;
            due = TakeLocked(current);
        }
        if (due > 0) summarize(code, due, window);
    }

    private long TakeLocked(Window current)
    {
        long suppressed = current.Suppressed;
        current.Flush?.Dispose();
        current.Flush = null;
        current.Start = time.GetTimestamp();
        current.Logged = 0;
        current.Suppressed = 0;
        return suppressed;
    }

    public void Dispose()
    {
        lock (_lock)
        {
            _disposed = true;
            foreach (var current in _windows.Values) current.Flush?.Dispose();
        }
    }

    private sealed class Window
    {
        public long Start;
        public int Logged;
        public long Suppressed;
        public ITimer? Flush;
    }
}
