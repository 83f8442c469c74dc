using System.Buffers.Binary;
using System.IO.Compression;
using FlashMla.Contracts.V1;
using FlashMla.Http2;
using Grpc.Core;
using Grpc.Net.Client;

namespace FlashMla.Server.Tests;

/// <summary>
/// gRPC message compression as the spec has it (doc/compression.md), on both ports alike: gzip requests are
/// served, inflated no further than MaxMessageBytes; grpc-accept-encoding names identity and gzip; an encoding
/// the server lacks is UNIMPLEMENTED; a compressed flag without an encoding is INTERNAL; responses stay identity.
/// </summary>
[Collection(DataPlaneCollection.Name)]
public sealed class CompressionTests
{
    public static TheoryData<bool> BothPorts => [false, true];

    private static string Address(TestServer server, bool dataPlane) => dataPlane ? server.DataPlaneAddress! : server.GrpcAddress;

    private static byte[] Gzip(ReadOnlySpan<byte> bytes)
    {
        using var output = new MemoryStream();
        using (var gzip = new GZipStream(output, CompressionLevel.Fastest, leaveOpen: true)) gzip.Write(bytes);
        return output.ToArray();
    }

    /// <summary>A gRPC message with the compressed flag: gzip of <paramref name="message"/>'s body (its 5-byte prefix replaced).</summary>
    private static byte[] Compressed(byte[] body)
    {
        var message = new byte[5 + body.Length];
        message[0] = 1;
        BinaryPrimitives.WriteUInt32BigEndian(message.AsSpan(1), (uint)body.Length);
        body.CopyTo(message, 5);
        return message;
    }

    private static async Task<(Dictionary<string, string> Headers, byte[] Data, Dictionary<string, string>? Trailers)> CallAsync(
        string address, byte[] message, params (string, string)[] metadata)
    {
        await using var client = await RawHttp2Client.ConnectAsync(address);
        await client.SendAsync(Http2FrameType.Headers, Http2FrameFlags.EndHeaders, 1,
            RawHttp2Client.RequestHeaders("/flashmla.v1.Decoder/DecodeOnce", null, metadata));
        await client.SendMessageAsync(1, message, endStream: true);
        return await client.ReadResponseAsync(1);
    }

    private static string StatusOf((Dictionary<string, string> Headers, byte[] Data, Dictionary<string, string>? Trailers) response) =>
        response.Trailers?["grpc-status"] ?? "RST";

    [Theory]
    [MemberData(nameof(BothPorts))]
    public async Task A_gzip_request_is_served_like_its_identity_form_and_the_response_stays_identity(bool dataPlane)
    {
        await using var server = await TestServer.StartAsync();
        var ids = await RawHttp2Client.SequencesAsync(server, 2, 20);
        var plain = RawHttp2Client.GrpcMessage(ids, 8, 7);
        var identity = await CallAsync(Address(server, dataPlane), plain);
        Assert.Equal("0", StatusOf(identity));

        var gzip = await CallAsync(Address(server, dataPlane), Compressed(Gzip(plain.AsSpan(5))),
            ("grpc-encoding", "gzip"), ("grpc-accept-encoding", "identity,deflate,gzip"));
        Assert.Equal("0", StatusOf(gzip));
        Assert.Equal(0, gzip.Data[0]); // not compressed
        var expected = DecodeResponse.Parser.ParseFrom(identity.Data.AsSpan(5));
        var actual = DecodeResponse.Parser.ParseFrom(gzip.Data.AsSpan(5));
        Assert.Equal(7ul, actual.RequestId);
        Assert.Equal(expected.Out.Data, actual.Out.Data);
        Assert.Equal(expected.Lse.Data, actual.Lse.Data);
        Assert.False(gzip.Headers.ContainsKey("grpc-encoding")); // a client's accept-encoding allows, it does not ask
        var accepted = gzip.Headers["grpc-accept-encoding"].Split(',').Select(e => e.Trim()).ToArray();
        Assert.Contains("gzip", accepted);
        Assert.Contains("identity", accepted);
    }

    [Theory]
    [MemberData(nameof(BothPorts))]
    public async Task An_encoding_the_server_lacks_is_unimplemented_and_names_the_ones_it_has(bool dataPlane)
    {
        await using var server = await TestServer.StartAsync();
        var ids = await RawHttp2Client.SequencesAsync(server, 1, 5);
        var response = await CallAsync(Address(server, dataPlane), Compressed(RawHttp2Client.GrpcMessage(ids, 2, 1)[5..]), ("grpc-encoding", "snappy"));
        Assert.Equal(((int)StatusCode.Unimplemented).ToString(), StatusOf(response));
        string accepted = (response.Headers.GetValueOrDefault("grpc-accept-encoding") ?? response.Trailers!["grpc-accept-encoding"]);
        Assert.Contains("gzip", accepted);
        Assert.DoesNotContain("snappy", accepted);
        Assert.Contains("snappy", Uri.UnescapeDataString(response.Trailers!.GetValueOrDefault("grpc-message", "")));
        Assert.Equal([5u, 0u], (await server.Client.GetSequenceAsync(ids[0])).LayerLengths);
    }

