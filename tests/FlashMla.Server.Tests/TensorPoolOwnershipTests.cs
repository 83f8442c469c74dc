using FlashMla.Client;
using FlashMla.Core.Memory;
using Microsoft.Extensions.DependencyInjection;

namespace FlashMla.Server.Tests;

/// <summary>The host owns the pool of tensor buffers: one instance per server, the one its wire and scheduler rent from.</summary>
public sealed class TensorPoolOwnershipTests
{
    [Fact]
    public async Task Each_server_has_its_own_pool_and_decode_buffers_come_from_it()
    {
        await using var one = await TestServer.StartAsync();
        await using var two = await TestServer.StartAsync();
        var pool = one.Services.GetRequiredService<PinnedTensorPool>();
        Assert.NotSame(pool, two.Services.GetRequiredService<PinnedTensorPool>());

        ulong id = await one.Client.CreateSequenceAsync();
        await one.Client.AppendKvAsync(id, 0, Random16.Bf16(new Random(1), 10 * 576));
        int before = pool.OwnedArrays;
        var q = Random16.Bf16(new Random(2), 16 * 576);
        var response = await one.Client.Decoder.DecodeOnceAsync(new Contracts.V1.DecodeRequest
        {
            Layer = 0, SQ = 1, HQ = 16, Q = TensorBytes.Bf16(q, 1, 1, 16, 576), SequenceIds = { id },
        });

        Assert.Equal(16 * 512 * 2, response.Out.Data.Length);
        Assert.True(pool.OwnedArrays > before, $"the server's pool holds {pool.OwnedArrays} arrays, {before} before the decode");
        Assert.Equal(0, two.Services.GetRequiredService<PinnedTensorPool>().OwnedArrays);
    }
}
