using System.Collections.Concurrent;
using Serilog;
using Serilog.Configuration;
using Serilog.Core;
using Serilog.Events;

namespace FlashMla.Server.Tests;

/// <summary>
/// What one test server logged, kept in memory: a Serilog sink the server's own configuration adds
/// (<see cref="ServerOptions"/>), found by name so that servers of tests running side by side stay apart.
/// </summary>
public sealed class LogCapture : ILogEventSink
{
    private static readonly ConcurrentDictionary<string, LogCapture> Named = new();
    private readonly ConcurrentQueue<LogEvent> _events = new();

    public LogCapture() => Named[Name] = this;

    public string Name { get; } = Guid.NewGuid().ToString("N");

    public IReadOnlyList<LogEvent> Events => [.. _events];

    /// <summary>The test server options (Serilog configuration keys) that route the server's log into this capture.</summary>
    public (string Name, object Value)[] ServerOptions =>
    [
        ("Serilog:Using:0", typeof(LogCapture).Assembly.GetName().Name!),
        ("Serilog:WriteTo:0:Name", nameof(LogCaptureSinkExtensions.LogCapture)),
        ("Serilog:WriteTo:0:Args:name", Name),
    ];

    public void Emit(LogEvent logEvent) => _events.Enqueue(logEvent);

    internal static LogCapture Find(string name) => Named[name];
}

/// <summary>The sink's configuration method, which Serilog's configuration reader finds by name.</summary>
public static class LogCaptureSinkExtensions
{
    public static LoggerConfiguration LogCapture(this LoggerSinkConfiguration to, string name) => to.Sink(Tests.LogCapture.Find(name));
}
