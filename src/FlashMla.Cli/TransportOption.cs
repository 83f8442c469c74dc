using System.CommandLine;
using FlashMla.Client;
using Spectre.Console;

namespace FlashMla.Cli;

/// <summary>The --transport option of bench and bench-matrix: which HTTP/2 client carries the calls.</summary>
internal static class TransportOption
{
    public static Option<string> Create(string description) =>
        new("--transport") { Description = description, DefaultValueFactory = _ => "large-frames" };

    public static string Name(ClientTransport transport) => transport switch
    {
        ClientTransport.LargeFrames => "large-frames",
        ClientTransport.SocketsHttpHandler => "sockets",
        _ => transport.ToString(),
    };

    /// <summary>The transports named in <paramref name="text"/>, or null (after printing why) when one is unknown.</summary>
    public static ClientTransport[]? ParseList(string text)
    {
        var names = text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var result = new List<ClientTransport>();
        foreach (string name in names)
        {
            ClientTransport? transport = name switch
            {
                "large-frames" => ClientTransport.LargeFrames,
                "sockets" => ClientTransport.SocketsHttpHandler,
                _ => null,
            };
            if (transport is null)
            {
                AnsiConsole.MarkupLine($"[red]unknown transport '{Markup.Escape(name)}': use large-frames or sockets[/]");
                return null;
            }
            result.Add(transport.Value);
        }
        if (result.Count == 0) AnsiConsole.MarkupLine("[red]--transport names no transport[/]");
        return result.Count == 0 ? null : [.. result];
    }
}
