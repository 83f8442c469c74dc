using FlashMla.Core.Backends;

namespace FlashMla.Server.Hosting;

/// <summary>Owns the backend picked at start-up and why it was picked (for the log and the config RPC).</summary>
public sealed class BackendHolder(IAttentionBackend backend, string reason) : IDisposable
{
    public IAttentionBackend Backend { get; } = backend;
    public string Reason { get; } = reason;
    public void Dispose() => Backend.Dispose();
}
