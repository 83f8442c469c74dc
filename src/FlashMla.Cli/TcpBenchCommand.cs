using System.CommandLine;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Spectre.Console;

namespace FlashMla.Cli;

/// <summary>
/// The ceiling of the data plane on this machine: raw TCP over loopback, N connections, each with one
/// writer sending messages of a fixed size as fast as it can and one reader draining them (one way).
/// The gRPC figures of <c>bench-matrix</c> are read against this, measured in the same run.
/// </summary>
internal static class TcpBenchCommand
{
    public static Command Create()
    {
        var connections = new Option<string>("--connections") { Description = "Connection counts, comma-separated (e.g. 1,2,4,8)", DefaultValueFactory = _ => "1" };
        var seconds = SecondsOption.Create("--seconds", "How long each count runs", 3);
        var messageBytes = new Option<int>("--message-bytes") { Description = "Bytes per send", DefaultValueFactory = _ => 4 * 1024 * 1024 };
        var output = new Option<string?>("--out") { Description = ResultsFile.OutDescription };
        var command = new Command("tcpbench", "Raw loopback TCP throughput, one way, over N connections") { connections, seconds, messageBytes, output };
        command.SetAction((parse, token) => IntListOption.Parse("--connections", parse.GetValue(connections)!, min: 1) is { } counts
            ? RunAsync(counts, parse.GetValue(seconds), parse.GetValue(messageBytes), parse.GetValue(output), token)
            : Task.FromResult(ConnectionArguments.UsageError));
        return command;
    }

    /// <summary>Largest --message-bytes: 256 MiB (a buffer of it per connection; int.MaxValue was one 2 GiB allocation each).</summary>
    public const int MaxMessageBytes = 256 << 20;

    public static async Task<int> RunAsync(int[] connectionCounts, double seconds, int messageBytes, string? output, CancellationToken cancellationToken)
    {
        if (connectionCounts.Length == 0 || connectionCounts.Any(c => c < 1) || seconds <= 0 || messageBytes < 1 || messageBytes > MaxMessageBytes)
        {
            AnsiConsole.MarkupLine($"[red]connections and seconds must be positive, --message-bytes 1..{MaxMessageBytes} (each connection holds one message)[/]");
            return 2;
        }
        var table = new Table().AddColumns("connections", "GB/s one way", "per connection GB/s");
        var lines = new List<string>();
        foreach (int n in connectionCounts)
        {
            double gbps = await MeasureAsync(n, seconds, messageBytes, cancellationToken);
            table.AddRow($"{n}", $"{gbps:F2}", $"{gbps / n:F2}");
            lines.Add($"| {n} | {gbps:F2} | {gbps / n:F2} |");
        }
        AnsiConsole.Write(table);
        if (output is not null)
        {
            var text = new StringBuilder();
            text.AppendLine($"## tcpbench {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC on {Environment.MachineName} ({Environment.ProcessorCount} cores)");
            text.AppendLine();
            text.AppendLine($"Raw TCP over loopback, one way, {messageBytes} bytes per send, {seconds:F1} s per row.");
            text.AppendLine();
            text.AppendLine("| connections | GB/s one way | per connection GB/s |");
            text.AppendLine("| --- | --- | --- |");
            foreach (var line in lines) text.AppendLine(line);
            text.AppendLine();
            ResultsFile.Append(output, text.ToString());
        }
        return 0;
    }

