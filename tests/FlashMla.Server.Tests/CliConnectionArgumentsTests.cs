using System.CommandLine;
using FlashMla.Cli;

namespace FlashMla.Server.Tests;

/// <summary>
/// The CLI's connection options (ConnectionArguments), declared once on the root: what each becomes in the client's
/// options, and a clear refusal (exit code 2, before any connection) for options it cannot use.
/// </summary>
public sealed class CliConnectionArgumentsTests : IDisposable
{
    private readonly string _folder = Directory.CreateTempSubdirectory("flashmla-cli-").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private string WriteFile(string name, string text)
    {
        string path = Path.Combine(_folder, name);
        File.WriteAllText(path, text);
        return path;
    }

    /// <summary>The options as a subcommand of the CLI's shape sees them, and what the arguments read as.</summary>
    private static ServerConnection Read(params string[] args)
    {
        var root = new RootCommand();
        var connection = new ConnectionArguments().AddTo(root);
        root.Add(new Command("probe"));
        var parse = root.Parse(["probe", .. args]);
        Assert.Empty(parse.Errors);
        return connection.Read(parse);
    }

    private static string Refusal(params string[] args) => Assert.Throws<ConnectionArgumentException>(() => Read(args)).Message;

    [Fact]
    public void The_address_decode_address_token_and_TLS_files_become_the_clients_options()
    {
        var tls = new TlsFiles(_folder);
        var server = Read("--address", "https://127.0.0.1:7001", "--decode-address", "https://127.0.0.1:7002", "--token", "token-of-tenant-a-0001",
            "--ca", tls.Ca, "--server-name", "flashmla.example", "--client-cert", tls.ClientCertificate, "--client-key", tls.ClientKey);
        var options = server.ClientOptions();
        Assert.Equal("https://127.0.0.1:7001", server.Address);
        Assert.Equal(("https://127.0.0.1:7002", "token-of-tenant-a-0001"), (options.DecodeAddress, options.BearerToken));
        Assert.Equal((tls.Ca, "flashmla.example", tls.ClientCertificate, tls.ClientKey),
            (options.Tls!.CaFile, options.Tls.ServerName, options.Tls.ClientCertificateFile, options.Tls.ClientKeyFile));
        var cache = server.CacheClientOptions();
        Assert.Null(cache.DecodeAddress); // admin calls on --address
        Assert.Equal((options.BearerToken, options.Tls), (cache.BearerToken, cache.Tls));

        var plain = Read("--address", "http://127.0.0.1:7001");
        Assert.Null(plain.Tls);
        Assert.Null(plain.DecodeAddress);
        Assert.Equal(Environment.GetEnvironmentVariable(ConnectionArguments.TokenEnvironmentVariable) is { Length: > 0 } e ? e : null, plain.BearerToken);
    }

    [Fact]
    public void A_token_file_gives_the_token_without_its_line_break()
    {
        string path = WriteFile("token", "token-of-tenant-a-0001\n");
        Assert.Equal("token-of-tenant-a-0001", Read("--token-file", path).BearerToken);
        Assert.Equal("token-of-tenant-a-0001", Read("--token-file", WriteFile("crlf", "  token-of-tenant-a-0001\r\n")).BearerToken);
    }

    [Fact]
    public void Token_options_that_cannot_be_used_are_refused_with_the_option_named()
    {
        string good = WriteFile("token", "token-of-tenant-a-0001");
        Assert.Contains("--token and --token-file both give the bearer token", Refusal("--token", "x-token-given-too", "--token-file", good));
        string missing = Path.Combine(_folder, "no-such-token");
        Assert.Contains($"--token-file '{missing}' cannot be read", Refusal("--token-file", missing));
        Assert.Contains("cannot be read", Refusal("--token-file", _folder)); // a folder
        Assert.Contains("is empty", Refusal("--token-file", WriteFile("empty", " \n")));
        Assert.Contains("must hold the token alone", Refusal("--token-file", WriteFile("two", "first-token-000001\nsecond-token-00002\n")));
    }

    [Fact]
    public void TLS_and_address_options_that_cannot_be_used_are_refused_with_the_option_named()
    {
        var tls = new TlsFiles(_folder);
        string missing = Path.Combine(_folder, "no-such-ca.crt");
        Assert.Contains($"--ca '{missing}' does not exist", Refusal("--ca", missing));
        Assert.Contains("cannot be loaded", Refusal("--ca", WriteFile("not-pem.crt", "not a certificate")));
        Assert.Contains("--client-cert and --client-key go together", Refusal("--client-cert", tls.ClientCertificate));
        Assert.Contains("--client-cert and --client-key go together", Refusal("--client-key", tls.ClientKey));
        Assert.Contains("--client-key '", Refusal("--client-cert", tls.ClientCertificate, "--client-key", Path.Combine(_folder, "none.key")));
        Assert.Contains("cannot be loaded", Refusal("--client-cert", tls.ClientCertificate, "--client-key", tls.ServerKey)); // another certificate's key
        Assert.Contains("--address 'localhost:50051' is not an http:// or https:// URI", Refusal("--address", "localhost:50051"));
        Assert.Contains("is not an http:// or https:// URI", Refusal("--address", "ftp://example.com"));
    }

    [Fact]
    public async Task A_command_given_unusable_options_exits_with_2_before_it_connects()
    {
        var root = new RootCommand();
        var connection = new ConnectionArguments().AddTo(root);
        bool ran = false;
        var command = new Command("probe");
        command.SetAction((parse, _) => connection.RunAsync(parse, _ =>
        {
            ran = true;
            return Task.FromResult(0);
        }));
        root.Add(command);
        Assert.Equal(ConnectionArguments.UsageError, await root.Parse(["probe", "--token-file", Path.Combine(_folder, "missing")]).InvokeAsync());
        Assert.False(ran);
        Assert.Equal(0, await root.Parse(["probe", "--token", "token-of-tenant-a-0001"]).InvokeAsync());
        Assert.True(ran);

        // The CLI itself: verify with a token file that is not there ends with 2, whatever server --address names.
        var main = typeof(VerifyRun).Assembly.EntryPoint!;
        var result = main.Invoke(null, [new[] { "verify", "--address", "http://127.0.0.1:1", "--token-file", Path.Combine(_folder, "missing") }]);
        Assert.Equal(ConnectionArguments.UsageError, result is Task<int> task ? await task : (int)result!);
    }

    /// <summary>A development CA's files: its certificate, a client certificate and key, and the server's key (a key of another certificate).</summary>
    private sealed class TlsFiles(string folder)
    {
        private readonly DevCertificateFiles _files = DevCertificates.WriteSet(Path.Combine(folder, "tls"), ["localhost"], []);

        public string Ca => _files.Ca;
        public string ClientCertificate => _files.ClientCertificate;
        public string ClientKey => _files.ClientKey;
        public string ServerKey => _files.Key;
    }
}
