using System.Diagnostics;
using FlashMla.Client;

namespace FlashMla.Server.Tests;

/// <summary>
/// A response's timings account for the server's whole time: receive + queue + compute + respond is server_us, and
/// the server's time fits inside the round trip the client measured, on both ports.
/// </summary>
public sealed class DecodeTimingsTests
{
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task The_server_parts_add_up_to_server_us_which_fits_in_the_round_trip(bool dataPlane)
    {
        await using var server = await TestServer.StartAsync();
        using var client = new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { DecodeAddress = dataPlane ? server.DataPlaneAddress : null });
        ulong id = await server.Client.CreateSequenceAsync();
        await server.Client.AppendKvAsync(id, 0, Random16.Bf16(new Random(1), 100 * 576));
        await using var stream = client.OpenDecodeStream();
        var input = new DecodeInput(0, [id], 1, 16, Random16.Bf16(new Random(2), 16 * 576));
        for (int step = 0; step < 5; step++)
        {
            long start = Stopwatch.GetTimestamp();
            using var output = await stream.DecodeAsync(input);
            double roundTrip = Stopwatch.GetElapsedTime(start).TotalMicroseconds;
            var t = output.Timings;
            Assert.True(t.ServerUs > 0, "server_us is set");
            Assert.True(t.ComputeUs > 0 && t.ReceiveUs >= 0 && t.QueueUs >= 0 && t.RespondUs >= 0);
            Assert.Equal(t.ServerUs, t.ReceiveUs + t.QueueUs + t.ComputeUs + t.RespondUs, 0.01);
            Assert.True(t.ServerUs <= roundTrip, $"server_us {t.ServerUs} within the round trip {roundTrip}");
        }
    }
}