    /// <summary>Bytes received per second over all connections, in GB/s (1e9).</summary>
    public static async Task<double> MeasureAsync(int connections, double seconds, int messageBytes, CancellationToken cancellationToken)
    {
        var pairs = await ConnectAsync(connections, cancellationToken);
        long received = 0;
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var clock = Stopwatch.StartNew();
        var tasks = new List<Task>();
        long measuredFrom = 0;
        double warmup = Math.Min(0.5, seconds / 4);
        foreach (var (sender, receiver) in pairs)
        {
            tasks.Add(Task.Run(async () =>
            {
                var message = new byte[messageBytes];
                Random.Shared.NextBytes(message);
                try
                {
                    while (!stop.IsCancellationRequested) await sender.SendAsync(message, SocketFlags.None, stop.Token);
                }
                catch (OperationCanceledException)
                {
                }
                sender.Shutdown(SocketShutdown.Send);
            }));
            tasks.Add(Task.Run(async () =>
            {
                var buffer = new byte[messageBytes];
                while (true)
                {
                    int n = await receiver.ReceiveAsync(buffer, SocketFlags.None);
                    if (n == 0) break;
                    Interlocked.Add(ref received, n);
                }
            }));
        }
        await Task.Delay(TimeSpan.FromSeconds(warmup), cancellationToken);
        measuredFrom = Interlocked.Read(ref received);
        double start = clock.Elapsed.TotalSeconds;
        await Task.Delay(TimeSpan.FromSeconds(seconds), cancellationToken);
        long bytes = Interlocked.Read(ref received) - measuredFrom;
        double elapsed = clock.Elapsed.TotalSeconds - start;
        stop.Cancel();
        await Task.WhenAll(tasks);
        foreach (var (sender, receiver) in pairs)
        {
            sender.Dispose();
            receiver.Dispose();
        }
        return bytes / elapsed / 1e9;
    }

    /// <summary>
    /// The round trip's floor on the wire: over one loopback connection, the client sends <paramref name="requestBytes"/>,
    /// the other end reads them all and answers with <paramref name="responseBytes"/>, one exchange at a time (what one
    /// decode call in flight moves, without HTTP/2, gRPC or a server behind it). Returns the measured round trips, in
    /// microseconds, after a short unmeasured warm-up.
    /// </summary>
    public static async Task<double[]> PingPongAsync(int requestBytes, int responseBytes, double seconds, CancellationToken cancellationToken)
    {
        var pairs = await ConnectAsync(1, cancellationToken);
        var (client, server) = pairs[0];
        using var clientStream = new NetworkStream(client, ownsSocket: true);
        using var serverStream = new NetworkStream(server, ownsSocket: true);
        var answering = Task.Run(async () =>
        {
            var request = new byte[requestBytes];
            var response = new byte[responseBytes];
            Random.Shared.NextBytes(response);
            try
            {
                while (await serverStream.ReadAtLeastAsync(request, requestBytes, throwOnEndOfStream: false, cancellationToken) == requestBytes)
                    await serverStream.WriteAsync(response, cancellationToken);
            }
            catch (IOException)
            {
                // The client closed mid-exchange: the measurement is over.
            }
        }, cancellationToken);
        var sent = new byte[requestBytes];
        var received = new byte[responseBytes];
        Random.Shared.NextBytes(sent);
        var roundTrips = new List<double>();
        double warmup = Math.Min(0.2, seconds / 4);
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed.TotalSeconds < warmup + seconds || roundTrips.Count < 3)
        {
            long start = Stopwatch.GetTimestamp();
            await clientStream.WriteAsync(sent, cancellationToken);
            await clientStream.ReadExactlyAsync(received, cancellationToken);
            if (clock.Elapsed.TotalSeconds >= warmup) roundTrips.Add(Stopwatch.GetElapsedTime(start).TotalMicroseconds);
        }
        client.Shutdown(SocketShutdown.Send);
        await answering;
        return [.. roundTrips];
    }

    /// <summary><paramref name="count"/> connected pairs of loopback sockets (Nagle off on the connecting side).</summary>
    private static async Task<List<(Socket Connected, Socket Accepted)>> ConnectAsync(int count, CancellationToken cancellationToken)
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(count);
        var endpoint = (IPEndPoint)listener.LocalEndPoint!;
        var pairs = new List<(Socket, Socket)>();
        for (int i = 0; i < count; i++)
        {
            var connected = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            var accept = listener.AcceptAsync(cancellationToken);
            await connected.ConnectAsync(endpoint, cancellationToken);
            var accepted = await accept;
            accepted.NoDelay = true;
            pairs.Add((connected, accepted));
        }
        return pairs;
    }
}
