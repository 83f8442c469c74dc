using FlashMla.Cli;
using static FlashMla.Server.Tests.Security.TenantServer;

namespace FlashMla.Server.Tests.Security;

/// <summary>The CLI's --token (or --token-file) reaches both ports: verify passes with the tenant's token and fails without one.</summary>
[Collection(DataPlaneCollection.Name)]
public sealed class CliTokenTests
{
    private static async Task<int> Cli(params string[] args)
    {
        var main = typeof(VerifyRun).Assembly.EntryPoint!;
        var result = main.Invoke(null, [args]);
        return result is Task<int> task ? await task : (int)result!;
    }

    [Fact]
    public async Task Verify_with_a_token_runs_on_both_ports_and_without_one_fails()
    {
        await using var server = await TenantServer.StartAsync();
        string[] verify = ["verify", "--address", server.Server.GrpcAddress, "--decode-address", server.Server.DataPlaneAddress!, "--cases", "2", "--max-length", "80"];
        Assert.Equal(0, await Cli([.. verify, "--token", TokenA]));
        Assert.NotEqual(0, await Cli(verify));
        string tokenFile = Path.Combine(Path.GetTempPath(), $"flashmla-token-{Guid.NewGuid():N}");
        await File.WriteAllTextAsync(tokenFile, TokenA + "\n"); // as a mounted Secret's file may end
        try
        {
            Assert.Equal(0, await Cli([.. verify, "--token-file", tokenFile]));
        }
        finally
        {
            File.Delete(tokenFile);
        }
        var admin = await server.Client(TokenOps).GetStatsAsync();
        Assert.True(admin.DecodeRequests >= 4, $"the verify run decoded {admin.DecodeRequests} requests"); // its cases ran, as tenant a
    }
}
