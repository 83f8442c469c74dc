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

var root = new RootCommand("flashmla: talk to a FlashMLA service (demo, bench, verify); https:// addresses speak TLS") { address, decodeAddress };
foreach (var option in TlsArguments.All) root.Add(option);
root.Add(DemoCommand.Create(address));
root.Add(BenchCommand.Create(address, decodeAddress));
root.Add(BenchMatrixCommand.Create(address, decodeAddress));
root.Add(TcpBenchCommand.Create());
root.Add(VerifyCommand.Create(address, decodeAddress));
root.Add(DevCertCommand.Create());
return await root.Parse(args).InvokeAsync();
