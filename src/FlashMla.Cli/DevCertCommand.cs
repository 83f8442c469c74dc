using System.CommandLine;
using System.Net;
using Spectre.Console;

namespace FlashMla.Cli;

/// <summary>
/// <c>flashmla dev-cert</c>: a private CA with a server certificate and a client certificate, as PEM files, for
/// trying TLS and mTLS locally and for the device round's TLS measurement (no openssl needed).
/// </summary>
internal static class DevCertCommand
{
    public static Command Create()
    {
        var output = new Option<string>("--out") { Description = "Folder for ca.crt, ca.key, tls.crt, tls.key, client.crt, client.key", DefaultValueFactory = _ => "dev-certs" };
        var names = new Option<string>("--dns") { Description = "DNS names of the server certificate, comma-separated", DefaultValueFactory = _ => "localhost" };
        var addresses = new Option<string>("--ip") { Description = "IP addresses of the server certificate, comma-separated", DefaultValueFactory = _ => "127.0.0.1,::1" };
        var client = new Option<string>("--client-name") { Description = "CN of the client certificate", DefaultValueFactory = _ => "flashmla-client" };
        var command = new Command("dev-cert", "Write a development CA, a server certificate and a client certificate (PEM) for TLS and mTLS; not for production")
            { output, names, addresses, client };
        command.SetAction(parse =>
        {
            string[] dns = Split(parse.GetValue(names)!);
            var ips = new List<IPAddress>();
            foreach (string text in Split(parse.GetValue(addresses)!))
            {
                if (!IPAddress.TryParse(text, out var ip))
                {
                    AnsiConsole.MarkupLine($"[red]--ip '{Markup.Escape(text)}' is not an IP address[/]");
                    return 2;
                }
                ips.Add(ip);
            }
            if (dns.Length == 0 && ips.Count == 0)
            {
                AnsiConsole.MarkupLine("[red]the server certificate needs at least one --dns name or --ip address[/]");
                return 2;
            }
            var files = DevCertificates.WriteSet(parse.GetValue(output)!, dns, ips, parse.GetValue(client)!);
            Console.WriteLine($"wrote {files.Ca}, {files.Certificate}, {files.Key}, {files.ClientCertificate}, {files.ClientKey} " +
                $"(server names: {string.Join(", ", dns.Concat(ips.Select(i => i.ToString())))})");
            return 0;
        });
        return command;
    }

    private static string[] Split(string text) => text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
}
