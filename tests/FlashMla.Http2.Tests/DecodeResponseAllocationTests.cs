using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics.Tracing;
using FlashMla.Client;
using FlashMla.Client.Transport;
using FlashMla.Contracts.V1;
using Google.Protobuf;

namespace FlashMla.Http2.Tests;

/// <summary>
/// The client's steady-state decode path allocates nothing that grows with the response: N unary decodes of a
/// 4 MiB output allocate (the whole process, every thread: the connection's reader loop included) far less than
/// N x 4 MiB, and nothing of the response's size is rented from the shared pool (the buffer a response lands in is
/// the call's pool's, once: before, each DATA frame landed in a shared-pool array and was copied from there). The server is a scripted one that writes each answer from one prepared array.
/// </summary>
[Collection(ProcessCountersCollection.Name)]
public sealed class DecodeResponseAllocationTests
{
    private const int Batch = 32, Heads = 128; // out [32, 1, 128, 512] bf16: 4 MiB
    private const int OutBytes = Batch * Heads * 512 * 2;
    private const int Calls = 30;

    /// <summary>
    /// Response HEADERS, the answer's DATA frames (1 MiB each) and the trailers, for one stream: the stream id is
    /// patched into each frame header before the whole goes out in one write.
    /// </summary>
    private sealed class PreparedAnswer
    {
        private readonly List<int> _headerOffsets = [];

        public PreparedAnswer()
        {
            var random = new Random(3);
            var output = new byte[OutBytes];
            var lse = new byte[Batch * Heads * 4];
            random.NextBytes(output);
            random.NextBytes(lse);
            Response = new DecodeResponse
            {
                RequestId = 1,
                Out = new Tensor { Dtype = DType.Bf16, Data = ByteString.CopyFrom(output), Shape = { Batch, 1, Heads, 512 } },
                Lse = new Tensor { Dtype = DType.Fp32, Data = ByteString.CopyFrom(lse), Shape = { Batch, Heads, 1 } },
            };
            var wire = new MemoryStream();
            Frame(wire, Http2FrameType.Headers, Http2FrameFlags.EndHeaders, ScriptedDecodeServer.ResponseHeaders);
            foreach (var piece in ScriptedDecodeServer.Pieces(ScriptedDecodeServer.Body(Response.ToByteArray()), 1 << 20))
                Frame(wire, Http2FrameType.Data, Http2FrameFlags.None, [.. piece]);
            Frame(wire, Http2FrameType.Headers, Http2FrameFlags.EndHeaders | Http2FrameFlags.EndStream, ScriptedDecodeServer.OkTrailers);
            Bytes = wire.ToArray();
        }

        public DecodeResponse Response { get; }

        public byte[] Bytes { get; }

        private void Frame(MemoryStream wire, Http2FrameType type, Http2FrameFlags flags, byte[] payload)
        {
            _headerOffsets.Add((int)wire.Length);
            var header = new byte[Http2FrameHeader.Size];
            new Http2FrameHeader(payload.Length, type, flags, 0).Write(header);
            wire.Write(header);
            wire.Write(payload);
        }

        public ReadOnlyMemory<byte> For(int streamId)
        {
            foreach (int at in _headerOffsets) BinaryPrimitives.WriteInt32BigEndian(Bytes.AsSpan(at + 5), streamId);
            return Bytes;
        }
    }

    /// <summary>Answers every stream whose request ends with the prepared answer; reads into one reused buffer.</summary>
    private static async Task ServeAsync(ScriptedConnection connection, PreparedAnswer answer)
    {
        var header = new byte[Http2FrameHeader.Size];
        var payload = new byte[1 << 20];
        try
        {
            while (true)
            {
                await connection.Stream.ReadExactlyAsync(header);
                var frame = Http2FrameHeader.Read(header);
                await connection.Stream.ReadExactlyAsync(payload.AsMemory(0, frame.Length));
                if (frame.StreamId != 0 && frame.Has(Http2FrameFlags.EndStream)) await connection.Stream.WriteAsync(answer.For(frame.StreamId));
            }
        }
        catch (Exception ex) when (ex is IOException or EndOfStreamException or ObjectDisposedException)
        {
            // The client closed the connection: the test is over.
        }
    }

