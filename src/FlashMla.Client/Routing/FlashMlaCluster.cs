using System.Net;
using System.Net.Sockets;

namespace FlashMla.Client.Routing;

/// <summary>A sequence together with the replica that holds its cache (ids are per replica).</summary>
public readonly record struct RoutedSequence(string Key, string Replica, ulong Id);

/// <summary>
/// Several FlashMLA replicas behind one client (for example the pod addresses of a Kubernetes headless
/// Service). A sequence is placed by consistent hashing of a key the caller chooses (a conversation or
/// request id), and every later call for it (appends, forks, decode) goes to that replica. A decode over
/// sequences of several replicas is split into one request per replica, sent concurrently, and the outputs
/// are put back in the caller's order.
/// </summary>
public sealed class FlashMlaCluster : IDisposable
{
    private readonly Dictionary<string, FlashMlaClient> _clients;

    /// <param name="replicaAddresses">Each replica's gRPC address.</param>
    /// <param name="decodePort">The replicas' data-plane port (their DataPlanePort, 50052 by default): decode calls go to each
    /// replica's own host at that port. Null: decode on the gRPC addresses.</param>
    public FlashMlaCluster(IEnumerable<string> replicaAddresses, FlashMlaClientOptions? options = null, int? decodePort = null)
    {
        if (options?.DecodeAddress is not null)
            throw new ArgumentException("a cluster's replicas each have their own data-plane address: pass decodePort, not DecodeAddress", nameof(options));
        if (decodePort is < 1 or > 65535) throw new ArgumentOutOfRangeException(nameof(decodePort), decodePort, "must be 1..65535");
        Ring = new ReplicaRing(replicaAddresses);
        options ??= new FlashMlaClientOptions();
        _clients = Ring.Replicas.ToDictionary(a => a, a => new FlashMlaClient(a, options with { DecodeAddress = DataPlaneAddress(a, decodePort) }),
            StringComparer.Ordinal);
    }

    /// <summary>The data-plane address of the replica at <paramref name="address"/>: its host at <paramref name="decodePort"/> (null: none).</summary>
    public static string? DataPlaneAddress(string address, int? decodePort) =>
        decodePort is { } port ? new UriBuilder(address) { Port = port }.Uri.ToString().TrimEnd('/') : null;

    /// <summary>
    /// Resolves <paramref name="host"/> (a headless Service name resolves to every ready pod) into replica addresses.
    /// With <see cref="FlashMlaClientOptions.Tls"/> set they are https:// addresses by IP, and the certificate must name
    /// <paramref name="host"/> unless the options name another server name.
    /// </summary>
    public static async Task<FlashMlaCluster> FromDnsAsync(string host, int port, FlashMlaClientOptions? options = null,
        int? decodePort = null, CancellationToken cancellationToken = default)
    {
        var addresses = await Dns.GetHostAddressesAsync(host, cancellationToken);
        string scheme = options?.Tls is null ? "http" : "https";
        if (options?.Tls is { ServerName: null } tls) options = options with { Tls = tls with { ServerName = host } };
        var replicas = addresses
            .Where(a => a.AddressFamily is AddressFamily.InterNetwork or AddressFamily.InterNetworkV6)
            .Select(a => a.AddressFamily == AddressFamily.InterNetworkV6 ? $"{scheme}://[{a}]:{port}" : $"{scheme}://{a}:{port}")
            .ToArray();
        if (replicas.Length == 0) throw new InvalidOperationException($"{host} resolved to no address");
        return new FlashMlaCluster(replicas, options, decodePort);
    }

    public ReplicaRing Ring { get; }

    /// <summary>The client of one replica.</summary>
    public FlashMlaClient ClientFor(string replica) => _clients[replica];

    public async Task<RoutedSequence> CreateSequenceAsync(string key, CancellationToken cancellationToken = default)
    {
        string replica = Ring.ReplicaFor(key);
        return new RoutedSequence(key, replica, await _clients[replica].CreateSequenceAsync(cancellationToken));
    }

