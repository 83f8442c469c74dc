using Grpc.Core;
using Grpc.Net.Client;
using Serilog.Events;

namespace FlashMla.Server.Tests;

/// <summary>
/// A request body that is not valid protobuf, on every kind of call and both ports: INTERNAL with a short message (as
/// gRPC specifies for a message that cannot be parsed), counted in flashmla_requests_failed_total, no stack trace in the log.
/// </summary>
[Collection(DataPlaneCollection.Name)] // reads flashmla_requests_failed_total, which every test server in the process adds to
public sealed class UnparsableMessageTests
{
    // Field 1, length-delimited, claims 5 bytes and carries 1: no message of the contract parses it.
    private static readonly byte[] NotProtobuf = [0x0A, 0x05, 0x01];
    private static readonly Marshaller<byte[]> Raw = Marshallers.Create(bytes => bytes, bytes => bytes);

    public static TheoryData<bool, MethodType, string> Calls => new()
    {
        { false, MethodType.Unary, "/flashmla.v1.KvCache/CreateSequence" },
        { false, MethodType.Unary, "/flashmla.v1.KvCache/FreeSequence" },
        { false, MethodType.ServerStreaming, "/flashmla.v1.KvCache/ReadKv" },
        { false, MethodType.ClientStreaming, "/flashmla.v1.KvCache/AppendKv" },
        { false, MethodType.Unary, "/flashmla.v1.Decoder/DecodeOnce" },
        { false, MethodType.DuplexStreaming, "/flashmla.v1.Decoder/Decode" },
        { true, MethodType.Unary, "/flashmla.v1.Decoder/DecodeOnce" },
        { true, MethodType.DuplexStreaming, "/flashmla.v1.Decoder/Decode" },
    };

    [Theory]
    [MemberData(nameof(Calls))]
    public async Task A_request_that_is_not_protobuf_is_internal_counted_and_logged_without_a_stack_trace(bool dataPlane, MethodType type, string path)
    {
        var log = new LogCapture();
        await using var server = await TestServer.StartAsync(log.ServerOptions);
        ulong id = await server.Client.CreateSequenceAsync();
        using var channel = GrpcChannel.ForAddress(dataPlane ? server.DataPlaneAddress! : server.GrpcAddress);

        var error = await Assert.ThrowsAsync<RpcException>(() => CallAsync(channel.CreateCallInvoker(), type, path));

        Assert.Equal(StatusCode.Internal, error.StatusCode);
        Assert.StartsWith("the request message is not valid protobuf", error.Status.Detail);
        Assert.True(error.Status.Detail.Length < 300, error.Status.Detail);
        var scrape = await PrometheusScrape.TakeAsync(server);
        Assert.Equal(1, scrape.Sum("flashmla_requests_failed_total", ("code", "Internal"), ("method", path)));
        Assert.Empty(log.Events.Where(e => e.Level >= LogEventLevel.Error || e.Exception is not null).Select(e => e.RenderMessage()));
        Assert.Equal([0u, 0u], (await server.Client.GetSequenceAsync(id)).LayerLengths); // nothing changed, and the server still serves
    }

    private static async Task CallAsync(CallInvoker invoker, MethodType type, string path)
    {
        string[] parts = path.Split('/');
        var method = new Method<byte[], byte[]>(type, parts[1], parts[2], Raw, Raw);
        var options = new CallOptions(deadline: DateTime.UtcNow.AddSeconds(20));
        switch (type)
        {
            case MethodType.Unary:
                await invoker.AsyncUnaryCall(method, null, options, NotProtobuf);
                break;
            case MethodType.ServerStreaming:
            {
                using var call = invoker.AsyncServerStreamingCall(method, null, options, NotProtobuf);
                while (await call.ResponseStream.MoveNext(CancellationToken.None)) { }
                break;
            }
            case MethodType.ClientStreaming:
            {
                using var call = invoker.AsyncClientStreamingCall(method, null, options);
                await WriteIgnoringEnd(call.RequestStream);
                await call.ResponseAsync;
                break;
            }
            default:
            {
                using var call = invoker.AsyncDuplexStreamingCall(method, null, options);
                await WriteIgnoringEnd(call.RequestStream);
                while (await call.ResponseStream.MoveNext(CancellationToken.None)) { }
                break;
            }
        }
    }

    /// <summary>Sends the bad message and ends the stream; the server may answer first, and its status is what the read reports.</summary>
    private static async Task WriteIgnoringEnd(IClientStreamWriter<byte[]> requests)
    {
        try
        {
            await requests.WriteAsync(NotProtobuf);
            await requests.CompleteAsync();
        }
        catch (Exception)
        {
            // The call ended already: the response side says how.
        }
    }
}