    /// <summary>Bytes rented from <see cref="ArrayPool{T}.Shared"/> (of byte) on any thread while it listens (the runtime's ArrayPool events).</summary>
    private sealed class SharedPoolRentals : EventListener
    {
        private static readonly int SharedId = ArrayPool<byte>.Shared.GetHashCode();
        private long _bytes;

        public long Bytes => Interlocked.Read(ref _bytes);

        protected override void OnEventSourceCreated(EventSource source)
        {
            if (source.Name == "System.Buffers.ArrayPoolEventSource") EnableEvents(source, EventLevel.Verbose);
        }

        protected override void OnEventWritten(EventWrittenEventArgs e)
        {
            // BufferRented: bufferId, bufferSize, poolId, bucketId.
            if (e.EventName == "BufferRented" && e.Payload is { Count: >= 3 } payload && payload[2] is int pool && pool == SharedId && payload[1] is int size)
                Interlocked.Add(ref _bytes, size);
        }
    }

    [Fact]
    public async Task Decoding_many_large_responses_allocates_and_rents_far_less_than_their_bytes()
    {
        var answer = new PreparedAnswer();
        using var server = new ScriptedHttp2Server();
        using var client = new FlashMlaClient(server.Address, new FlashMlaClientOptions
            { LargeFrames = new LargeFrameHttp2Options { KeepAlivePingDelay = Timeout.InfiniteTimeSpan } });
        var input = new DecodeInput(0, [.. Enumerable.Range(1, Batch).Select(i => (ulong)i)], 1, Heads, new ushort[576]);
        var first = client.DecodeOnceAsync(input);
        using var connection = await server.AcceptAsync();
        // Credit for the requests (the scripted server never gives any back), frames as large as the client's.
        await connection.HandshakeAsync((Http2Setting.InitialWindowSize, int.MaxValue), (Http2Setting.MaxFrameSize, 1 << 20));
        await connection.WriteAsync(Http2FrameType.WindowUpdate, Http2FrameFlags.None, 0, ScriptedConnection.UInt32(int.MaxValue - 65535));
        var serving = Task.Run(() => ServeAsync(connection, answer));
        (await first.WaitAsync(TimeSpan.FromSeconds(20))).Dispose();
        for (int i = 0; i < 5; i++) (await client.DecodeOnceAsync(input)).Dispose(); // warm: pools filled, code jitted

        long allocated, rentedFromShared;
        using (var rentals = new SharedPoolRentals())
        {
            long before = GC.GetTotalAllocatedBytes(precise: true);
            for (int i = 0; i < Calls; i++)
            {
                using var output = await client.DecodeOnceAsync(input);
                Assert.Equal(OutBytes, output.Out.Length * 2); // the answer came whole (its bytes are checked elsewhere)
            }
            allocated = GC.GetTotalAllocatedBytes(precise: true) - before;
            rentedFromShared = rentals.Bytes;
        }

        Assert.True(allocated < (long)Calls * OutBytes / 20,
            $"{Calls} decodes of a {OutBytes}-byte output allocated {allocated} bytes ({allocated / Calls} per call): something grows with the response");
        // A buffer of the response's size rented anywhere but the call's pool is a second landing place, hence a second copy.
        Assert.True(rentedFromShared < (long)Calls * OutBytes / 20,
            $"{Calls} decodes of a {OutBytes}-byte output rented {rentedFromShared} bytes from ArrayPool<byte>.Shared ({rentedFromShared / Calls} per call): " +
            "the response passed through a buffer besides its message's");
        connection.Dispose();
        await serving.WaitAsync(TimeSpan.FromSeconds(10));
    }
}

/// <summary>
/// Tests that read process-wide counters (allocated bytes, the shared pool's rentals) run alone: beside the other
/// test classes' clients and servers the counters took their allocations too (one run in three failed).
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ProcessCountersCollection
{
    public const string Name = "process-wide counters (not parallel)";
}