    public Task AppendKvAsync(RoutedSequence sequence, int layer, ReadOnlyMemory<ushort> rows, CancellationToken cancellationToken = default) =>
        _clients[sequence.Replica].AppendKvAsync(sequence.Id, layer, rows, cancellationToken: cancellationToken);

    /// <summary>Forks on the parent's replica: the child shares its pages, so it must live there too.</summary>
    public async Task<RoutedSequence> ForkAsync(RoutedSequence parent, string childKey, CancellationToken cancellationToken = default)
    {
        var fork = await _clients[parent.Replica].ForkAsync(parent.Id, cancellationToken);
        return new RoutedSequence(childKey, parent.Replica, fork.SequenceId);
    }

    public Task<uint> TruncateAsync(RoutedSequence sequence, int length, CancellationToken cancellationToken = default) =>
        _clients[sequence.Replica].TruncateAsync(sequence.Id, length, cancellationToken);

    public Task<uint> FreeAsync(RoutedSequence sequence, CancellationToken cancellationToken = default) =>
        _clients[sequence.Replica].FreeAsync(sequence.Id, cancellationToken);

    public Task<ushort[]> ReadKvAsync(RoutedSequence sequence, int layer, CancellationToken cancellationToken = default) =>
        _clients[sequence.Replica].ReadKvAsync(sequence.Id, layer, cancellationToken: cancellationToken);

    /// <summary>
    /// One decode step over sequences of any replicas: q bf16 <c>[b, s_q, h_q, 576]</c>, newKv bf16
    /// <c>[b, s_q, 576]</c> or empty; returns out bf16 <c>[b, s_q, h_q, 512]</c> and lse fp32 <c>[b, h_q, s_q]</c>
    /// in the order of <paramref name="sequences"/>.
    /// </summary>
    public async Task<(ushort[] Out, float[] Lse)> DecodeAsync(int layer, IReadOnlyList<RoutedSequence> sequences, int queryTokens, int heads,
        ReadOnlyMemory<ushort> q, ReadOnlyMemory<ushort> newKv = default, float softmaxScale = 0, CancellationToken cancellationToken = default)
    {
        int qPer = queryTokens * heads * 576, kvPer = queryTokens * 576, outPer = queryTokens * heads * 512, lsePer = queryTokens * heads;
        if (q.Length != sequences.Count * qPer) throw new ArgumentException($"q must hold {sequences.Count * qPer} values", nameof(q));
        if (!newKv.IsEmpty && newKv.Length != sequences.Count * kvPer) throw new ArgumentException($"newKv must hold {sequences.Count * kvPer} values", nameof(newKv));
        var output = new ushort[sequences.Count * outPer];
        var lse = new float[sequences.Count * lsePer];
        var parts = Enumerable.Range(0, sequences.Count).GroupBy(i => sequences[i].Replica);
        await Task.WhenAll(parts.Select(async part =>
        {
            int[] positions = [.. part];
            var partQ = new ushort[positions.Length * qPer];
            var partKv = newKv.IsEmpty ? [] : new ushort[positions.Length * kvPer];
            for (int j = 0; j < positions.Length; j++)
            {
                q.Span.Slice(positions[j] * qPer, qPer).CopyTo(partQ.AsSpan(j * qPer));
                if (!newKv.IsEmpty) newKv.Span.Slice(positions[j] * kvPer, kvPer).CopyTo(partKv.AsSpan(j * kvPer));
            }
            var ids = positions.Select(p => sequences[p].Id).ToArray();
            using var result = await _clients[part.Key].DecodeOnceAsync(new DecodeInput(layer, ids, queryTokens, heads, partQ, partKv, softmaxScale), cancellationToken);
            for (int j = 0; j < positions.Length; j++)
            {
                result.Out.Slice(j * outPer, outPer).CopyTo(output.AsSpan(positions[j] * outPer));
                result.Lse.Slice(j * lsePer, lsePer).CopyTo(lse.AsSpan(positions[j] * lsePer));
            }
        }));
        return (output, lse);
    }

    public void Dispose()
    {
        foreach (var client in _clients.Values) client.Dispose();
    }
}
