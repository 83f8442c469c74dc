using System.Buffers;
using FlashMla.Http2;
using Grpc.Core;

namespace FlashMla.Server.DataPlane;

/// <summary>
/// One HTTP/2 stream of the data-plane listener: one gRPC call to flashmla.v1.Decoder, as three parts the
/// service sees separately (as grpc-dotnet has them): the request stream (<see cref="DataPlaneRequestReader"/>),
/// the response stream (<see cref="DataPlaneResponseWriter"/>) and the call's context
/// (<see cref="DataPlaneCallContext"/>). To <see cref="Services.DecoderService"/> it is an ordinary call, so the
/// same code serves both ports. This type routes what the engine delivers on the stream to those parts.
/// </summary>
internal sealed class DataPlaneCall : Http2Stream
{
    private readonly ILogger _log;
    private readonly DataPlaneConnection _connection;

    public DataPlaneCall(DataPlaneConnection connection, int streamId, GrpcRequestHead head, Security.Caller caller, int maxMessageBytes,
        ArrayPool<byte> pool, CancellationToken connectionClosing, ILogger log)
        : base(connection, DataPlaneConnection.StreamWindow, DataPlaneRequestReader.CreditBatchBytes)
    {
        Id = streamId;
        _log = log;
        _connection = connection;
        Context = new DataPlaneCallContext(head, connection.Peer, connectionClosing);
        Context.UserState[Security.Caller.Key] = caller; // where the services find it, as on Kestrel's port
        var token = Context.CancellationToken;
        Requests = new DataPlaneRequestReader(this, pool, maxMessageBytes, head.Encoding, token);
        Responses = new DataPlaneResponseWriter(connection, this, token);
        Context.Responses = Responses;
    }

    public string Method => Context.Method;
    public DataPlaneCallContext Context { get; }
    public DataPlaneRequestReader Requests { get; }
    public DataPlaneResponseWriter Responses { get; }

    protected internal override ValueTask OnDataAsync(Http2FrameReader reader, int length) => Requests.ReceiveAsync(reader, length);

    protected internal override void OnHeaders(List<KeyValuePair<string, string>> fields, bool endStream)
    {
        // The client's trailers: nothing in them concerns the call, but they must end the stream.
        if (!endStream) throw new Http2StreamException(Http2ErrorCode.ProtocolError, "a second HEADERS without END_STREAM (trailers must end the stream)");
    }

    protected internal override void OnEndStream() => Requests.EndInput();

    protected internal override void OnReset(Http2ErrorCode code, string? localReason)
    {
        if (localReason is not null)
            _log.LogWarning("Data-plane stream {StreamId} from {Peer} reset with {Code}: {Reason}", Id, Context.Peer, code, localReason);
        Cancel();
        // The stream is still here, so its call was not answered yet (an answered one is removed right after its trailers).
        if (localReason is null) _connection.SpendResetBudget();
    }

    /// <summary>The stream broke or the connection is going: the call stops. Any thread.</summary>
    public void Cancel()
    {
        Context.Cancel();
        Requests.Fail(new RpcException(new Status(StatusCode.Cancelled, "the call was cancelled")));
    }

    /// <summary>The call is over and the connection forgot the stream: what it still holds goes back to the pool.</summary>
    public void Close()
    {
        Requests.Close();
        Context.Dispose();
    }
}
