using FlashMla.Contracts.V1;
using Grpc.Core;

namespace FlashMla.Client;

/// <summary>
/// What a decode into the caller's memory returns (<see cref="FlashMlaClient.DecodeOnceAsync(DecodeInput, Memory{ushort}, Memory{float}, CancellationToken, DateTime?)"/>,
/// <see cref="DecodeStream.DecodeAsync(DecodeInput, Memory{ushort}, Memory{float}, CancellationToken)"/>): the outputs
/// themselves are in the caller's memory, <see cref="OutLength"/> bf16 values of <c>out [b, s_q, h_q, 512]</c> and
/// <see cref="LseLength"/> floats of <c>lse [b, h_q, s_q]</c> from the start of each; nothing here holds a buffer.
/// </summary>
public readonly record struct DecodeResult(ulong RequestId, int OutLength, int LseLength, Contracts.V1.DecodeTimings Timings);

/// <summary>The sizes a step's outputs must have, checked against the caller's memory before the send and against the response after.</summary>
internal readonly record struct DecodeOutputLengths(int Out, int Lse)
{
    /// <summary>
    /// The lengths of <paramref name="input"/>'s outputs; an <see cref="ArgumentException"/> (nothing sent) when the caller's
    /// memory cannot hold them.
    /// </summary>
    public static DecodeOutputLengths For(DecodeInput input, int outCapacity, int lseCapacity)
    {
        long rows = (long)input.SequenceIds.Count * input.QueryTokens * input.Heads;
        if (input.QueryTokens < 1 || input.Heads < 1 || rows < 1 || rows * 512 > Array.MaxLength)
            throw new ArgumentException($"a step of {input.SequenceIds.Count} sequences x {input.QueryTokens} tokens x {input.Heads} heads has no output a buffer can hold", nameof(input));
        var lengths = new DecodeOutputLengths(checked((int)(rows * 512)), checked((int)rows));
        if (outCapacity < lengths.Out)
            throw new ArgumentException($"out [b, s_q, h_q, 512] of this step is {lengths.Out} bf16 values; the memory given holds {outCapacity}", "output");
        if (lseCapacity < lengths.Lse)
            throw new ArgumentException($"lse [b, h_q, s_q] of this step is {lengths.Lse} floats; the memory given holds {lseCapacity}", "lse");
        return lengths;
    }

    /// <summary>
    /// Copies <paramref name="response"/>'s tensors into the caller's memory (the one copy after the socket); a response
    /// whose tensors are not exactly this step's sizes and dtypes fails with INTERNAL and writes nothing.
    /// </summary>
    public DecodeResult CopyOut(DecodeResponse response, Span<ushort> output, Span<float> lse)
    {
        Check(response.Out, DType.Bf16, Out * sizeof(ushort), "out", "[b, s_q, h_q, 512] bf16");
        Check(response.Lse, DType.Fp32, Lse * sizeof(float), "lse", "[b, h_q, s_q] fp32");
        TensorBytes.AsBf16(response.Out).CopyTo(output);
        TensorBytes.AsFloat(response.Lse).CopyTo(lse);
        return new DecodeResult(response.RequestId, Out, Lse, response.Timings);
    }

    private static void Check(Tensor? tensor, DType dtype, int bytes, string name, string shape)
    {
        int got = tensor?.Data.Length ?? 0;
        if (tensor is null || tensor.Dtype != dtype || got != bytes)
            throw new RpcException(new Status(StatusCode.Internal,
                $"the server's {name} tensor is {tensor?.Dtype.ToString() ?? "missing"} of {got} bytes; {name} {shape} of this step is {bytes} bytes"));
    }
}
