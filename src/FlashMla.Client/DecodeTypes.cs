using System.Runtime.InteropServices;
using FlashMla.Contracts.V1;
using FlashMla.Contracts.Wire;

namespace FlashMla.Client;

/// <summary>
/// One decode step of a batch: <see cref="Q"/> bf16 <c>[b, s_q, h_q, 576]</c>, <see cref="NewKv"/> bf16
/// <c>[b, s_q, 576]</c> or empty (attend over the cache as it is), scale 0 for 1/sqrt(576).
/// The tensors are not copied: their memory is written straight into the HTTP/2 stream when the request is
/// sent, so leave it unchanged until the send has completed (<see cref="DecodeStream.SendAsync"/>'s task, or
/// the whole call for <see cref="DecodeStream.DecodeAsync"/> and <see cref="FlashMlaClient.DecodeOnceAsync"/>).
/// </summary>
public sealed record DecodeInput(int Layer, IReadOnlyList<ulong> SequenceIds, int QueryTokens, int Heads,
    ReadOnlyMemory<ushort> Q, ReadOnlyMemory<ushort> NewKv = default, float SoftmaxScale = 0)
{
    private ReadOnlyMemory<byte> _qBytes, _newKvBytes;

    /// <summary>
    /// A step whose tensors are already in wire form (little-endian bf16 bytes), e.g. in pooled or pinned
    /// buffers of the caller: nothing is converted or copied before the send.
    /// </summary>
    public static DecodeInput FromBytes(int layer, IReadOnlyList<ulong> sequenceIds, int queryTokens, int heads,
        ReadOnlyMemory<byte> q, ReadOnlyMemory<byte> newKv = default, float softmaxScale = 0) =>
        new(layer, sequenceIds, queryTokens, heads, default, default, softmaxScale) { _qBytes = q, _newKvBytes = newKv };

    /// <summary>Bytes of q as they go on the wire.</summary>
    public ReadOnlyMemory<byte> QBytes => _qBytes.IsEmpty ? WireBytes.Of(Q) : _qBytes;

    /// <summary>Bytes of the new KV rows as they go on the wire; empty when there are none.</summary>
    public ReadOnlyMemory<byte> NewKvBytes => _newKvBytes.IsEmpty ? WireBytes.Of(NewKv) : _newKvBytes;

    internal DecodeRequest ToRequest(ulong requestId)
    {
        long b = SequenceIds.Count;
        var request = new DecodeRequest
        {
            RequestId = requestId,
            Layer = (uint)Layer,
            SQ = (uint)QueryTokens,
            HQ = (uint)Heads,
            SoftmaxScale = SoftmaxScale,
            Q = TensorBytes.Bf16(QBytes, b, QueryTokens, Heads, 576),
        };
        request.SequenceIds.Add(SequenceIds);
        var kv = NewKvBytes;
        if (!kv.IsEmpty) request.Kv = TensorBytes.Bf16(kv, b, QueryTokens, 576);
        return request;
    }
}

/// <summary>
/// The outputs of one step. They live in the pooled buffer the response was received into (on the library's own
/// transport, straight from the socket: no copy after it); read them through <see cref="Out"/> and <see cref="Lse"/>
/// or copy them out, then <see cref="Dispose"/> to give the buffer back (an output never disposed is only garbage:
/// its buffer is collected, not reused). The buffer is the output's from the moment its task completes until
/// <see cref="Dispose"/>; spans read from it must not be used after that. To have the outputs in memory of your own
/// instead, decode into it (<see cref="DecodeStream.DecodeAsync(DecodeInput, Memory{ushort}, Memory{float}, CancellationToken)"/>).
/// </summary>
public sealed class DecodeOutput : IDisposable
{
    private readonly Leased<DecodeResponse> _response;
    private readonly bool _pooled;

    internal DecodeOutput(Leased<DecodeResponse> response, bool pooled = true)
    {
        _response = response;
        _pooled = pooled;
    }

    /// <summary>Wraps a response that owns its bytes (nothing to give back).</summary>
    public DecodeOutput(DecodeResponse response) : this(new Leased<DecodeResponse>(response), pooled: false)
    {
    }

    private DecodeResponse Response
    {
        get
        {
            ObjectDisposedException.ThrowIf(_pooled && _response.IsReleased, this);
            return _response.Message;
        }
    }

    /// <summary>bf16 <c>[b, s_q, h_q, 512]</c>.</summary>
    public ReadOnlySpan<ushort> Out => TensorBytes.AsBf16(Response.Out);

    /// <summary>fp32 <c>[b, h_q, s_q]</c>.</summary>
    public ReadOnlySpan<float> Lse => TensorBytes.AsFloat(Response.Lse);

    /// <summary>Copies <c>out</c> into <paramref name="destination"/> (at least as long as <see cref="Out"/>).</summary>
    public void CopyOutTo(Span<ushort> destination) => Out.CopyTo(destination);

    /// <summary>Copies <c>lse</c> into <paramref name="destination"/> (at least as long as <see cref="Lse"/>).</summary>
    public void CopyLseTo(Span<float> destination) => Lse.CopyTo(destination);

    /// <summary>Payload bytes of the response (out + lse).</summary>
    public long PayloadBytes => Response.Out.Data.Length + Response.Lse.Data.Length;

    /// <summary>Copies both tensors into the caller's memory after checking their sizes against <paramref name="lengths"/>.</summary>
    internal DecodeResult CopyOut(DecodeOutputLengths lengths, Span<ushort> output, Span<float> lse) => lengths.CopyOut(Response, output, lse);

    public Contracts.V1.DecodeTimings Timings => Response.Timings;
    public ulong RequestId => Response.RequestId;

    public void Dispose() => _response.Dispose();
}

/// <summary>Bytes of bf16 memory without a copy when it is array-backed (the usual case).</summary>
internal static class WireBytes
{
    public static ReadOnlyMemory<byte> Of(ReadOnlyMemory<ushort> values)
    {
        if (values.IsEmpty) return ReadOnlyMemory<byte>.Empty;
        if (MemoryMarshal.TryGetArray(values, out var segment)) return new BytesOfArray(segment).Memory;
        return MemoryMarshal.AsBytes(values.Span).ToArray();
    }

    /// <summary>A byte view of a segment of a ushort array.</summary>
    private sealed class BytesOfArray(ArraySegment<ushort> segment) : System.Buffers.MemoryManager<byte>
    {
        public override Span<byte> GetSpan() => MemoryMarshal.AsBytes(segment.AsSpan());

        public override unsafe System.Buffers.MemoryHandle Pin(int elementIndex = 0)
        {
            if ((uint)elementIndex > (uint)(segment.Count * 2)) throw new ArgumentOutOfRangeException(nameof(elementIndex));
            var handle = GCHandle.Alloc(segment.Array, GCHandleType.Pinned);
            return new System.Buffers.MemoryHandle((byte*)handle.AddrOfPinnedObject() + segment.Offset * 2L + elementIndex, handle);
        }

        public override void Unpin()
        {
        }

        protected override void Dispose(bool disposing)
        {
        }
    }
}
