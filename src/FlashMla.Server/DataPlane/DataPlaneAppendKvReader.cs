using FlashMla.Contracts.V1;
using FlashMla.Contracts.Wire;
using Grpc.Core;

namespace FlashMla.Server.DataPlane;

/// <summary>
/// An AppendKv call's request stream on the data plane: each chunk parsed in place in the pooled, page-locked array
/// it was received into (<see cref="DataPlaneRequestReader"/>), so its rows go from there to the device without
/// another copy; the lease returns the array.
/// </summary>
internal sealed class DataPlaneAppendKvReader(DataPlaneRequestReader messages) : IAsyncStreamReader<Leased<AppendKvChunk>>
{
    private Leased<AppendKvChunk>? _current;

    public Leased<AppendKvChunk> Current => _current ?? throw new InvalidOperationException("no current chunk");

    public async Task<bool> MoveNext(CancellationToken cancellationToken)
    {
        _current = await messages.ReadAsync(KvIngestMarshallers.ParseChunkInPlace, cancellationToken).ConfigureAwait(false);
        return _current is not null;
    }
}
