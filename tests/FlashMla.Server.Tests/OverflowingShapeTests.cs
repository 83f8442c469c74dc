using FlashMla.Client;
using FlashMla.Contracts.V1;
using Grpc.Core;
using Grpc.Net.Client;

namespace FlashMla.Server.Tests;

/// <summary>
/// Decode tensors whose shapes' element counts overflow 64 bits, with bytes for what the wrapped product would be:
/// INVALID_ARGUMENT on both ports, cache unchanged (both doors share DecodeHandler's TensorCodec checks).
/// </summary>
public sealed class OverflowingShapeTests : IAsyncLifetime
{
    private TestServer _server = null!;
    private ulong _a, _b;

    public static TheoryData<bool, string> Cases => new()
    {
        { false, "q" }, { true, "q" }, { false, "kv" }, { true, "kv" },
    };

    public async Task InitializeAsync()
    {
        _server = await TestServer.StartAsync();
        _a = await _server.Client.CreateSequenceAsync();
        _b = await _server.Client.CreateSequenceAsync();
        await _server.Client.AppendKvAsync([new KvUpload(_a, 0, Random16.Bf16(new Random(1), 5 * 576)),
            new KvUpload(_b, 0, Random16.Bf16(new Random(2), 5 * 576))]);
    }

    public async Task DisposeAsync() => await _server.DisposeAsync();

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task A_decode_tensor_whose_shape_overflows_64_bits_is_invalid_argument_and_changes_nothing(bool dataPlane, string tensor)
    {
        // b = 2 + 2^58 sequences' worth: times 576 (and h_q, s_q of 1) the count wraps to 2 * 576, the bytes sent.
        var request = new DecodeRequest
        {
            Layer = 0, SQ = 1, HQ = 1,
            Q = TensorBytes.Bf16(Random16.Bf16(new Random(3), 2 * 576), 2, 1, 1, 576),
            Kv = TensorBytes.Bf16(Random16.Bf16(new Random(4), 2 * 576), 2, 1, 576),
        };
        request.SequenceIds.Add([_a, _b]);
        (tensor == "q" ? request.Q : request.Kv).Shape[0] = 2 + (1L << 58);
        using var channel = GrpcChannel.ForAddress(dataPlane ? _server.DataPlaneAddress! : _server.GrpcAddress);
        var before = await CacheSnapshot.TakeAsync(_server.Client, _a, _b);

        var error = await Assert.ThrowsAsync<RpcException>(async () => await new Decoder.DecoderClient(channel).DecodeOnceAsync(request));

        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Contains(tensor + " must have shape", error.Status.Detail);
        Assert.Equal(before, await CacheSnapshot.TakeAsync(_server.Client, _a, _b));
    }
}
