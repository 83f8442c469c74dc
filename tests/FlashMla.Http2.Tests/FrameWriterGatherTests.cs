using System.Buffers;
using System.Net;
using System.Net.Sockets;

namespace FlashMla.Http2.Tests;

/// <summary>
/// The frame writer on a cleartext socket: a frame with pieces larger than its scratch buffer goes out in one gathering
/// send when they are arrays, through the stream piece by piece when one is not; the bytes on the wire are the same.
/// </summary>
public sealed class FrameWriterGatherTests
{
    /// <summary>A NetworkStream that counts the writes that went through it (a gathering send bypasses it).</summary>
    private sealed class CountingStream(Socket socket) : NetworkStream(socket, ownsSocket: false)
    {
        public int Writes;

        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            Interlocked.Increment(ref Writes);
            return base.WriteAsync(buffer, cancellationToken);
        }
    }

    /// <summary>Memory that is not an array (as native, page-locked memory is).</summary>
    private sealed unsafe class NativeMemory(int length) : MemoryManager<byte>
    {
        private readonly byte* _pointer = (byte*)System.Runtime.InteropServices.NativeMemory.Alloc((nuint)length);

        public override Span<byte> GetSpan() => new(_pointer, length);
        public override MemoryHandle Pin(int elementIndex = 0) => new(_pointer + elementIndex);
        public override void Unpin() { }
        protected override void Dispose(bool disposing) => System.Runtime.InteropServices.NativeMemory.Free(_pointer);
    }

    private static async Task<(Socket Client, Socket Server)> PairAsync()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        var accept = listener.AcceptAsync();
        await client.ConnectAsync(listener.LocalEndPoint!);
        return (client, await accept);
    }

    private static byte[] Pattern(int length, int seed)
    {
        var bytes = new byte[length];
        new Random(seed).NextBytes(bytes);
        return bytes;
    }

    [Theory]
    [InlineData(true, 0)]
    [InlineData(false, 4)] // the header with the first small part, the large one, the second small part, the native one
    public async Task A_frame_of_small_and_large_pieces_arrives_byte_for_byte(bool allArrays, int streamWrites)
    {
        var (client, server) = await PairAsync();
        using var _ = client;
        using var __ = server;
        await using var stream = new CountingStream(client);
        using var writer = new Http2FrameWriter(stream, socket: client);
        var small1 = Pattern(100, 1);
        var large = Pattern(100_000, 2); // larger than the 32 KiB scratch buffer
        var small2 = Pattern(50, 3);
        using var native = new NativeMemory(40_000);
        Pattern(40_000, 4).CopyTo(native.GetSpan());
        var middle = allArrays ? new ReadOnlyMemory<byte>(Pattern(40_000, 4)) : native.Memory;
        ReadOnlyMemory<byte>[] parts = [small1, large, small2, middle];
        int payload = parts.Sum(p => p.Length);

        await writer.EnterAsync(default);
        try
        {
            writer.QueuePingAck(7); // queued while the lock is held: it goes first, in the frame's send
            await writer.WritePartsLockedAsync(new Http2FrameHeader(payload, Http2FrameType.Data, Http2FrameFlags.None, 1), parts);
        }
        finally
        {
            writer.Exit();
        }

        var expected = new List<byte>();
        var ping = new byte[Http2Frames.PingFrameSize];
        Http2Frames.WritePing(ping, 7, ack: true);
        expected.AddRange(ping);
        var header = new byte[Http2FrameHeader.Size];
        new Http2FrameHeader(payload, Http2FrameType.Data, Http2FrameFlags.None, 1).Write(header);
        expected.AddRange(header);
        foreach (var part in parts) expected.AddRange(part.ToArray());
        var received = new byte[expected.Count];
        await new NetworkStream(server).ReadExactlyAsync(received).AsTask().WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(expected.ToArray(), received);
        Assert.Equal(streamWrites, stream.Writes);
    }
}
