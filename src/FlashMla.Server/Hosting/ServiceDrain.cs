namespace FlashMla.Server.Hosting;

/// <summary>
/// The moment shutdown stops taking streams on both ports (after health turned NOT_SERVING): from then on an open
/// Decode stream reads no more requests, answers the ones it read, and ends with UNAVAILABLE, so the client knows
/// the rest were never executed and may send them elsewhere. <see cref="GracefulShutdown"/> raises it.
/// </summary>
public sealed class ServiceDrain : IDisposable
{
    private readonly CancellationTokenSource _streamsEnding = new();

    /// <summary>Cancelled when open decode streams must stop reading requests.</summary>
    public CancellationToken StreamsEnding => _streamsEnding.Token;

    public bool IsDraining => _streamsEnding.IsCancellationRequested;

    public void Begin() => _streamsEnding.Cancel();

    public void Dispose() => _streamsEnding.Dispose();
}
