using System.CommandLine;
using FlashMla.Cli;

var root = new RootCommand("flashmla: talk to a FlashMLA service (demo, bench, latency, verify, soak); https:// addresses speak TLS");
// Declared once, on the root: every command that talks to a server takes the same connection options.
var connection = new ConnectionArguments().AddTo(root);
root.Add(DemoCommand.Create(connection));
root.Add(BenchCommand.Create(connection));
root.Add(BenchMatrixCommand.Create(connection));
root.Add(TcpBenchCommand.Create());
root.Add(TlsBenchCommand.Create());
root.Add(LatencyCommand.Create(connection));
root.Add(IngestBenchCommand.Create(connection));
root.Add(VerifyCommand.Create(connection));
root.Add(FlashMla.Cli.Soak.SoakCommand.Create(connection));
root.Add(DevCertCommand.Create());
var parse = root.Parse(args);
int exitCode = await parse.InvokeAsync();
// A command line that does not parse (a word for a number, a refused --seconds, an unknown option) is a usage error like
// every command's own refusals: ConnectionArguments.UsageError, not System.CommandLine's 1, which commands use for "ran, and failed".
return parse.Errors.Count > 0 ? ConnectionArguments.UsageError : exitCode;
