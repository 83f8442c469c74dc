using System.CommandLine;
using FlashMla.Cli;

namespace FlashMla.Server.Tests;

/// <summary>The latency command: its rows and floor, the arithmetic of a row, and the raw TCP ping-pong it reads against.</summary>
public sealed class LatencyCommandTests
{
    [Fact]
    public async Task Latency_writes_a_row_per_shape_and_in_flight_count_with_the_floor_and_the_commit()
    {
        await using var server = await TestServer.StartAsync();
        string results = Path.Combine(Path.GetTempPath(), $"latency-{Guid.NewGuid():N}.md");
        var root = new RootCommand();
        root.Add(LatencyCommand.Create(new ConnectionArguments().AddTo(root)));
        try
        {
            int rc = await root.Parse(["latency", "--address", server.GrpcAddress, "--decode-address", server.DataPlaneAddress!, "--shapes", "1x16,2x8",
                "--inflight", "1,2", "--context", "64", "--seconds", "0.3", "--warmup", "0.1", "--floor-seconds", "0.2", "--commit", "abc1234",
                "--out", results]).InvokeAsync();
            Assert.Equal(0, rc);
            string text = await File.ReadAllTextAsync(results);
            Assert.Contains("commit abc1234", text);
            Assert.Contains(Environment.MachineName, text);
            var rows = text.Split('\n').Where(line => line.StartsWith("| ", StringComparison.Ordinal) && char.IsDigit(line[2])).ToArray();
            Assert.Equal(["1|16|1", "1|16|2", "2|8|1", "2|8|2"], rows.Select(r => string.Join("|", Cells(r).Take(3))));
            foreach (var row in rows)
            {
                var cells = Cells(row);
                Assert.True(int.Parse(cells[3]) > 0, "calls were measured");
                double floor = double.Parse(cells[^2]), ratio = double.Parse(cells[^1]), p50 = double.Parse(cells[5]);
                Assert.True(floor > 0);
                Assert.Equal(p50 / floor, ratio, 0.05 + ratio * 0.01);
            }
        }
        finally
        {
            File.Delete(results);
        }

        static string[] Cells(string row) => [.. row.Trim().Trim('|').Split('|').Select(c => c.Trim())];
    }

    [Fact]
    public void A_row_breaks_the_mean_round_trip_into_parts_that_add_up_and_floors_on_ping_pong_plus_kernel()
    {
        CallTiming Call(double roundTrip, double kernel) => new(roundTrip, Server: roundTrip - 30, Receive: 5, Queue: 5, Compute: roundTrip - 50,
            Respond: 10, Upload: 3, Kernel: kernel, Download: 4, BatchRequests: 1);
        var calls = new[] { Call(100, 20), Call(200, 40), Call(400, 60) };
        var row = LatencyRow.From(8, 16, 1, seconds: 2, calls, pingPongP50Us: 50);
        var m = row.Mean;
        Assert.Equal(m.RoundTrip, m.WireAndClient + m.Receive + m.Queue + m.Compute + m.Respond, 1e-9);
        Assert.Equal(30, m.WireAndClient, 1e-9);
        Assert.Equal(200, row.P50Us);
        Assert.Equal(1.5, row.CallsPerSecond);
        Assert.True(row.KernelTimed);
        Assert.Equal(50 + 40, row.FloorUs);
        Assert.Equal(200 / 90.0, row.Ratio, 1e-9);

        // A backend that does not time its kernels (the CPU backend): the floor takes the compute time instead.
        var cpu = LatencyRow.From(8, 16, 1, 2, calls.Select(c => c with { Kernel = 0 }).ToArray(), 50);
        Assert.False(cpu.KernelTimed);
        Assert.Equal(50 + 150, cpu.FloorUs);
    }

    [Fact]
    public async Task The_ping_pong_times_each_exchange_after_its_warm_up()
    {
        double[] roundTrips = await TcpBenchCommand.PingPongAsync(300_000, 200_000, seconds: 0.2, CancellationToken.None);
        Assert.True(roundTrips.Length >= 3);
        Assert.All(roundTrips, us => Assert.True(us > 0));
    }

    [Theory]
    [InlineData("1x16,128x128", true)]
    [InlineData("32", false)]
    [InlineData("0x16", false)]
    public void Shapes_are_b_by_h_q(string text, bool valid)
    {
        var shapes = LatencyCommand.ParseShapes(text);
        Assert.Equal(valid, shapes is not null);
        if (valid) Assert.Equal([(1, 16), (128, 128)], shapes!);
    }
}
