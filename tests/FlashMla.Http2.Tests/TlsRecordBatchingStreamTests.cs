using System.Buffers;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using FlashMla.Cli;

namespace FlashMla.Http2.Tests;

/// <summary>
/// The stream under SslStream (<see cref="TlsRecordBatchingStream"/>): writes pass through until the handshake is done,
/// then gather until a flush; small reads are answered from large receives; its buffers go back to their pool only
/// once nothing uses them. Over real TLS: frames of odd sizes, split across records and sends anyhow, arrive byte for
/// byte, and a megabyte frame leaves in a handful of sends, not one per record.
/// </summary>
public sealed class TlsRecordBatchingStreamTests
{
    private const int Size = TlsRecordBatchingStream.BufferSize;

    [Fact]
    public async Task Before_batching_starts_every_write_goes_to_the_socket_at_once()
    {
        var inner = new RecordingStream();
        using var stream = new TlsRecordBatchingStream(inner);
        await stream.WriteAsync(new byte[] { 1, 2, 3 });
        await stream.WriteAsync(new byte[] { 4 });
        Assert.Equal([3, 1], inner.Writes.Select(w => w.Length));
        Assert.Equal(0, stream.Pending);
    }

    [Fact]
    public async Task Once_batching_writes_gather_until_a_flush_and_leave_in_one_send_in_order()
    {
        var inner = new RecordingStream();
        using var stream = new TlsRecordBatchingStream(inner);
        stream.StartBatching();
        await stream.WriteAsync(Bytes(100, seed: 1));
        await stream.WriteAsync(Bytes(16_413, seed: 2)); // a full TLS record with its overhead
        await stream.WriteAsync(Bytes(7, seed: 3));
        Assert.Empty(inner.Writes);
        Assert.Equal(16_520, stream.Pending);

        await stream.FlushAsync();
        var sent = Assert.Single(inner.Writes);
        Assert.Equal([.. Bytes(100, 1), .. Bytes(16_413, 2), .. Bytes(7, 3)], sent);
        Assert.Equal(0, stream.Pending);
        await stream.FlushAsync(); // nothing gathered: nothing sent
        Assert.Single(inner.Writes);
    }

    [Fact]
    public async Task A_write_that_does_not_fit_sends_what_was_gathered_first_and_one_as_large_as_the_buffer_goes_straight_through()
    {
        var inner = new RecordingStream();
        using var stream = new TlsRecordBatchingStream(inner);
        stream.StartBatching();
        await stream.WriteAsync(Bytes(Size - 10, seed: 1));
        await stream.WriteAsync(Bytes(11, seed: 2)); // one byte too many: the first goes out alone
        Assert.Equal([Size - 10], inner.Writes.Select(w => w.Length));
        await stream.WriteAsync(Bytes(Size, seed: 3)); // the 11 bytes, then the large write from the caller's memory
        Assert.Equal([Size - 10, 11, Size], inner.Writes.Select(w => w.Length));
        Assert.Equal(Bytes(Size, 3), inner.Writes[2]);
        Assert.Equal(0, stream.Pending);
    }

    [Fact]
    public async Task Small_reads_are_answered_from_one_large_receive_and_a_read_as_large_as_the_buffer_goes_straight_to_the_socket()
    {
        var data = Bytes(3 * Size, seed: 5);
        var inner = new RecordingStream(data);
        using var stream = new TlsRecordBatchingStream(inner);
        var first = new byte[5];
        Assert.Equal(5, await stream.ReadAsync(first));
        Assert.Equal([Size], inner.ReadSizes); // asked the socket for a whole buffer
        var rest = new byte[Size];
        Assert.Equal(Size - 5, await stream.ReadAsync(rest)); // what the buffer holds, no new receive
        Assert.Single(inner.ReadSizes);
        Assert.Equal(data.AsSpan(0, 5).ToArray(), first);
        Assert.Equal(data.AsSpan(5, Size - 5).ToArray(), rest.AsSpan(0, Size - 5).ToArray());

        var large = new byte[Size + 3];
        Assert.Equal(Size + 3, await stream.ReadAsync(large)); // empty buffer and a large read: into the caller's memory
        Assert.Equal([Size, Size + 3], inner.ReadSizes);
        Assert.Equal(data.AsSpan(Size, Size + 3).ToArray(), large);
        Assert.Equal(0, await stream.ReadAsync(new byte[0]));
    }

    [Fact]
    public async Task The_end_of_the_socket_reads_as_zero()
    {
        var inner = new RecordingStream([9, 8]);
        using var stream = new TlsRecordBatchingStream(inner);
        var buffer = new byte[16];
        Assert.Equal(2, await stream.ReadAsync(buffer));
        Assert.Equal(0, await stream.ReadAsync(buffer));
        Assert.Equal([9, 8], buffer[..2]);
    }

