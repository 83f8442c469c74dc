using System.CommandLine;
using FlashMla.Client.Transport;

namespace FlashMla.Cli;

/// <summary>
/// The TLS options every command takes (an https:// --address or --decode-address turns TLS on): the CA file that
/// signs the server's certificate, the name to expect in it, and a client certificate for mTLS.
/// </summary>
internal static class TlsArguments
{
    public static readonly Option<string?> Ca = new("--ca")
        { Description = "PEM file of the CA(s) the server's certificate must chain to, for https:// addresses (default: the system's trust store)", Recursive = true };

    public static readonly Option<string?> ServerName = new("--server-name")
        { Description = "The name the server's certificate must carry (and SNI), when it is not the address's host", Recursive = true };

    public static readonly Option<string?> ClientCertificate = new("--client-cert")
        { Description = "PEM client certificate for servers that require one (mTLS); with --client-key", Recursive = true };

    public static readonly Option<string?> ClientKey = new("--client-key")
        { Description = "Unencrypted PEM private key of --client-cert", Recursive = true };

    public static IEnumerable<Option> All => [Ca, ServerName, ClientCertificate, ClientKey];

    /// <summary>The client's TLS settings from the command line; null when none was given (system trust, no client certificate).</summary>
    public static ClientTlsOptions? Read(ParseResult parse)
    {
        string? ca = parse.GetValue(Ca), name = parse.GetValue(ServerName), certificate = parse.GetValue(ClientCertificate), key = parse.GetValue(ClientKey);
        if (ca is null && name is null && certificate is null && key is null) return null;
        return new ClientTlsOptions { CaFile = ca, ServerName = name, ClientCertificateFile = certificate, ClientKeyFile = key };
    }
}
