using FlashMla.Core.Memory;
using FlashMla.Server.Services;
using Google.Protobuf;
using Grpc.Core;

namespace FlashMla.Server.Hosting;

/// <summary>
/// A method definition whose request marshaller refuses a message that is not valid protobuf with INTERNAL, counted
/// (<see cref="RequestFailures.RecordUnparsable"/>). Without it grpc-dotnet sees the parser's exception as the handler's
/// own failure: UNKNOWN "Exception was thrown by handler", an error log with a stack trace, and no count, since a unary
/// request is parsed before any of the service's code runs.
/// </summary>
internal static class UnparsableRequestGuard
{
    public static Method<TRequest, TResponse> Guard<TRequest, TResponse>(Method<TRequest, TResponse> method, RequestFailures failures)
        where TRequest : class where TResponse : class
    {
        var parse = method.RequestMarshaller.ContextualDeserializer;
        string fullName = method.FullName;
        var requests = Marshallers.Create(method.RequestMarshaller.ContextualSerializer, context =>
        {
            try
            {
                return parse(context);
            }
            catch (InvalidProtocolBufferException ex)
            {
                throw failures.RecordUnparsable(fullName, ex);
            }
            catch (TensorBudgetExceededException ex)
            {
                throw failures.Record(fullName, ex); // RESOURCE_EXHAUSTED: the server holds its budget of tensor bytes
            }
        });
        return new Method<TRequest, TResponse>(method.Type, method.ServiceName, method.Name, requests, method.ResponseMarshaller);
    }
}
