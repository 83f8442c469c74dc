using System.Buffers;
using FlashMla.Server.Hosting;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace FlashMla.Server.Tests;

/// <summary>The large-block pool Kestrel's socket transport receives into (the measurement switch FLASHMLA_SOCKET_BLOCK_KIB).</summary>
public class LargeBlockMemoryPoolTests
{
    [Fact]
    public void Rents_whole_blocks_and_reuses_returned_ones()
    {
        using var pool = new LargeBlockMemoryPool(64 * 1024, retainedBlocks: 4);
        Assert.Equal(64 * 1024, pool.MaxBufferSize);
        var a = pool.Rent(100);
        Assert.Equal(64 * 1024, a.Memory.Length);
        var memory = a.Memory;
        a.Dispose();
        a.Dispose(); // a second dispose must not return the block twice
        var b = pool.Rent();
        var c = pool.Rent();
        Assert.True(b.Memory.Equals(memory), "the returned block comes back");
        Assert.False(c.Memory.Equals(memory), "and only once");
    }

    [Fact]
    public void Larger_rents_get_their_own_array_and_the_pool_keeps_at_most_its_retained_blocks()
    {
        var allocated = new System.Runtime.CompilerServices.StrongBox<long>();
        using var pool = new LargeBlockMemoryPool(4096, retainedBlocks: 2, allocated);
        using (var big = pool.Rent(10_000)) Assert.Equal(10_000, big.Memory.Length);
        var blocks = Enumerable.Range(0, 4).Select(_ => pool.Rent(4096)).ToList();
        Assert.Equal(4, allocated.Value);
        foreach (var block in blocks) block.Dispose();
        for (int i = 0; i < 4; i++) pool.Rent(4096);
        Assert.Equal(6, allocated.Value); // two came back from the pool, two were new
    }

    [Fact]
    public void A_disposed_pool_refuses_rents()
    {
        var pool = new LargeBlockMemoryPool(4096, 2);
        var block = pool.Rent();
        pool.Dispose();
        block.Dispose(); // returning after disposal is harmless
        Assert.Throws<ObjectDisposedException>(() => pool.Rent());
    }

    [Fact]
    public async Task Kestrel_receives_decode_traffic_into_the_large_blocks()
    {
        await using var server = await TestServer.StartAsync((MeasurementSwitches.SocketBlockKiBVariable, 128));
        var factory = Assert.IsType<LargeBlockMemoryPoolFactory>(server.Services.GetRequiredService<IMemoryPoolFactory<byte>>());
        Assert.Equal(128 * 1024, factory.BlockBytes);
        await server.Client.GetConfigAsync();
        Assert.True(factory.BlocksAllocated > 0, "the socket transport took no block from the factory");
    }

    [Fact]
    public async Task Four_KiB_keeps_kestrels_own_pool()
    {
        await using var server = await TestServer.StartAsync((MeasurementSwitches.SocketBlockKiBVariable, 4));
        Assert.IsNotType<LargeBlockMemoryPoolFactory>(server.Services.GetRequiredService<IMemoryPoolFactory<byte>>());
        await server.Client.GetConfigAsync();
    }

    [Theory]
    [InlineData(MeasurementSwitches.SocketBlockKiBVariable, "2")]
    [InlineData(MeasurementSwitches.SocketBlockKiBVariable, "lots")]
    [InlineData(MeasurementSwitches.InlineSocketSchedulingVariable, "maybe")]
    public void A_malformed_measurement_switch_stops_the_server_naming_it(string name, string value)
    {
        var error = Assert.Throws<Microsoft.Extensions.Options.OptionsValidationException>(() =>
            FlashMlaServerApp.Build(["--FlashMla:Backend=cpu", $"--{name}={value}"]));
        Assert.Contains(error.Failures, f => f.Contains(name) && f.Contains(value));
    }

    [Fact]
    public void The_switches_default_to_what_the_measurements_chose_and_read_from_the_configuration()
    {
        var none = new ConfigurationBuilder().Build();
        Assert.Equal(new MeasurementSwitches { SocketBlockKiB = 1024, InlineSocketScheduling = true }, MeasurementSwitches.Read(none, []));
        var set = new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            [MeasurementSwitches.SocketBlockKiBVariable] = "256",
            [MeasurementSwitches.InlineSocketSchedulingVariable] = "false",
        }).Build();
        Assert.Equal(new MeasurementSwitches { SocketBlockKiB = 256, InlineSocketScheduling = false }, MeasurementSwitches.Read(set, []));
    }
}
