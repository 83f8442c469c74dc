using System.CommandLine;
using System.Diagnostics;
using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using FlashMla.Http2;
using Spectre.Console;

namespace FlashMla.Cli;

/// <summary>
/// What TLS itself costs on this machine, without HTTP/2, gRPC or a server: one loopback connection, a writer sending
/// 1 MiB writes (each followed by a flush, as the frame writer does) and a reader draining them into 1 MiB reads, in
/// cleartext and through SslStream, with SslStream over the bare socket stream (one send and one receive per 16 KiB
/// record) and over <see cref="TlsRecordBatchingStream"/> (as both sides of the data plane use it), with AES-128-GCM and
/// AES-256-GCM. Per row: GB/s one way and the process's CPU seconds per GB (both ends are this process), the figure that
/// holds on a machine shared with other work. Rows are interleaved over rounds; medians are printed.
/// </summary>
internal static class TlsBenchCommand
{
    private sealed record Variant(string Name, bool Tls, bool Batched, TlsCipherSuite Cipher);

    private static readonly Variant[] Variants =
    [
        new("cleartext", false, false, default),
        new("tls aes256 per-record", true, false, TlsCipherSuite.TLS_AES_256_GCM_SHA384),
        new("tls aes256 batched", true, true, TlsCipherSuite.TLS_AES_256_GCM_SHA384),
        new("tls aes128 per-record", true, false, TlsCipherSuite.TLS_AES_128_GCM_SHA256),
        new("tls aes128 batched", true, true, TlsCipherSuite.TLS_AES_128_GCM_SHA256),
    ];

    public static Command Create()
    {
        var seconds = SecondsOption.Create("--seconds", "Measured seconds per row", 2);
        var rounds = new Option<int>("--rounds") { Description = "Rounds over all rows (medians printed)", DefaultValueFactory = _ => 3 };
        var output = new Option<string?>("--out") { Description = ResultsFile.OutDescription };
        var command = new Command("tlsbench", "Loopback TLS cost: cleartext vs SslStream per record vs batched records, AES-128 vs AES-256, GB/s and CPU s/GB")
            { seconds, rounds, output };
        command.SetAction((parse, token) => RunAsync(parse.GetValue(seconds), parse.GetValue(rounds), parse.GetValue(output), token));
        return command;
    }

    private static async Task<int> RunAsync(double seconds, int rounds, string? output, CancellationToken cancellationToken)
    {
        if (seconds <= 0 || rounds < 1)
        {
            AnsiConsole.MarkupLine("[red]--seconds and --rounds must be positive[/]");
            return 2;
        }
        using var authority = DevCertificates.CreateAuthority("tlsbench CA");
        using var certificate = DevCertificates.IssueServer(authority, [], [IPAddress.Loopback]);
        var results = Variants.ToDictionary(v => v, _ => new List<(double GBps, double CpuPerGB)>());
        for (int round = 0; round < rounds; round++)
            foreach (var variant in Variants)
                results[variant].Add(await MeasureAsync(variant, certificate, seconds, cancellationToken));

        var table = new Table().AddColumns("variant", "GB/s (median)", "CPU s/GB (median)", "GB/s per round", "CPU s/GB per round");
        var lines = new List<string>();
        foreach (var variant in Variants)
        {
            var runs = results[variant];
            double gbps = Median(runs.Select(r => r.GBps)), cpu = Median(runs.Select(r => r.CpuPerGB));
            string each = string.Join(" ", runs.Select(r => $"{r.GBps:F2}")), eachCpu = string.Join(" ", runs.Select(r => $"{r.CpuPerGB:F3}"));
            table.AddRow(variant.Name, $"{gbps:F2}", $"{cpu:F3}", each, eachCpu);
            lines.Add($"| {variant.Name} | {gbps:F2} | {cpu:F3} | {each} | {eachCpu} |");
        }
        AnsiConsole.Write(table);
        if (output is not null)
        {
            var text = new StringBuilder();
            text.AppendLine($"## tlsbench {DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC on {Environment.MachineName} ({Environment.ProcessorCount} cores)");
            text.AppendLine();
            text.AppendLine($"One loopback connection, one way, 1 MiB writes each flushed, 1 MiB reads; TLS 1.3, ECDSA P-256; {seconds:F1} s per row, " +
                $"{rounds} round(s) interleaved; CPU = this process (both ends) per GB received.");
            text.AppendLine();
            text.AppendLine("| variant | GB/s (median) | CPU s/GB (median) | GB/s per round | CPU s/GB per round |");
            text.AppendLine("| --- | --- | --- | --- | --- |");
            foreach (var line in lines) text.AppendLine(line);
            text.AppendLine();
            ResultsFile.Append(output, text.ToString());
        }
        return 0;
    }

