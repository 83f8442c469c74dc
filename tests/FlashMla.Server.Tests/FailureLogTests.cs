using System.Collections.Concurrent;
using FlashMla.Contracts.V1;
using FlashMla.Server.Services;
using Grpc.Core;
using Serilog.Events;

namespace FlashMla.Server.Tests;

/// <summary>
/// The log and the trailers cannot be flooded (issue 13, item 9): repeated refusals cost a bounded number of lines,
/// and a detail that echoes a request is capped in the log, in the grpc-message trailer and in a stream's error.
/// </summary>
public sealed class FailureLogTests
{
    [Fact]
    public async Task An_id_scan_of_many_unknown_sequences_writes_a_bounded_number_of_log_lines()
    {
        var log = new LogCapture();
        await using var server = await TestServer.StartAsync(log.ServerOptions);
        const int guesses = 300;
        int notFound = 0;
        for (ulong id = 1_000_000; id < 1_000_000 + guesses; id++)
        {
            var error = await Assert.ThrowsAsync<RpcException>(() => server.Client.GetSequenceAsync(id));
            if (error.StatusCode == StatusCode.NotFound) notFound++;
        }

        Assert.Equal(guesses, notFound); // every guess is still answered
        var lines = log.Events.Where(e => e.Properties.TryGetValue("SourceContext", out var source) && source.ToString().Contains(nameof(RequestFailures))).ToList();
        // The first lines of the window one by one, then (at most) one summary line with the count.
        Assert.InRange(lines.Count, RequestFailures.LinesPerWindow, RequestFailures.LinesPerWindow + 1);
    }

    [Fact]
    public async Task A_detail_that_echoes_a_huge_request_is_capped_in_the_trailer_and_in_the_log()
    {
        var log = new LogCapture();
        await using var server = await TestServer.StartAsync(log.ServerOptions);
        ulong id = await server.Client.CreateSequenceAsync();
        // A q of 100,000 extents: "q must have shape [...], got [1, 1, ...]" would be 300 KB.
        var q = new Tensor { Dtype = DType.Bf16, Data = Google.Protobuf.ByteString.CopyFrom(new byte[16 * 576 * 2]) };
        q.Shape.Add(Enumerable.Repeat(1L, 100_000));
        var request = new DecodeRequest { Layer = 0, SQ = 1, HQ = 16, Q = q, SequenceIds = { id } };

        var error = await Assert.ThrowsAsync<RpcException>(() => server.Client.Decoder.DecodeOnceAsync(request).ResponseAsync);
        Assert.Equal(StatusCode.InvalidArgument, error.StatusCode);
        Assert.StartsWith("q must have shape", error.Status.Detail);
        Assert.InRange(error.Status.Detail.Length, 1, StatusMapping.MaxDetailChars + 40);

        using var stream = server.Client.Decoder.Decode();
        await stream.RequestStream.WriteAsync(request);
        Assert.True(await stream.ResponseStream.MoveNext(CancellationToken.None));
        Assert.InRange(stream.ResponseStream.Current.Error.Message.Length, 1, StatusMapping.MaxDetailChars + 40);
        await stream.RequestStream.CompleteAsync();

        var line = Assert.Single(log.Events, e => e.Level == LogEventLevel.Warning && e.RenderMessage().Contains("q must have shape") &&
            e.RenderMessage().Contains("DecodeOnce"));
        Assert.True(line.RenderMessage().Length < 1000, $"a log line of {line.RenderMessage().Length} characters");
    }

    [Fact]
    public async Task Past_the_lines_of_a_window_one_summary_line_counts_the_failures_not_logged()
    {
        var summaries = new ConcurrentQueue<(StatusCode Code, long Count)>();
        using var throttle = new RefusalLogThrottle(3, TimeSpan.FromMilliseconds(300), TimeProvider.System, (code, count, _) => summaries.Enqueue((code, count)));
        int logged = Enumerable.Range(0, 20).Count(_ => throttle.ShouldLog(StatusCode.NotFound));
        Assert.Equal(3, logged);
        Assert.True(throttle.ShouldLog(StatusCode.InvalidArgument)); // each code has its own window

        var until = DateTime.UtcNow.AddSeconds(10);
        while (summaries.IsEmpty && DateTime.UtcNow < until) await Task.Delay(20);
        Assert.Equal((StatusCode.NotFound, 17L), Assert.Single(summaries)); // from the window's timer, with no further failure
        Assert.True(throttle.ShouldLog(StatusCode.NotFound)); // a new window logs again
    }
}
