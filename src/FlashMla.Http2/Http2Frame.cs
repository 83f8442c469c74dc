using System.Buffers.Binary;

namespace FlashMla.Http2;

/// <summary>HTTP/2 frame types (RFC 9113, section 6).</summary>
internal enum Http2FrameType : byte
{
    Data = 0x0,
    Headers = 0x1,
    Priority = 0x2,
    RstStream = 0x3,
    Settings = 0x4,
    PushPromise = 0x5,
    Ping = 0x6,
    GoAway = 0x7,
    WindowUpdate = 0x8,
    Continuation = 0x9,
}

/// <summary>Frame flags; the same bit means different things on different frame types.</summary>
[Flags]
internal enum Http2FrameFlags : byte
{
    None = 0,
    EndStream = 0x1,
    Ack = 0x1,
    EndHeaders = 0x4,
    Padded = 0x8,
    Priority = 0x20,
}

/// <summary>SETTINGS parameters (RFC 9113, section 6.5.2).</summary>
internal enum Http2Setting : ushort
{
    HeaderTableSize = 0x1,
    EnablePush = 0x2,
    MaxConcurrentStreams = 0x3,
    InitialWindowSize = 0x4,
    MaxFrameSize = 0x5,
    MaxHeaderListSize = 0x6,
}

/// <summary>Error codes of RST_STREAM and GOAWAY (RFC 9113, section 7).</summary>
internal enum Http2ErrorCode : uint
{
    NoError = 0x0,
    ProtocolError = 0x1,
    InternalError = 0x2,
    FlowControlError = 0x3,
    SettingsTimeout = 0x4,
    StreamClosed = 0x5,
    FrameSizeError = 0x6,
    RefusedStream = 0x7,
    Cancel = 0x8,
    CompressionError = 0x9,
    ConnectError = 0xa,
    EnhanceYourCalm = 0xb,
    InadequateSecurity = 0xc,
    Http11Required = 0xd,
}

/// <summary>The 9-byte header every frame starts with: payload length, type, flags, stream id.</summary>
internal readonly record struct Http2FrameHeader(int Length, Http2FrameType Type, Http2FrameFlags Flags, int StreamId)
{
    public const int Size = 9;

    public bool Has(Http2FrameFlags flag) => (Flags & flag) != 0;

    public static Http2FrameHeader Read(ReadOnlySpan<byte> source) =>
        new((source[0] << 16) | (source[1] << 8) | source[2], (Http2FrameType)source[3], (Http2FrameFlags)source[4],
            (int)(BinaryPrimitives.ReadUInt32BigEndian(source[5..]) & 0x7FFF_FFFF));

    public void Write(Span<byte> destination)
    {
        destination[0] = (byte)(Length >> 16);
        destination[1] = (byte)(Length >> 8);
        destination[2] = (byte)Length;
        destination[3] = (byte)Type;
        destination[4] = (byte)Flags;
        BinaryPrimitives.WriteUInt32BigEndian(destination[5..], (uint)StreamId & 0x7FFF_FFFF);
    }
}

/// <summary>
/// Protocol constants and the encoders of the small frames (SETTINGS, WINDOW_UPDATE, RST_STREAM, PING, GOAWAY):
/// each writes one whole frame into a span and returns its length, so callers can batch them into one send.
/// </summary>
internal static class Http2Frames
{
    /// <summary>The client connection preface (RFC 9113, section 3.4).</summary>
    public static ReadOnlySpan<byte> Preface => "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"u8;

    public const int DefaultMaxFrameSize = 16 * 1024;
    public const int MaxAllowedFrameSize = (1 << 24) - 1;
    public const int DefaultWindowSize = 65_535;
    public const int MaxWindowSize = int.MaxValue;

    public const int WindowUpdateFrameSize = Http2FrameHeader.Size + 4;
    public const int RstStreamFrameSize = Http2FrameHeader.Size + 4;
    public const int PingFrameSize = Http2FrameHeader.Size + 8;

    public static int SettingsFrameSize(int count) => Http2FrameHeader.Size + 6 * count;