    private static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }

    private static async Task<(double GBps, double CpuPerGB)> MeasureAsync(Variant variant, X509Certificate2 certificate, double seconds,
        CancellationToken cancellationToken)
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        // Socket settings as the data plane's: Nagle off, 4 MiB buffers.
        var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true, SendBufferSize = 4 << 20, ReceiveBufferSize = 4 << 20 };
        await client.ConnectAsync(listener.LocalEndPoint!, cancellationToken);
        var server = await listener.AcceptAsync(cancellationToken);
        server.NoDelay = true;
        server.SendBufferSize = server.ReceiveBufferSize = 4 << 20;
        var (sender, receiver) = await TransportsAsync(variant, certificate, client, server, cancellationToken);
        try
        {
            var message = GC.AllocateUninitializedArray<byte>(1 << 20, pinned: true);
            Random.Shared.NextBytes(message);
            long received = 0;
            var reading = Task.Run(async () =>
            {
                var buffer = GC.AllocateUninitializedArray<byte>(1 << 20, pinned: true);
                try
                {
                    int n;
                    while ((n = await receiver.ReadAsync(buffer, cancellationToken)) > 0) Interlocked.Add(ref received, n);
                }
                catch (IOException)
                {
                    // Closed under the read at the end.
                }
            }, cancellationToken);
            var process = Process.GetCurrentProcess();
            var clock = Stopwatch.StartNew();
            long from = 0, written = 0;
            int measuredWrites = 0;
            TimeSpan cpuFrom = default, elapsedFrom = default;
            double warmup = Math.Min(0.5, seconds / 4);
            bool measuring = false;
            while (clock.Elapsed.TotalSeconds < warmup + seconds || measuredWrites < 3)
            {
                await sender.WriteAsync(message, cancellationToken);
                await sender.FlushAsync(cancellationToken);
                written += message.Length;
                if (measuring) measuredWrites++;
                else if (clock.Elapsed.TotalSeconds >= warmup)
                {
                    measuring = true;
                    from = Interlocked.Read(ref received);
                    process.Refresh();
                    cpuFrom = process.TotalProcessorTime;
                    elapsedFrom = clock.Elapsed;
                }
            }
            // The window ends when the reader has everything written: a reader left behind (a busy machine) is not
            // counted as throughput it never had.
            while (Interlocked.Read(ref received) < written && !reading.IsCompleted) await Task.Delay(1, cancellationToken);
            long bytes = Interlocked.Read(ref received) - from;
            process.Refresh();
            double cpu = (process.TotalProcessorTime - cpuFrom).TotalSeconds, elapsed = (clock.Elapsed - elapsedFrom).TotalSeconds;
            client.Shutdown(SocketShutdown.Send);
            await reading;
            return (bytes / elapsed / 1e9, cpu / (bytes / 1e9));
        }
        finally
        {
            await sender.DisposeAsync();
            await receiver.DisposeAsync();
            client.Dispose();
            server.Dispose();
        }
    }

    private static async Task<(Stream Sender, Stream Receiver)> TransportsAsync(Variant variant, X509Certificate2 certificate, Socket client, Socket server,
        CancellationToken cancellationToken)
    {
        Stream clientStream = new NetworkStream(client, ownsSocket: false), serverStream = new NetworkStream(server, ownsSocket: false);
        if (!variant.Tls) return (clientStream, serverStream);
        TlsRecordBatchingStream? clientRecords = null, serverRecords = null;
        if (variant.Batched)
        {
            clientStream = clientRecords = new TlsRecordBatchingStream(clientStream);
            serverStream = serverRecords = new TlsRecordBatchingStream(serverStream);
        }
        var clientSsl = new SslStream(clientStream);
        var serverSsl = new SslStream(serverStream);
        var accept = serverSsl.AuthenticateAsServerAsync(new SslServerAuthenticationOptions
        {
            ServerCertificateContext = SslStreamCertificateContext.Create(certificate, null),
            EnabledSslProtocols = SslProtocols.Tls13,
            CipherSuitesPolicy = OperatingSystem.IsWindows() ? null : new CipherSuitesPolicy([variant.Cipher]), // Windows: its defaults (the check below fails)
        }, cancellationToken);
        await clientSsl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
        {
            TargetHost = "127.0.0.1",
            EnabledSslProtocols = SslProtocols.Tls13,
            // A certificate made here a moment ago, for this measurement only.
            RemoteCertificateValidationCallback = (_, _, _, _) => true,
        }, cancellationToken);
        await accept;
        if (clientSsl.NegotiatedCipherSuite != variant.Cipher) throw new InvalidOperationException($"negotiated {clientSsl.NegotiatedCipherSuite}, not {variant.Cipher}");
        clientRecords?.StartBatching();
        serverRecords?.StartBatching();
        return (clientSsl, serverSsl);
    }
}
