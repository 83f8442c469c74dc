using System.CommandLine;
using FlashMla.Cli;

var address = new Option<string>("--address", "-a")
{
    Description = "The server's gRPC address",
    DefaultValueFactory = _ => "http://localhost:50051",
    Recursive = true,
};

var decodeAddress = new Option<string?>("--decode-address")
{
    Description = "Where decode calls go (the server's data-plane port, e.g. http://localhost:50052); default: --address. " +
        "bench-matrix takes a comma-separated list and measures each ('grpc': decode on --address)",
    Recursive = true,
};

var token = new Option<string?>("--token")
{
    Description = "Bearer token for a server with a token file (sent on both ports); default: the environment variable FLASHMLA_TOKEN",
    DefaultValueFactory = _ => Environment.GetEnvironmentVariable("FLASHMLA_TOKEN") is { Length: > 0 } fromEnvironment ? fromEnvironment : null,
    Recursive = true,
};

var root = new RootCommand("flashmla: talk to a FlashMLA service (demo, bench, latency, verify, soak); https:// addresses speak TLS") { address, decodeAddress, token };
foreach (var option in TlsArguments.All) root.Add(option);
root.Add(DemoCommand.Create(address, token));
root.Add(BenchCommand.Create(address, decodeAddress, token));
root.Add(BenchMatrixCommand.Create(address, decodeAddress, token));
root.Add(TcpBenchCommand.Create());
root.Add(LatencyCommand.Create(address, decodeAddress, token));
root.Add(IngestBenchCommand.Create(address, decodeAddress, token));
root.Add(VerifyCommand.Create(address, decodeAddress, token));
root.Add(FlashMla.Cli.Soak.SoakCommand.Create(address, decodeAddress, token));
root.Add(DevCertCommand.Create());
return await root.Parse(args).InvokeAsync();