    [Theory]
    [MemberData(nameof(BothPorts))]
    public async Task A_compressed_flag_without_an_encoding_is_internal(bool dataPlane)
    {
        await using var server = await TestServer.StartAsync();
        var ids = await RawHttp2Client.SequencesAsync(server, 1, 5);
        var body = Gzip(RawHttp2Client.GrpcMessage(ids, 2, 1).AsSpan(5));
        Assert.Equal(((int)StatusCode.Internal).ToString(), StatusOf(await CallAsync(Address(server, dataPlane), Compressed(body))));
        Assert.Equal(((int)StatusCode.Internal).ToString(),
            StatusOf(await CallAsync(Address(server, dataPlane), Compressed(body), ("grpc-encoding", "identity"))));
    }

    [Theory]
    [MemberData(nameof(BothPorts))]
    public async Task A_gzip_bomb_is_refused_with_resource_exhausted_without_inflating_past_the_limit(bool dataPlane)
    {
        await using var server = await TestServer.StartAsync(("MaxMessageBytes", 1 << 20));
        // 64 MiB of zeros: about 64 KiB of gzip, a 1000:1 bomb against a 1 MiB limit.
        var bomb = Gzip(new byte[64 << 20]);
        Assert.True(bomb.Length < 1 << 20);
        long before = GC.GetTotalAllocatedBytes(precise: true);
        var response = await CallAsync(Address(server, dataPlane), Compressed(bomb), ("grpc-encoding", "gzip"));
        long allocated = GC.GetTotalAllocatedBytes(precise: true) - before;
        Assert.Equal(((int)StatusCode.ResourceExhausted).ToString(), StatusOf(response));
        Assert.True(allocated < 32L << 20, $"{allocated} bytes allocated while refusing the bomb");
    }

    [Theory]
    [MemberData(nameof(BothPorts))]
    public async Task A_corrupt_gzip_message_is_internal_and_the_server_goes_on(bool dataPlane)
    {
        await using var server = await TestServer.StartAsync();
        var ids = await RawHttp2Client.SequencesAsync(server, 1, 5);
        var gzip = Gzip(RawHttp2Client.GrpcMessage(ids, 2, 1).AsSpan(5));
        gzip[12] ^= 0xFF; // inside the deflate data
        Assert.Equal(((int)StatusCode.Internal).ToString(), StatusOf(await CallAsync(Address(server, dataPlane), Compressed(gzip), ("grpc-encoding", "gzip"))));
        Assert.Equal("0", StatusOf(await CallAsync(Address(server, dataPlane), RawHttp2Client.GrpcMessage(ids, 2, 2))));
    }

    [Theory]
    [MemberData(nameof(BothPorts))]
    public async Task Grpc_Net_Client_sending_gzip_is_served_on_either_port(bool dataPlane)
    {
        await using var server = await TestServer.StartAsync();
        var ids = await RawHttp2Client.SequencesAsync(server, 2, 30);
        var input = new Client.DecodeInput(0, ids, 1, 3, Random16.Bf16(new Random(6), 2 * 3 * 576));
        using var expected = await server.Client.DecodeOnceAsync(input);
        using var channel = GrpcChannel.ForAddress(Address(server, dataPlane));
        var decoder = new Decoder.DecoderClient(channel);
        // grpc-dotnet's way of asking for a compressed request stream.
        var headers = new Metadata { { "grpc-internal-encoding-request", "gzip" } };
        using var call = decoder.Decode(headers);
        await call.RequestStream.WriteAsync(input.ToRequest(41));
        await call.RequestStream.WriteAsync(input.ToRequest(42));
        await call.RequestStream.CompleteAsync();
        var seen = new List<ulong>();
        while (await call.ResponseStream.MoveNext())
        {
            seen.Add(call.ResponseStream.Current.RequestId);
            Assert.Equal(System.Runtime.InteropServices.MemoryMarshal.AsBytes(expected.Out).ToArray(), call.ResponseStream.Current.Out.Data.ToByteArray());
        }
        Assert.Equal([41ul, 42ul], seen.Order());
        Assert.Equal(StatusCode.OK, call.GetStatus().StatusCode);
    }
}