    public static int WriteSettings(Span<byte> destination, ReadOnlySpan<(Http2Setting Id, uint Value)> settings)
    {
        new Http2FrameHeader(6 * settings.Length, Http2FrameType.Settings, Http2FrameFlags.None, 0).Write(destination);
        var payload = destination[Http2FrameHeader.Size..];
        for (int i = 0; i < settings.Length; i++)
        {
            BinaryPrimitives.WriteUInt16BigEndian(payload[(6 * i)..], (ushort)settings[i].Id);
            BinaryPrimitives.WriteUInt32BigEndian(payload[(6 * i + 2)..], settings[i].Value);
        }
        return SettingsFrameSize(settings.Length);
    }

    public static int WriteSettingsAck(Span<byte> destination)
    {
        new Http2FrameHeader(0, Http2FrameType.Settings, Http2FrameFlags.Ack, 0).Write(destination);
        return Http2FrameHeader.Size;
    }

    public static int WriteWindowUpdate(Span<byte> destination, int streamId, int increment)
    {
        new Http2FrameHeader(4, Http2FrameType.WindowUpdate, Http2FrameFlags.None, streamId).Write(destination);
        BinaryPrimitives.WriteUInt32BigEndian(destination[Http2FrameHeader.Size..], (uint)increment & 0x7FFF_FFFF);
        return WindowUpdateFrameSize;
    }

    public static int WriteRstStream(Span<byte> destination, int streamId, Http2ErrorCode code)
    {
        new Http2FrameHeader(4, Http2FrameType.RstStream, Http2FrameFlags.None, streamId).Write(destination);
        BinaryPrimitives.WriteUInt32BigEndian(destination[Http2FrameHeader.Size..], (uint)code);
        return RstStreamFrameSize;
    }

    public static int WritePing(Span<byte> destination, ulong opaque, bool ack)
    {
        new Http2FrameHeader(8, Http2FrameType.Ping, ack ? Http2FrameFlags.Ack : Http2FrameFlags.None, 0).Write(destination);
        BinaryPrimitives.WriteUInt64BigEndian(destination[Http2FrameHeader.Size..], opaque);
        return PingFrameSize;
    }

    public static int WriteGoAway(Span<byte> destination, int lastStreamId, Http2ErrorCode code)
    {
        new Http2FrameHeader(8, Http2FrameType.GoAway, Http2FrameFlags.None, 0).Write(destination);
        BinaryPrimitives.WriteUInt32BigEndian(destination[Http2FrameHeader.Size..], (uint)lastStreamId & 0x7FFF_FFFF);
        BinaryPrimitives.WriteUInt32BigEndian(destination[(Http2FrameHeader.Size + 4)..], (uint)code);
        return Http2FrameHeader.Size + 8;
    }

    /// <summary>
    /// The part of a DATA or HEADERS payload after padding (and, for HEADERS, the priority fields) is removed.
    /// Throws <see cref="Http2ConnectionException"/> when the padding is longer than the payload.
    /// </summary>
    public static (int Offset, int Length) Unpad(Http2FrameHeader header, ReadOnlySpan<byte> payload)
    {
        int offset = 0, end = payload.Length;
        if (header.Has(Http2FrameFlags.Padded))
        {
            if (payload.Length < 1) throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"{header.Type} frame is padded but empty");
            offset = 1;
            end -= payload[0];
        }
        if (header.Type == Http2FrameType.Headers && header.Has(Http2FrameFlags.Priority)) offset += 5;
        if (end < offset)
            throw new Http2ConnectionException(Http2ErrorCode.ProtocolError, $"{header.Type} frame's padding is longer than its payload");
        return (offset, end - offset);
    }
}

/// <summary>A connection error (RFC 9113, section 5.4.1): the connection is closed with GOAWAY carrying <see cref="Code"/>.</summary>
internal sealed class Http2ConnectionException(Http2ErrorCode code, string message) : Exception(message)
{
    public Http2ErrorCode Code { get; } = code;
}

/// <summary>A stream error (RFC 9113, section 5.4.2): the stream is reset with <see cref="Code"/>, the connection goes on.</summary>
internal sealed class Http2StreamException(Http2ErrorCode code, string message) : Exception(message)
{
    public Http2ErrorCode Code { get; } = code;
}
