using FlashMla.Client;
using Xunit.Abstractions;

namespace FlashMla.Server.Tests.Security;

/// <summary>
/// The data-plane port's receive path under TLS: the request tensors still land in the pooled buffers and are parsed
/// in place, so what a step allocates does not grow with the tensors, as without TLS (DataPlanePortTests).
/// Process-wide allocation counters: run alone.
/// </summary>
[Collection(DataPlaneCollection.Name)]
public sealed class TlsDataPlaneAllocationTests(ITestOutputHelper output) : IDisposable
{
    private readonly TlsFixture _tls = new();

    public void Dispose() => _tls.Dispose();

    [Fact]
    public async Task Over_TLS_bytes_allocated_per_step_through_the_data_plane_do_not_grow_with_the_tensors()
    {
        await using var server = await TestServer.StartAsync(null, _tls.Client(), [("TotalBlocks", 64), ("CpuThreads", 1), .. _tls.ServerOptions()]);
        using var client = new FlashMlaClient(server.GrpcAddress, new FlashMlaClientOptions { Tls = _tls.Client(), DecodeAddress = server.DataPlaneAddress });
        var groups = new ulong[2][];
        for (int g = 0; g < groups.Length; g++)
        {
            groups[g] = new ulong[8];
            for (int i = 0; i < 8; i++)
            {
                groups[g][i] = await client.CreateSequenceAsync();
                await client.AppendKvAsync(groups[g][i], 0, Random16.Bf16(new Random(g * 8 + i), 20 * 576));
            }
        }
        var (small, large, growth) = await DataPlaneTests.AllocationGrowthAsync(client, groups, steps: 40);
        output.WriteLine($"data plane over TLS, b=8, 2 in flight: h_q=16 {small:F0} B/step; h_q=128 {large:F0} B/step; growth {growth:P2} of the extra tensor bytes");
        // SslStream decrypts in its own pooled record buffer and encrypts into a pooled one: nothing per byte lands on the heap.
        Assert.True(growth < 0.02, $"h_q=16: {small:F0} B/step, h_q=128: {large:F0} B/step, growth {growth:P2}");
    }
}
