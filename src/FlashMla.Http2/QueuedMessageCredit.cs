namespace FlashMla.Http2;

/// <summary>
/// Receive flow control of a stream read as whole gRPC messages by one reader (the data plane's requests, the
/// client's responses): the bytes of a DATA payload go back to the peer as stream window as they land while fewer
/// than <see cref="MaxQueuedMessages"/> whole messages wait for the reader; past that they are held until the reader
/// takes one. A stream's memory is then bounded by its window plus those messages, and a message larger than the
/// window still arrives (its bytes are credited as they land). Thread-safe: the connection's reader loop calls
/// <see cref="Received"/> and <see cref="Queued"/>, the stream's reader <see cref="Taken"/>.
/// </summary>
internal sealed class QueuedMessageCredit(Http2Stream stream)
{
    /// <summary>Whole messages the reader has not taken before the stream's credit stops going back.</summary>
    public const int MaxQueuedMessages = 2;

    private readonly object _gate = new();
    private int _queued, _held;

    /// <summary>A whole message joined the reader's queue (<paramref name="count"/> -1: it could not join after all).</summary>
    public void Queued(int count = 1)
    {
        lock (_gate) _queued += count;
    }

    /// <summary>
    /// <paramref name="bytes"/> of DATA landed: credited now unless enough messages wait (bytes of a stream being
    /// discarded always go back: nobody will take them). <paramref name="flush"/>: send the WINDOW_UPDATE now.
    /// </summary>
    public void Received(int bytes, bool flush, bool discarding)
    {
        lock (_gate)
        {
            if (_queued >= MaxQueuedMessages && !discarding)
            {
                _held += bytes;
                return;
            }
        }
        stream.Release(bytes, flush);
    }

    /// <summary>The reader took a whole message: held credit goes back once fewer than the limit wait.</summary>
    public void Taken()
    {
        int release = 0;
        lock (_gate)
        {
            _queued--;
            if (_queued < MaxQueuedMessages)
            {
                release = _held;
                _held = 0;
            }
        }
        if (release > 0) stream.Release(release, flush: true);
    }
}
