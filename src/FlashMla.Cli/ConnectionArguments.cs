using System.CommandLine;
using FlashMla.Client;
using FlashMla.Client.Transport;
using Spectre.Console;

namespace FlashMla.Cli;

/// <summary>
/// How every command reaches a server, declared once on the root command (<see cref="AddTo"/>; recursive, so each
/// subcommand takes them):
/// the gRPC address, the decode address, the bearer token (given, from a file, or from FLASHMLA_TOKEN) and the TLS
/// options (an https:// address turns TLS on). <see cref="Read"/> checks them and loads the files once, before any
/// connection: a missing or unreadable file is a usage error with the option's name, not a stack trace from the
/// first call.
/// </summary>
internal sealed class ConnectionArguments
{
    /// <summary>The exit code of a command given options it cannot use.</summary>
    public const int UsageError = 2;

    public const string TokenEnvironmentVariable = "FLASHMLA_TOKEN";

    public readonly Option<string> Address = new("--address", "-a")
    {
        Description = "The server's gRPC address",
        DefaultValueFactory = _ => "http://localhost:50051",
        Recursive = true,
    };

    public readonly Option<string?> DecodeAddress = new("--decode-address")
    {
        Description = "Where decode calls go (the server's data-plane port, e.g. http://localhost:50052); default: --address. " +
            "bench-matrix takes a comma-separated list and measures each ('grpc': decode on --address)",
        Recursive = true,
    };

    public readonly Option<string?> Token = new("--token")
    {
        Description = $"Bearer token for a server with a token file (sent on both ports); default: the environment variable {TokenEnvironmentVariable}",
        DefaultValueFactory = _ => Environment.GetEnvironmentVariable(TokenEnvironmentVariable) is { Length: > 0 } fromEnvironment ? fromEnvironment : null,
        Recursive = true,
    };

    public readonly Option<string?> TokenFile = new("--token-file")
    {
        Description = "File holding the bearer token alone (a mounted Secret; a trailing line break is fine), instead of --token; " +
            $"it wins over {TokenEnvironmentVariable}",
        Recursive = true,
    };

    public readonly Option<string?> Ca = new("--ca")
        { Description = "PEM file of the CA(s) the server's certificate must chain to, for https:// addresses (default: the system's trust store)", Recursive = true };

    public readonly Option<string?> ServerName = new("--server-name")
        { Description = "The name the server's certificate must carry (and SNI), when it is not the address's host", Recursive = true };

    public readonly Option<string?> ClientCertificate = new("--client-cert")
        { Description = "PEM client certificate for servers that require one (mTLS); with --client-key", Recursive = true };

    public readonly Option<string?> ClientKey = new("--client-key")
        { Description = "Unencrypted PEM private key of --client-cert", Recursive = true };

    public IEnumerable<Option> All => [Address, DecodeAddress, Token, TokenFile, Ca, ServerName, ClientCertificate, ClientKey];

    /// <summary>Puts the options on <paramref name="root"/>, where every subcommand finds them.</summary>
    public ConnectionArguments AddTo(Command root)
    {
        foreach (var option in All) root.Add(option);
        return this;
    }

    /// <summary>
    /// Runs <paramref name="run"/> with the connection the command line names; when the options cannot be used, prints
    /// why and returns <see cref="UsageError"/> without running it.
    /// </summary>
    public Task<int> RunAsync(ParseResult parse, Func<ServerConnection, Task<int>> run)
    {
        ServerConnection server;
        try
        {
            server = Read(parse);
        }
        catch (ConnectionArgumentException ex)
        {
            AnsiConsole.MarkupLine($"[red]{Markup.Escape(ex.Message)}[/]");
            return Task.FromResult(UsageError);
        }
        return run(server);
    }

    /// <summary>The connection the command line names; <see cref="ConnectionArgumentException"/> says what is wrong with it.</summary>
    public ServerConnection Read(ParseResult parse)
    {
        string address = parse.GetValue(Address)!;
        if (!Uri.TryCreate(address, UriKind.Absolute, out var uri) || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps))
            throw new ConnectionArgumentException($"--address '{address}' is not an http:// or https:// URI");
        return new ServerConnection(address, parse.GetValue(DecodeAddress), ReadToken(parse), ReadTls(parse));
    }

    private string? ReadToken(ParseResult parse)
    {
        string? path = parse.GetValue(TokenFile);
        // Given on the command line, not taken from FLASHMLA_TOKEN: two tokens the user typed are a mistake to point out.
        bool tokenGiven = parse.GetResult(Token) is { Implicit: false };
        if (path is null) return parse.GetValue(Token);
        if (tokenGiven) throw new ConnectionArgumentException("--token and --token-file both give the bearer token: use one");
        string text;
        try
        {
            text = File.ReadAllText(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new ConnectionArgumentException($"--token-file '{path}' cannot be read: {ex.Message}");
        }
        string token = text.Trim();
        if (token.Length == 0) throw new ConnectionArgumentException($"--token-file '{path}' is empty");
        if (token.Any(char.IsWhiteSpace))
            throw new ConnectionArgumentException($"--token-file '{path}' must hold the token alone (it has spaces or line breaks inside)");
        return token;
    }

    /// <summary>The client's TLS settings, their files loaded once to check them; null when no TLS option was given (system trust, no client certificate).</summary>
    private ClientTlsOptions? ReadTls(ParseResult parse)
    {
        string? ca = parse.GetValue(Ca), name = parse.GetValue(ServerName), certificate = parse.GetValue(ClientCertificate), key = parse.GetValue(ClientKey);
        if (ca is null && name is null && certificate is null && key is null) return null;
        if (certificate is null != key is null) throw new ConnectionArgumentException("--client-cert and --client-key go together: give both or neither");
        foreach (var (option, path) in new[] { ("--ca", ca), ("--client-cert", certificate), ("--client-key", key) })
            if (path is not null && !File.Exists(path)) throw new ConnectionArgumentException($"{option} '{path}' does not exist");
        var tls = new ClientTlsOptions { CaFile = ca, ServerName = name, ClientCertificateFile = certificate, ClientKeyFile = key };
        try
        {
            tls.Load(); // what every connection would load: a file that is not PEM, or a key of another certificate, fails here
        }
        catch (ArgumentException ex)
        {
            throw new ConnectionArgumentException(ex.Message);
        }
        return tls;
    }
}

/// <summary>The server a command talks to, as the command line gives it (<see cref="ConnectionArguments.Read"/>).</summary>
internal sealed record ServerConnection(string Address, string? DecodeAddress, string? BearerToken, ClientTlsOptions? Tls)
{
    /// <summary>The options of every client the command makes: its token and TLS, decode on <see cref="DecodeAddress"/>; `with` adds a command's own.</summary>
    public FlashMlaClientOptions ClientOptions() => new() { DecodeAddress = DecodeAddress, BearerToken = BearerToken, Tls = Tls };

    /// <summary>The same without the decode address: every call on <see cref="Address"/> (a command's admin calls).</summary>
    public FlashMlaClientOptions CacheClientOptions() => ClientOptions() with { DecodeAddress = null };
}

/// <summary>A connection option the command cannot use; the message names the option and says why.</summary>
internal sealed class ConnectionArgumentException(string message) : Exception(message);
