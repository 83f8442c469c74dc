using System.Buffers.Binary;
using FlashMla.Http2;
using FlashMla.Server.Hosting;

namespace FlashMla.Server.Tests;

/// <summary>
/// Both ports tell a client the same SETTINGS_MAX_HEADER_LIST_SIZE. A client that honours it (grpc-go refuses to send
/// a header list over the peer's setting) must meet the same limit on either port: when the data plane advertised its
/// 64 KiB refusal limit and Kestrel its 1 MiB decode limit, a call with 100 KiB of metadata failed in grpc-go itself
/// on one port and got the server's RESOURCE_EXHAUSTED on the other.
/// </summary>
[Collection(DataPlaneCollection.Name)]
public sealed class HeaderListSettingTests
{
    [Fact]
    public async Task Both_ports_advertise_the_same_header_list_size_and_refuse_the_same_calls()
    {
        await using var server = await TestServer.StartAsync();
        var advertised = new List<uint?>();
        var statuses = new List<string?>();
        foreach (string address in new[] { server.GrpcAddress, server.DataPlaneAddress! })
        {
            await using var client = await RawHttp2Client.ConnectAsync(address);
            advertised.Add(await ReadServerHeaderListSizeAsync(client));
            // Over the list limit, under the advertised one: refused on its stream, in gRPC's words, on both ports.
            var block = RawHttp2Client.RequestHeaders("/flashmla.v1.Decoder/DecodeOnce", "10S",
                ("x-big", new string('a', RequestHeaderLimit.MaxListBytes + 1024)));
            await client.SendHeaderBlockAsync(1, block, endStream: true);
            var (_, _, status) = await client.ReadStreamAsync(1);
            statuses.Add(status);
        }
        Assert.Equal([(uint)RequestHeaderLimit.MaxBlockBytes, (uint)RequestHeaderLimit.MaxBlockBytes], advertised);
        Assert.Equal(["8", "8"], statuses); // RESOURCE_EXHAUSTED
    }

    private static async Task<uint?> ReadServerHeaderListSizeAsync(RawHttp2Client client)
    {
        while (await client.ReadFrameAsync() is { } frame)
        {
            if (frame.Header.Type != Http2FrameType.Settings || frame.Header.Has(Http2FrameFlags.Ack)) continue;
            for (int i = 0; i + 6 <= frame.Payload.Length; i += 6)
                if (BinaryPrimitives.ReadUInt16BigEndian(frame.Payload.AsSpan(i)) == (ushort)Http2Setting.MaxHeaderListSize)
                    return BinaryPrimitives.ReadUInt32BigEndian(frame.Payload.AsSpan(i + 2));
            return null;
        }
        return null;
    }
}
