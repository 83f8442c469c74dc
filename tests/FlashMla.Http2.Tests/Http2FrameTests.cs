using FlashMla.Http2;
using System.Buffers.Binary;

namespace FlashMla.Http2.Tests;

/// <summary>The frame codec: the 9-byte header, the small control frames, padding.</summary>
public sealed class Http2FrameTests
{
    [Fact]
    public void Frame_headers_round_trip_at_the_limits_and_drop_the_reserved_bit()
    {
        var buffer = new byte[9];
        var header = new Http2FrameHeader(Http2Frames.MaxAllowedFrameSize, Http2FrameType.Continuation, Http2FrameFlags.EndHeaders, int.MaxValue);
        header.Write(buffer);
        Assert.Equal(header, Http2FrameHeader.Read(buffer));
        Assert.Equal([0xFF, 0xFF, 0xFF, 0x09, 0x04, 0x7F, 0xFF, 0xFF, 0xFF], buffer);

        buffer[5] |= 0x80; // the reserved bit must be ignored on receipt
        Assert.Equal(int.MaxValue, Http2FrameHeader.Read(buffer).StreamId);
        Assert.True(Http2FrameHeader.Read([0, 0, 0, 0, 0x09, 0, 0, 0, 1]).Has(Http2FrameFlags.EndStream));
    }

    [Fact]
    public void Control_frames_have_the_wire_layout_of_RFC_9113()
    {
        var buffer = new byte[64];
        int n = Http2Frames.WriteSettings(buffer, [(Http2Setting.MaxFrameSize, 1u << 20), (Http2Setting.HeaderTableSize, 0)]);
        Assert.Equal(9 + 12, n);
        Assert.Equal(new Http2FrameHeader(12, Http2FrameType.Settings, 0, 0), Http2FrameHeader.Read(buffer));
        Assert.Equal(5, BinaryPrimitives.ReadUInt16BigEndian(buffer.AsSpan(9)));
        Assert.Equal(1u << 20, BinaryPrimitives.ReadUInt32BigEndian(buffer.AsSpan(11)));

        n = Http2Frames.WriteWindowUpdate(buffer, 7, 0x7FFF_FFFF);
        Assert.Equal(13, n);
        Assert.Equal(new Http2FrameHeader(4, Http2FrameType.WindowUpdate, 0, 7), Http2FrameHeader.Read(buffer));
        Assert.Equal(0x7FFF_FFFFu, BinaryPrimitives.ReadUInt32BigEndian(buffer.AsSpan(9)));

        n = Http2Frames.WriteRstStream(buffer, 3, Http2ErrorCode.Cancel);
        Assert.Equal(new Http2FrameHeader(4, Http2FrameType.RstStream, 0, 3), Http2FrameHeader.Read(buffer));
        Assert.Equal(8u, BinaryPrimitives.ReadUInt32BigEndian(buffer.AsSpan(9)));

        n = Http2Frames.WritePing(buffer, 0x0102030405060708, ack: true);
        Assert.Equal(17, n);
        Assert.True(Http2FrameHeader.Read(buffer).Has(Http2FrameFlags.Ack));
        Assert.Equal(0x0102030405060708ul, BinaryPrimitives.ReadUInt64BigEndian(buffer.AsSpan(9)));

        n = Http2Frames.WriteGoAway(buffer, 5, Http2ErrorCode.ProtocolError);
        Assert.Equal(17, n);
        Assert.Equal(5u, BinaryPrimitives.ReadUInt32BigEndian(buffer.AsSpan(9)));
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32BigEndian(buffer.AsSpan(13)));

        Assert.Equal(9, Http2Frames.WriteSettingsAck(buffer));
        Assert.Equal(new Http2FrameHeader(0, Http2FrameType.Settings, Http2FrameFlags.Ack, 0), Http2FrameHeader.Read(buffer));
        Assert.Equal("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8.ToArray(), Http2Frames.Preface.ToArray());
    }

    [Fact]
    public void Padding_and_priority_fields_are_stripped_and_overlong_padding_is_a_protocol_error()
    {
        byte[] data = [3, 0xAA, 0xBB, 0, 0, 0];
        Assert.Equal((1, 2), Http2Frames.Unpad(new Http2FrameHeader(6, Http2FrameType.Data, Http2FrameFlags.Padded, 1), data));
        byte[] headers = [1, 0, 0, 0, 0, 16, 0x88, 0];
        Assert.Equal((6, 1), Http2Frames.Unpad(new Http2FrameHeader(8, Http2FrameType.Headers, Http2FrameFlags.Padded | Http2FrameFlags.Priority, 1), headers));
        Assert.Equal((0, 2), Http2Frames.Unpad(new Http2FrameHeader(2, Http2FrameType.Data, 0, 1), [1, 2]));

        var overlong = Assert.Throws<Http2ConnectionException>(() => Http2Frames.Unpad(new Http2FrameHeader(3, Http2FrameType.Data, Http2FrameFlags.Padded, 1), [9, 1, 2]));
        Assert.Equal(Http2ErrorCode.ProtocolError, overlong.Code);
        Assert.Contains("padding is longer", overlong.Message);
        Assert.Throws<Http2ConnectionException>(() => Http2Frames.Unpad(new Http2FrameHeader(0, Http2FrameType.Data, Http2FrameFlags.Padded, 1), []));
    }
}
