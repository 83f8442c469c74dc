using System.Buffers;
using FlashMla.Contracts.V1;
using FlashMla.Contracts.Wire;
using Grpc.Core;

namespace FlashMla.Client.Direct;

/// <summary>
/// A <see cref="CallInvoker"/> for the two methods of flashmla.v1.Decoder over the pooled marshallers'
/// message types (<see cref="DecodeMarshallers"/>), each call a <see cref="DirectDecodeCall"/> on this
/// invoker's own HTTP/2 connection. Anything else is refused: cache calls go through Grpc.Net.Client.
/// </summary>
internal sealed class DirectDecodeInvoker(HttpMessageInvoker http, Uri address, ArrayPool<byte> pool, int maxMessageBytes) : CallInvoker, IDisposable
{
    public override AsyncDuplexStreamingCall<TRequest, TResponse> AsyncDuplexStreamingCall<TRequest, TResponse>(
        Method<TRequest, TResponse> method, string? host, CallOptions options)
    {
        var call = Start<TRequest, TResponse>(method, options);
        return new AsyncDuplexStreamingCall<TRequest, TResponse>((IClientStreamWriter<TRequest>)(object)call,
            (IAsyncStreamReader<TResponse>)(object)call, call.ResponseHeadersAsync(), call.GetStatus, call.GetTrailers, call.Dispose);
    }

    public override AsyncUnaryCall<TResponse> AsyncUnaryCall<TRequest, TResponse>(Method<TRequest, TResponse> method, string? host,
        CallOptions options, TRequest request)
    {
        var call = Start<TRequest, TResponse>(method, options);
        return new AsyncUnaryCall<TResponse>(UnaryAsync<TResponse>(call, (Leased<DecodeRequest>)(object)request!, options.CancellationToken),
            call.ResponseHeadersAsync(), call.GetStatus, call.GetTrailers, call.Dispose);
    }

    private static async Task<TResponse> UnaryAsync<TResponse>(DirectDecodeCall call, Leased<DecodeRequest> request, CancellationToken cancellationToken)
    {
        await call.WriteAsync(request, cancellationToken).ConfigureAwait(false);
        await call.CompleteAsync().ConfigureAwait(false);
        if (!await call.MoveNext(cancellationToken).ConfigureAwait(false))
            throw new RpcException(new Status(StatusCode.Internal, "the unary call ended without a response message"));
        var response = call.Current;
        try
        {
            if (await call.MoveNext(cancellationToken).ConfigureAwait(false))
            {
                call.Current.Dispose();
                throw new RpcException(new Status(StatusCode.Internal, "the unary call returned more than one response message"));
            }
        }
        catch
        {
            response.Dispose();
            throw;
        }
        return (TResponse)(object)response;
    }

    private DirectDecodeCall Start<TRequest, TResponse>(Method<TRequest, TResponse> method, CallOptions options)
    {
        if (typeof(TRequest) != typeof(Leased<DecodeRequest>) || typeof(TResponse) != typeof(Leased<DecodeResponse>) ||
            method.ServiceName != DecodeMarshallers.ServiceName)
            throw new NotSupportedException($"the direct decode invoker carries {DecodeMarshallers.ServiceName} over pooled messages only, not {method.FullName}");
        return new DirectDecodeCall(http, address, method.FullName, pool, maxMessageBytes, options);
    }

    public override TResponse BlockingUnaryCall<TRequest, TResponse>(Method<TRequest, TResponse> method, string? host, CallOptions options,
        TRequest request) => AsyncUnaryCall(method, host, options, request).GetAwaiter().GetResult();

    public override AsyncServerStreamingCall<TResponse> AsyncServerStreamingCall<TRequest, TResponse>(Method<TRequest, TResponse> method,
        string? host, CallOptions options, TRequest request) => throw new NotSupportedException("flashmla.v1.Decoder has no server-streaming method");

    public override AsyncClientStreamingCall<TRequest, TResponse> AsyncClientStreamingCall<TRequest, TResponse>(Method<TRequest, TResponse> method,
        string? host, CallOptions options) => throw new NotSupportedException("flashmla.v1.Decoder has no client-streaming method");

    public void Dispose() => http.Dispose();
}
