using System.CommandLine;
using FlashMla.Cli;

var address = new Option<string>("--address", "-a")
{
    Description = "The server's gRPC address",
    DefaultValueFactory = _ => "http://localhost:50051",
    Recursive = true,
};

var root = new RootCommand("flashmla: talk to a FlashMLA service (demo, bench, verify)") { address };
root.Add(DemoCommand.Create(address));
root.Add(BenchCommand.Create(address));
root.Add(BenchMatrixCommand.Create(address));
root.Add(TcpBenchCommand.Create());
root.Add(VerifyCommand.Create(address));
return await root.Parse(args).InvokeAsync();
