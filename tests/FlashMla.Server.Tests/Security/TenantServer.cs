using System.Text.Json;
using FlashMla.Client;

namespace FlashMla.Server.Tests.Security;

/// <summary>
/// A test server with a token file of its own (in a temporary folder, read again every 0.1 s): tenants "a" and "b",
/// and "ops", an admin; clients for any token, decoding on the gRPC port or the data-plane port.
/// </summary>
internal sealed class TenantServer : IAsyncDisposable
{
    public const string TokenA = "token-of-tenant-a-0001";
    public const string TokenB = "token-of-tenant-b-0001";
    public const string TokenOps = "token-of-the-admin-0001";

    private readonly string _folder;
    private readonly List<FlashMlaClient> _clients = [];

    private TenantServer(string folder, TestServer server)
    {
        _folder = folder;
        Server = server;
    }

    public TestServer Server { get; }
    public string TokenFilePath => Path.Combine(_folder, "tokens.json");

    public static object Tenant(string name, string[] tokens, bool admin = false, int? maxBlocks = null, int? maxSequences = null,
        int? maxRequestsInFlight = null) =>
        new { name, tokens, admin, maxBlocks, maxSequences, maxRequestsInFlight };

    public static object[] DefaultTenants => [Tenant("a", [TokenA]), Tenant("b", [TokenB]), Tenant("ops", [TokenOps], admin: true)];

    public static async Task<TenantServer> StartAsync(object[]? tenants = null, params (string Name, object Value)[] options)
    {
        var folder = Directory.CreateTempSubdirectory("flashmla-tokens-").FullName;
        WriteTokenFile(Path.Combine(folder, "tokens.json"), tenants ?? DefaultTenants);
        var server = await TestServer.StartAsync([("TokenFile", Path.Combine(folder, "tokens.json")), ("TokenReloadSeconds", 0.1), .. options]);
        return new TenantServer(folder, server);
    }

    public static void WriteTokenFile(string path, object[] tenants)
    {
        // Written beside, then moved over: a reader sees the old file or the new one, never half of one.
        string next = path + ".next";
        File.WriteAllText(next, JsonSerializer.Serialize(new { tenants }, new JsonSerializerOptions { DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull }));
        File.Move(next, path, overwrite: true);
    }

    public void Rewrite(params object[] tenants) => WriteTokenFile(TokenFilePath, tenants);

    /// <summary>A client that sends <paramref name="token"/> (none when null); decode on the data-plane port when asked.</summary>
    public FlashMlaClient Client(string? token, bool dataPlane = false, DataPlanePortTests.ClientPath path = DataPlanePortTests.ClientPath.Direct)
    {
        var client = new FlashMlaClient(Server.GrpcAddress, new FlashMlaClientOptions
        {
            BearerToken = token,
            DecodeAddress = dataPlane ? Server.DataPlaneAddress : null,
            Transport = path == DataPlanePortTests.ClientPath.GrpcSockets ? ClientTransport.SocketsHttpHandler : ClientTransport.LargeFrames,
            DirectDecode = path == DataPlanePortTests.ClientPath.Direct,
        });
        _clients.Add(client);
        return client;
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var client in _clients) client.Dispose();
        await Server.DisposeAsync();
        Directory.Delete(_folder, recursive: true);
    }
}
