using System.Globalization;

namespace FlashMla.Server.Tests;

/// <summary>
/// The TCP connections a server side still holds on one local port, read from the kernel's socket table (Linux
/// /proc/net/tcp and tcp6): ESTABLISHED, or CLOSE_WAIT (the client has closed, the server not yet). Exact and per port
/// at once, unlike kestrel_active_connections in a test process, where every test server's Prometheus exporter reports
/// every test server's Kestrel meter (a series is per port only, and its count only from when that exporter started).
/// </summary>
public static class ServerSockets
{
    private const string Established = "01";
    private const string CloseWait = "08";

    public static int Open(int localPort)
    {
        if (!OperatingSystem.IsLinux()) throw new PlatformNotSupportedException("the kernel's socket table is read from /proc/net (Linux)");
        int open = 0;
        foreach (string table in new[] { "/proc/net/tcp", "/proc/net/tcp6" })
        {
            if (!File.Exists(table)) continue; // no IPv6 in this kernel
            foreach (string line in File.ReadLines(table).Skip(1))
            {
                // "  sl  local_address rem_address   st ...": the local address is hex IP:port
                var fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (fields.Length < 4) continue;
                string local = fields[1];
                int port = int.Parse(local.AsSpan(local.LastIndexOf(':') + 1), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
                if (port == localPort && fields[3] is Established or CloseWait) open++;
            }
        }
        return open;
    }
}
