namespace FlashMla.Server.DataPlane;

/// <summary>
/// How many of its streams one client may reset before the server has finished them (the "rapid reset" attack,
/// CVE-2023-44487: HEADERS then RST_STREAM in a loop costs the client two frames and the server a call set up and
/// torn down, with MAX_CONCURRENT_STREAMS never reached). A token bucket: a burst of <see cref="Burst"/> resets,
/// refilled at <see cref="RefillPerSecond"/> and by one for every call the server answered in full, so a client
/// that cancels now and then (deadlines, abandoned steps, even every in-flight call each second while the server
/// is overloaded) never runs dry, and one that resets faster than it lets calls finish does within a few hundred
/// streams. A stream refused for MAX_CONCURRENT_STREAMS spends from it too: reset calls stay open until their
/// tasks notice, so a reset loop mostly overruns the limit. One per connection; the reader loop spends, the call
/// tasks earn. Allocates nothing.
/// </summary>
internal sealed class StreamResetBudget
{
    /// <summary>Resets a connection may make at once: twice the streams it may have open.</summary>
    public const int Burst = 2 * DataPlaneConnection.MaxConcurrentStreams;

    /// <summary>Resets per second a connection may keep making: every open stream, once a second.</summary>
    public const int RefillPerSecond = DataPlaneConnection.MaxConcurrentStreams;

    private readonly Lock _lock = new();
    private double _tokens = Burst;
    private long _refilledAt = Environment.TickCount64;

    /// <summary>Counts one stream the client did not let the server answer; false once the budget is spent (the connection should go).</summary>
    public bool TrySpend()
    {
        lock (_lock)
        {
            long now = Environment.TickCount64;
            _tokens = Math.Min(Burst, _tokens + (now - _refilledAt) * (RefillPerSecond / 1000.0));
            _refilledAt = now;
            if (_tokens < 1) return false;
            _tokens -= 1;
            return true;
        }
    }

    /// <summary>A call was answered in full: the client let it finish, which earns back one reset.</summary>
    public void Earn()
    {
        lock (_lock) _tokens = Math.Min(Burst, _tokens + 1);
    }
}
