namespace FlashMla.Http2;

/// <summary>
/// What one side of a connection advertises and enforces: the SETTINGS it sends (RFC 9113, section 6.5.2),
/// its connection receive window (raised from 64 KiB by a WINDOW_UPDATE right after SETTINGS), and the
/// largest header block it assembles. Each role fills it from its own options.
/// </summary>
internal sealed record Http2Settings
{
    /// <summary>SETTINGS_MAX_FRAME_SIZE: the largest frame the peer may send us, and the cap on our own frames.</summary>
    public int MaxFrameSize { get; init; } = Http2Frames.DefaultMaxFrameSize;

    /// <summary>SETTINGS_INITIAL_WINDOW_SIZE: each stream's receive window.</summary>
    public int StreamWindow { get; init; } = Http2Frames.DefaultWindowSize;

    /// <summary>The connection's receive window.</summary>
    public int ConnectionWindow { get; init; } = Http2Frames.DefaultWindowSize;

    /// <summary>SETTINGS_MAX_CONCURRENT_STREAMS the peer may open; null sends none (a client: the server opens no streams).</summary>
    public int? MaxConcurrentStreams { get; init; }

    /// <summary>SETTINGS_HEADER_TABLE_SIZE: the HPACK dynamic table our decoder keeps (4096 unless sent).</summary>
    public int HeaderTableSize { get; init; } = 4096;

    /// <summary>Sends SETTINGS_ENABLE_PUSH 0 (a client that accepts no pushed streams).</summary>
    public bool DisablePush { get; init; }

    /// <summary>
    /// Largest header block (HEADERS and its CONTINUATIONs, as encoded) assembled before it is a connection error:
    /// past it the block cannot be decoded, and without decoding it the HPACK table is out of step with the peer's.
    /// </summary>
    public int MaxHeaderBlockBytes { get; init; } = 64 * 1024;

    /// <summary>
    /// SETTINGS_MAX_HEADER_LIST_SIZE: the largest header list (decoded, RFC 9113 section 6.5.2) this side takes on a
    /// stream; a block over it (up to <see cref="MaxHeaderBlockBytes"/>) is decoded and refused on its stream alone.
    /// Null: none sent, none enforced beyond <see cref="MaxHeaderBlockBytes"/>.
    /// </summary>
    public int? MaxHeaderListSize { get; init; }

    /// <summary>
    /// A header list over this many bytes is refused on its stream, below the advertised <see cref="MaxHeaderListSize"/>.
    /// For a server that advertises what its other port's HTTP/2 server advertises (Kestrel sends its decode limit)
    /// while refusing calls above its own, lower, limit on their streams: so that a client that honours the setting
    /// (grpc-go) sends the call and gets the same refusal from both ports, rather than failing locally on one of them.
    /// Null: <see cref="MaxHeaderListSize"/>.
    /// </summary>
    public int? StreamHeaderListLimit { get; init; }

    /// <summary>SETTINGS, then the WINDOW_UPDATE that raises the connection window: the frames that open a connection.</summary>
    public int WriteOpening(Span<byte> destination)
    {
        Span<(Http2Setting, uint)> settings = stackalloc (Http2Setting, uint)[7];
        int count = 0;
        if (HeaderTableSize != 4096) settings[count++] = (Http2Setting.HeaderTableSize, (uint)HeaderTableSize);
        if (DisablePush) settings[count++] = (Http2Setting.EnablePush, 0);
        if (MaxConcurrentStreams is { } streams) settings[count++] = (Http2Setting.MaxConcurrentStreams, (uint)streams);
        if (StreamWindow != Http2Frames.DefaultWindowSize) settings[count++] = (Http2Setting.InitialWindowSize, (uint)StreamWindow);
        if (MaxFrameSize != Http2Frames.DefaultMaxFrameSize) settings[count++] = (Http2Setting.MaxFrameSize, (uint)MaxFrameSize);
        if (MaxHeaderListSize is { } listSize) settings[count++] = (Http2Setting.MaxHeaderListSize, (uint)listSize);
        int n = Http2Frames.WriteSettings(destination, settings[..count]);
        int increment = ConnectionWindow - Http2Frames.DefaultWindowSize;
        if (increment > 0) n += Http2Frames.WriteWindowUpdate(destination[n..], 0, increment);
        return n;
    }

    /// <summary>Room <see cref="WriteOpening"/> needs.</summary>
    public const int MaxOpeningBytes = 9 + 7 * 6 + Http2Frames.WindowUpdateFrameSize;
}
