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
internal sealed class DirectDecodeInvoker(HttpMessageInvoker http, Uri address, ArrayPool<byte> pool, int maxMessageBytes, bool retryNotProcessed = true)
    : CallInvoker, IDisposable
{
    /// <summary>Times a unary call goes again after the server refused it unprocessed (each time on a new or another stream).</summary>
    public const int MaxRetries = 3;

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
        // A retry replaces the call; the status, trailers and disposal are the latest one's.
        var current = new CurrentCall(Start<TRequest, TResponse>(method, options));
        var response = UnaryAsync<TResponse>(current, () => Start<TRequest, TResponse>(method, options), (Leased<DecodeRequest>)(object)request!,
            options.CancellationToken);
        return new AsyncUnaryCall<TResponse>(response, HeadersAfterAsync(response, current), () => current.Value.GetStatus(),
            () => current.Value.GetTrailers(), () => current.Value.Dispose());
    }

    private static async Task<Metadata> HeadersAfterAsync(Task response, CurrentCall current)
    {
        try
        {
            await response.ConfigureAwait(false);
        }
        catch (RpcException)
        {
            // The call's own failure is the response task's; headers come from whichever call got them.
        }
        return await current.Value.ResponseHeadersAsync().ConfigureAwait(false);
    }

    /// <summary>
    /// The unary call; a call the server refused unprocessed (its GOAWAY, or REFUSED_STREAM) goes again as a new call,
    /// which is safe because the server saw none of it. The request is kept (the caller's memory is untouched while
    /// the call runs) until the call ends.
    /// </summary>
    private async Task<TResponse> UnaryAsync<TResponse>(CurrentCall current, Func<DirectDecodeCall> restart, Leased<DecodeRequest> request,
        CancellationToken cancellationToken)
    {
        try
        {
            for (int retries = 0; ; retries++)
            {
                var call = current.Value;
                try
                {
                    return await UnaryOnceAsync<TResponse>(call, request, cancellationToken).ConfigureAwait(false);
                }
                catch (RpcException ex) when (retryNotProcessed && retries < MaxRetries && call.WasNotProcessed(ex))
                {
                    current.Value = restart();
                    call.Dispose();
                }
            }
        }
        finally
        {
            request.Dispose();
        }
    }

    private static async Task<TResponse> UnaryOnceAsync<TResponse>(DirectDecodeCall call, Leased<DecodeRequest> request, CancellationToken cancellationToken)
    {
        await call.WriteAsync(request, cancellationToken, disposeMessage: false).ConfigureAwait(false);
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

    /// <summary>The call a unary call is on now (a retry replaces it).</summary>
    private sealed class CurrentCall(DirectDecodeCall call)
    {
        public DirectDecodeCall Value { get; set; } = call;
    }
}