    [Fact]
    public async Task The_buffers_go_back_to_their_pool_on_dispose_and_not_while_a_read_still_uses_one()
    {
        var pool = new CountingPool();
        var inner = new RecordingStream { BlockReads = true };
        var stream = new TlsRecordBatchingStream(inner, pool);
        stream.StartBatching();
        var read = stream.ReadAsync(new byte[10]).AsTask(); // waits in the socket's read, into the read buffer
        await inner.ReadStarted.Task.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(2, pool.Outstanding);

        stream.Dispose();
        Assert.Equal(2, pool.Outstanding); // the read buffer is still the socket's
        inner.Release.SetResult();
        await Assert.ThrowsAnyAsync<Exception>(() => read.WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Equal(0, pool.Outstanding);
        Assert.True(inner.Disposed);
        await Assert.ThrowsAsync<ObjectDisposedException>(() => stream.WriteAsync(new byte[1]).AsTask());
        await Assert.ThrowsAsync<ObjectDisposedException>(() => stream.ReadAsync(new byte[1]).AsTask());
        Assert.Throws<ObjectDisposedException>(stream.StartBatching);
        Assert.Equal(0, pool.Outstanding);
    }

    [Fact]
    public async Task Over_TLS_frames_of_odd_sizes_split_across_records_arrive_byte_for_byte_and_a_megabyte_frame_takes_a_handful_of_sends()
    {
        await using var pair = await TlsPair.ConnectAsync();
        using var writer = new Http2FrameWriter(pair.ClientSsl);
        using var reader = new Http2FrameReader(pair.ServerSsl);
        // Sizes around the 16 KiB record, the reader's 32 KiB direct-read threshold and the 128 KiB buffer, and a 1 MiB frame.
        int[] sizes = [1, 16_383, 16_384, 16_385, 32_767, 32_769, 131_071, 131_073, 1 << 20, 7];
        var payloads = sizes.Select((n, i) => Bytes(n, seed: 10 + i)).ToArray();
        var send = Task.Run(async () =>
        {
            for (int i = 0; i < payloads.Length; i++)
            {
                await writer.EnterAsync(default);
                try
                {
                    long before = pair.ClientSocketWrites.Writes;
                    await writer.WriteFrameLockedAsync(new Http2FrameHeader(payloads[i].Length, Http2FrameType.Data, Http2FrameFlags.None, 1), payloads[i]);
                    // Header and payload in one send up to the buffer's size; past it, sends of up to 128 KiB, 7 whole
                    // records of 16 KiB each (a 1 MiB frame: 64 records, in 10 or 11 sends, not 65).
                    long sends = pair.ClientSocketWrites.Writes - before;
                    int records = (payloads[i].Length + 16_383) / 16_384;
                    if (payloads[i].Length < 100_000) Assert.Equal(1, sends);
                    else Assert.InRange(sends, 1, (records + 6) / 7 + 2);
                }
                finally
                {
                    writer.Exit();
                }
            }
        });
        var receive = Task.Run(async () =>
        {
            for (int i = 0; i < payloads.Length; i++)
            {
                var header = await reader.ReadHeaderAsync();
                Assert.NotNull(header);
                Assert.Equal(payloads[i].Length, header.Value.Length);
                var received = new byte[header.Value.Length];
                await reader.ReadExactlyAsync(received);
                Assert.Equal(payloads[i], received);
            }
        });
        await (await Task.WhenAny(send, receive).WaitAsync(TimeSpan.FromSeconds(30))); // a failed side fails the test, not hangs it
        await Task.WhenAll(send, receive).WaitAsync(TimeSpan.FromSeconds(30));
        // Every send the client made after the handshake was a whole number of TLS records: the server decrypted them all.
        Assert.Equal(0, pair.ClientBatching.Pending);
    }

    [Fact]
    public async Task Over_TLS_the_handshake_completes_before_batching_starts_and_data_flows_both_ways_after()
    {
        await using var pair = await TlsPair.ConnectAsync();
        Assert.Equal(SslProtocols.Tls13, pair.ClientSsl.SslProtocol);
        var ping = Bytes(40_000, seed: 3);
        var pong = Bytes(70_001, seed: 4);
        await pair.ClientSsl.WriteAsync(ping);
        await pair.ClientSsl.FlushAsync();
        var got = new byte[ping.Length];
        await pair.ServerSsl.ReadExactlyAsync(got);
        Assert.Equal(ping, got);
        await pair.ServerSsl.WriteAsync(pong);
        await pair.ServerSsl.FlushAsync();
        var back = new byte[pong.Length];
        await pair.ClientSsl.ReadExactlyAsync(back);
        Assert.Equal(pong, back);
    }

    private static byte[] Bytes(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    /// <summary>A client and a server SslStream over loopback, each on a batching stream (batching from the handshake's end).</summary>
    private sealed class TlsPair : IAsyncDisposable
    {
        public required SslStream ClientSsl { get; init; }
        public required SslStream ServerSsl { get; init; }
        public required TlsRecordBatchingStream ClientBatching { get; init; }
        public required CountingStream ClientSocketWrites { get; init; }

        public static async Task<TlsPair> ConnectAsync()
        {
            using var authority = DevCertificates.CreateAuthority("batching test CA");
            var certificate = DevCertificates.IssueServer(authority, [], [IPAddress.Loopback]);
            using var listener = new Socket(SocketType.Stream, ProtocolType.Tcp);
            listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            listener.Listen(1);
            var client = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            await client.ConnectAsync(listener.LocalEndPoint!);
            var server = await listener.AcceptAsync();
            var counting = new CountingStream(new NetworkStream(client, ownsSocket: true));
            var clientBatching = new TlsRecordBatchingStream(counting);
            var serverBatching = new TlsRecordBatchingStream(new NetworkStream(server, ownsSocket: true));
            var clientSsl = new SslStream(clientBatching);
            var serverSsl = new SslStream(serverBatching);
            var accept = serverSsl.AuthenticateAsServerAsync(new SslServerAuthenticationOptions
                { ServerCertificateContext = SslStreamCertificateContext.Create(certificate, null), EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13 });
            var policy = new X509ChainPolicy { TrustMode = X509ChainTrustMode.CustomRootTrust, RevocationMode = X509RevocationMode.NoCheck };
            policy.CustomTrustStore.Add(authority);
            await clientSsl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
                { TargetHost = "127.0.0.1", CertificateChainPolicy = policy, CertificateRevocationCheckMode = X509RevocationMode.NoCheck })
                .WaitAsync(TimeSpan.FromSeconds(20));
            await accept.WaitAsync(TimeSpan.FromSeconds(20));
            clientBatching.StartBatching();
            serverBatching.StartBatching();
            return new TlsPair { ClientSsl = clientSsl, ServerSsl = serverSsl, ClientBatching = clientBatching, ClientSocketWrites = counting };
        }

        public async ValueTask DisposeAsync()
        {
            await ClientSsl.DisposeAsync();
            await ServerSsl.DisposeAsync();
        }
    }

    /// <summary>Counts the writes that reach the socket.</summary>
    private sealed class CountingStream(Stream inner) : Stream
    {
        private long _writes;
        public long Writes => Interlocked.Read(ref _writes);
        public override bool CanRead => true;
        public override bool CanWrite => true;
        public override bool CanSeek => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() => inner.Flush();
        public override int Read(byte[] buffer, int offset, int count) => inner.Read(buffer, offset, count);
        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default) => inner.ReadAsync(buffer, cancellationToken);
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count)
        {
            Interlocked.Increment(ref _writes);
            inner.Write(buffer, offset, count);
        }

        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            Interlocked.Increment(ref _writes);
            return inner.WriteAsync(buffer, cancellationToken);
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing) inner.Dispose();
            base.Dispose(disposing);
        }
    }

    /// <summary>A socket stand-in: records every write, serves reads from fixed bytes (or holds a read until released).</summary>
    private sealed class RecordingStream(byte[]? readable = null) : Stream
    {
        private int _readAt;
        public List<byte[]> Writes { get; } = [];
        public List<int> ReadSizes { get; } = [];
        public bool BlockReads { get; init; }
        public bool Disposed { get; private set; }
        public TaskCompletionSource ReadStarted { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public TaskCompletionSource Release { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public override bool CanRead => true;
        public override bool CanWrite => true;
        public override bool CanSeek => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => Writes.Add(buffer.AsSpan(offset, count).ToArray());

        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            Writes.Add(buffer.ToArray());
            return ValueTask.CompletedTask;
        }

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            ReadSizes.Add(buffer.Length);
            if (BlockReads)
            {
                ReadStarted.TrySetResult();
                await Release.Task;
                throw new IOException("the socket was closed");
            }
            var bytes = readable ?? [];
            int n = Math.Min(buffer.Length, bytes.Length - _readAt);
            bytes.AsSpan(_readAt, n).CopyTo(buffer.Span);
            _readAt += n;
            return n;
        }

        protected override void Dispose(bool disposing)
        {
            Disposed = true;
            base.Dispose(disposing);
        }
    }

    /// <summary>Counts what is rented and not yet returned.</summary>
    private sealed class CountingPool : ArrayPool<byte>
    {
        private int _outstanding;
        public int Outstanding => Volatile.Read(ref _outstanding);

        public override byte[] Rent(int minimumLength)
        {
            Interlocked.Increment(ref _outstanding);
            return new byte[minimumLength];
        }

        public override void Return(byte[] array, bool clearArray = false) => Interlocked.Decrement(ref _outstanding);
    }
}
