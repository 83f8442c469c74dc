using FlashMla.Client;
using FlashMla.Contracts.V1;
using Grpc.Core;
using Grpc.Net.Client;

namespace FlashMla.Server.Tests;

/// <summary>
/// Query token i of a step sees length - s_q + i + 1 positions of its layer (length after the step's append). A decode
/// without new rows over a layer shorter than s_q has tokens that see none: it is refused whole, on both ports,
/// and changes nothing. With new rows the step's own tokens are always seen, however short the layer was.
/// </summary>
public sealed class QueryPastLengthTests : IAsyncLifetime
{
    private TestServer _server = null!;
    private ulong _short, _long;

    public static TheoryData<bool> BothPorts => [false, true];

    public async Task InitializeAsync()
    {
        _server = await TestServer.StartAsync(("MaxQueryTokens", 4));
        _short = await _server.Client.CreateSequenceAsync();
        _long = await _server.Client.CreateSequenceAsync();
        await _server.Client.AppendKvAsync([new KvUpload(_short, 0, Random16.Bf16(new Random(1), 2 * 576)),
            new KvUpload(_long, 0, Random16.Bf16(new Random(2), 70 * 576))]);
    }

    public async Task DisposeAsync() => await _server.DisposeAsync();

    private Decoder.DecoderClient Decoder(GrpcChannel channel) => new(channel);

    private GrpcChannel Channel(bool dataPlane) => GrpcChannel.ForAddress(dataPlane ? _server.DataPlaneAddress! : _server.GrpcAddress);

    private static DecodeRequest Request(int sQ, bool withKv, params ulong[] ids)
    {
        const int heads = 2;
        var request = new DecodeRequest
        {
            Layer = 0, SQ = (uint)sQ, HQ = heads, RequestId = 7,
            Q = TensorBytes.Bf16(Random16.Bf16(new Random(3), ids.Length * sQ * heads * 576), ids.Length, sQ, heads, 576),
        };
        request.SequenceIds.Add(ids);
        if (withKv) request.Kv = TensorBytes.Bf16(Random16.Bf16(new Random(4), ids.Length * sQ * 576), ids.Length, sQ, 576);
        return request;
    }

    [Theory]
    [MemberData(nameof(BothPorts))]
    public async Task A_step_without_new_rows_whose_s_q_exceeds_a_layer_length_is_invalid_argument_and_changes_nothing(bool dataPlane)
    {
        using var channel = Channel(dataPlane);
        var before = await CacheSnapshot.TakeAsync(_server.Client, _short, _long);
        // _short holds 2 rows: with s_q 3 its token 0 would see no position. _long alone would be fine: all or nothing.
        var error = await Assert.ThrowsAsync<RpcException>(async () => await Decoder(channel).DecodeOnceAsync(Request(3, false, _long, _short)));
        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.Contains($"sequence {_short}", error.Status.Detail);
        Assert.Contains("s_q", error.Status.Detail);
        Assert.Equal(before, await CacheSnapshot.TakeAsync(_server.Client, _short, _long));
    }

    [Theory]
    [MemberData(nameof(BothPorts))]
    public async Task A_step_without_new_rows_over_an_empty_layer_is_invalid_argument(bool dataPlane)
    {
        using var channel = Channel(dataPlane);
        var request = Request(1, false, _short);
        request.Layer = 1; // nothing was ever written to layer 1: even s_q 1 sees no position there
        var error = await Assert.ThrowsAsync<RpcException>(async () => await Decoder(channel).DecodeOnceAsync(request));
        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
    }

    [Theory]
    [MemberData(nameof(BothPorts))]
    public async Task In_a_stream_the_refused_step_gets_its_own_error_and_the_stream_goes_on(bool dataPlane)
    {
        using var channel = Channel(dataPlane);
        using var call = Decoder(channel).Decode();
        var bad = Request(3, false, _short);
        bad.RequestId = 1;
        var good = Request(2, false, _short);
        good.RequestId = 2;
        await call.RequestStream.WriteAsync(bad);
        await call.RequestStream.WriteAsync(good);
        await call.RequestStream.CompleteAsync();
        var responses = new Dictionary<ulong, DecodeResponse>();
        while (await call.ResponseStream.MoveNext()) responses[call.ResponseStream.Current.RequestId] = call.ResponseStream.Current;
        Assert.Equal((int)StatusCode.InvalidArgument, responses[1].Error.Code);
        Assert.Null(responses[2].Error);
        Assert.All(Lse(responses[2]), v => Assert.True(float.IsFinite(v))); // s_q 2 over 2 rows: token 0 sees position 0
    }

    [Theory]
    [MemberData(nameof(BothPorts))]
    public async Task With_new_rows_a_step_longer_than_the_layer_is_served_and_every_token_sees_a_position(bool dataPlane)
    {
        using var channel = Channel(dataPlane);
        // _short holds 2 rows; the step appends 4, so token i sees 2 + i + 1 positions (causal inside the step).
        var response = await Decoder(channel).DecodeOnceAsync(Request(4, true, _short));
        Assert.Null(response.Error);
        Assert.All(Lse(response), v => Assert.True(float.IsFinite(v)));
        Assert.Equal([6u, 0u], (await _server.Client.GetSequenceAsync(_short)).LayerLengths);
    }

    private static float[] Lse(DecodeResponse response) =>
        System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(response.Lse.Data.Span).ToArray();
}
