using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace FlashMla.Server.Tests;

/// <summary>
/// A server's log goes to its own sinks whatever other servers in the process do (the tests run many side by side):
/// a logger it makes after another server was built, or after another was disposed, still writes to its own pipeline.
/// Serilog's process-wide Log.Logger, which the last server built used to set and the first disposed to close, made
/// the start-up log test miss its line now and then.
/// </summary>
public sealed class ServerLogIsolationTests
{
    [Fact]
    public async Task A_servers_loggers_write_to_its_own_sinks_when_other_servers_start_and_stop()
    {
        var mine = new LogCapture();
        var other = new LogCapture();
        await using var server = await TestServer.StartAsync([.. mine.ServerOptions, ("Serilog:MinimumLevel:Default", "Information")]);
        var factory = server.Services.GetRequiredService<ILoggerFactory>();
        string early = Guid.NewGuid().ToString("N"), besideAnother = Guid.NewGuid().ToString("N"), afterAnother = Guid.NewGuid().ToString("N");
        var madeFirst = factory.CreateLogger("made-first");
        madeFirst.LogInformation("early {Mark}", early);

        await using (var second = await TestServer.StartAsync([.. other.ServerOptions, ("Serilog:MinimumLevel:Default", "Information")]))
            factory.CreateLogger("made-beside-another").LogInformation("beside {Mark}", besideAnother);
        factory.CreateLogger("made-after-another").LogInformation("after {Mark}", afterAnother);
        madeFirst.LogInformation("early again {Mark}", early);

        Assert.Equal(2, Marked(mine, early));
        Assert.Equal(1, Marked(mine, besideAnother));
        Assert.Equal(1, Marked(mine, afterAnother));
        Assert.Equal(0, Marked(other, besideAnother) + Marked(other, afterAnother) + Marked(other, early));
        // Each server's own start-up line, once, in its own capture.
        Assert.Equal(1, StartupLines(mine));
        Assert.Equal(1, StartupLines(other));
    }

    private static int Marked(LogCapture capture, string mark) =>
        capture.Events.Count(e => e.Properties.TryGetValue("Mark", out var value) && value.ToString() == $"\"{mark}\"");

    private static int StartupLines(LogCapture capture) =>
        capture.Events.Count(e => e.MessageTemplate.Text.StartsWith("FlashMLA service on", StringComparison.Ordinal));
}
