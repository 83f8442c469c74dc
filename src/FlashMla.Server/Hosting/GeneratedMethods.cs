using Grpc.Core;

namespace FlashMla.Server.Hosting;

/// <summary>
/// The method definitions of a generated service (names, types, marshallers), taken from its generated
/// <c>BindService(ServiceBinderBase, ...)</c>, so a binding of our own keeps exactly the contract's.
/// </summary>
internal sealed class GeneratedMethods : ServiceBinderBase
{
    private readonly Dictionary<string, object> _methods = [];

    /// <param name="bind">The generated BindService, called with no implementation (it then binds no handlers).</param>
    public static GeneratedMethods Of(Action<ServiceBinderBase> bind)
    {
        var methods = new GeneratedMethods();
        bind(methods);
        return methods;
    }

    public Method<TRequest, TResponse> Get<TRequest, TResponse>(string name) where TRequest : class where TResponse : class =>
        (Method<TRequest, TResponse>)_methods[name];

    public override void AddMethod<TRequest, TResponse>(Method<TRequest, TResponse> method, UnaryServerMethod<TRequest, TResponse>? handler) =>
        _methods.Add(method.Name, method);

    public override void AddMethod<TRequest, TResponse>(Method<TRequest, TResponse> method, ClientStreamingServerMethod<TRequest, TResponse>? handler) =>
        _methods.Add(method.Name, method);

    public override void AddMethod<TRequest, TResponse>(Method<TRequest, TResponse> method, ServerStreamingServerMethod<TRequest, TResponse>? handler) =>
        _methods.Add(method.Name, method);

    public override void AddMethod<TRequest, TResponse>(Method<TRequest, TResponse> method, DuplexStreamingServerMethod<TRequest, TResponse>? handler) =>
        _methods.Add(method.Name, method);
}
