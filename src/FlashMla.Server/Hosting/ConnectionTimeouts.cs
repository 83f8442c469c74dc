namespace FlashMla.Server.Hosting;

/// <summary>
/// When a connection is closed for what its client does not do, on both ports (Kestrel's limits of the same names,
/// and the data-plane listener's <c>ConnectionTimeoutWatch</c>). An infinite time turns a timeout off; a rate of 0
/// turns the rate off.
/// </summary>
/// <param name="KeepAlive">No stream open for this long: GOAWAY and close.</param>
/// <param name="RequestHeaders">The preface and SETTINGS, and any frame other than DATA, must arrive whole within this.</param>
/// <param name="MinBodyBytesPerSecond">Least average rate of request messages begun, after <paramref name="BodyGrace"/>.</param>
public sealed record ConnectionTimeouts(TimeSpan KeepAlive, TimeSpan RequestHeaders, double MinBodyBytesPerSecond, TimeSpan BodyGrace);
