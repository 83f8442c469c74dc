using FlashMla.Client;
using FlashMla.Core.Tensors;

namespace FlashMla.Cli.Soak;

/// <summary>
/// The ordinary mixed load of one tenant, as a model host makes it: a pipelined decode stream and unary decodes on the
/// gRPC port, decodes (streamed, unary, appending) and AppendKv on the data-plane port, and the cache commands (create,
/// append, fork, truncate, free, stats). Every task pauses between calls, so that two small cores are not saturated by
/// compute and the figures show what the server keeps, not how fast it runs. Every call is counted in the tally; none of
/// these should fail.
/// </summary>
internal sealed class SoakLoad(SoakSettings settings, string? token, SoakTally tally, int seed)
{
    private readonly Random _random = new(seed);
    private ulong[] _shared = [];
    private ushort[] _q = [];

    /// <summary>Sequences the decodes attend over (each <c>Context</c> rows in layer 0); the abusive client borrows them.</summary>
    public IReadOnlyList<ulong> SharedSequences => _shared;

    public async Task PrepareAsync(CancellationToken cancellationToken)
    {
        using var admin = new FlashMlaClient(settings.Address, settings.ClientOptions(token, dataPlane: false));
        _shared = await Workload.PrefillAsync(admin, _random, settings.Batch, settings.Context, cancellationToken);
        _q = Workload.RandomBf16(_random, (long)settings.Batch * settings.Heads * MlaDims.HeadDimK);
    }

    /// <summary>The load's tasks, each looping until <paramref name="stop"/>.</summary>
    public Task[] Start(CancellationToken stop) =>
    [
        Task.Run(() => GrpcStreamAsync(stop)),
        Task.Run(() => GrpcUnaryAsync(stop)),
        Task.Run(() => DataPlaneAsync(stop)),
        Task.Run(() => CacheCommandsAsync(stop)),
    ];

    public async Task CleanUpAsync()
    {
        using var admin = new FlashMlaClient(settings.Address, settings.ClientOptions(token, dataPlane: false));
        foreach (ulong id in _shared) await admin.FreeAsync(id, CancellationToken.None);
    }

    private DecodeInput SharedStep() => new(0, _shared, 1, settings.Heads, _q);

    private Task PauseAsync(CancellationToken stop) => settings.PauseMilliseconds == 0 ? Task.CompletedTask : Task.Delay(settings.PauseMilliseconds, stop);

    /// <summary>One decode stream, reopened every 500 steps (and after a failure), so streams open and close too.</summary>
    private async Task GrpcStreamAsync(CancellationToken stop)
    {
        using var client = new FlashMlaClient(settings.Address, settings.ClientOptions(token, dataPlane: false));
        await SoakLoop.Run(tally, stop, async () =>
        {
            await using var stream = client.OpenDecodeStream(stop);
            for (int step = 0; step < 500 && !stop.IsCancellationRequested; step++)
            {
                using var result = await stream.DecodeAsync(SharedStep(), stop);
                tally.Ok();
                await PauseAsync(stop);
            }
        });
    }

    private async Task GrpcUnaryAsync(CancellationToken stop)
    {
        using var client = new FlashMlaClient(settings.Address, settings.ClientOptions(token, dataPlane: false));
        await SoakLoop.Run(tally, stop, async () =>
        {
            using var result = await client.DecodeOnceAsync(SharedStep(), stop);
            tally.Ok();
            await PauseAsync(stop);
        });
    }

    /// <summary>
    /// On the data-plane port: a stream step, a unary step, a step that appends a row to a sequence of its own (truncated
    /// back to <c>Context</c> every 64 rows), and an AppendKv of 16 rows to that sequence, in turn.
    /// </summary>
    private async Task DataPlaneAsync(CancellationToken stop)
    {
        using var client = new FlashMlaClient(settings.Address, settings.ClientOptions(token, dataPlane: true));
        var rows = Workload.RandomBf16(_random, 16L * MlaDims.HeadDimK);
        var context = Workload.RandomBf16(_random, (long)settings.Context * MlaDims.HeadDimK);
        var q1 = Workload.RandomBf16(_random, (long)settings.Heads * MlaDims.HeadDimK);
        // A failed step may leave the stream broken: the loop counts it and starts again with a new stream and sequence.
        await SoakLoop.Run(tally, stop, async () =>
        {
            ulong own = await client.CreateSequenceAsync(stop);
            try
            {
                await client.AppendKvAsync(own, 0, context, cancellationToken: stop);
                await using var stream = client.OpenDecodeStream(stop);
                int grown = 0;
                while (!stop.IsCancellationRequested)
                {
                    using (var streamed = await stream.DecodeAsync(SharedStep(), stop)) tally.Ok();
                    await PauseAsync(stop);
                    using (var unary = await client.DecodeOnceAsync(SharedStep(), stop)) tally.Ok();
                    await PauseAsync(stop);
                    using (var appended = await client.DecodeOnceAsync(new DecodeInput(0, [own], 1, settings.Heads, q1, rows.AsMemory(0, MlaDims.HeadDimK)), stop))
                        tally.Ok();
                    await client.AppendKvAsync(own, 0, rows, cancellationToken: stop);
                    tally.Ok();
                    grown += 17;
                    if (grown >= 64)
                    {
                        await client.TruncateAsync(own, settings.Context, stop);
                        tally.Ok();
                        grown = 0;
                    }
                    await PauseAsync(stop);
                }
            }
            finally
            {
                await FreeQuietly(client, own);
            }
        });
    }

    /// <summary>Create, append, fork, truncate the fork, free both, and the stats: the lifecycle of a sampled continuation.</summary>
    private async Task CacheCommandsAsync(CancellationToken stop)
    {
        using var client = new FlashMlaClient(settings.Address, settings.ClientOptions(token, dataPlane: false));
        var rows = Workload.RandomBf16(_random, 80L * MlaDims.HeadDimK);
        await SoakLoop.Run(tally, stop, async () =>
        {
            ulong id = await client.CreateSequenceAsync(stop);
            tally.Ok();
            try
            {
                await client.AppendKvAsync(id, 0, rows, cancellationToken: stop);
                tally.Ok();
                ulong fork = (await client.ForkAsync(id, stop)).SequenceId;
                tally.Ok();
                try
                {
                    await client.TruncateAsync(fork, 40, stop);
                    tally.Ok();
                }
                finally
                {
                    await client.FreeAsync(fork, CancellationToken.None);
                    tally.Ok();
                }
            }
            finally
            {
                await client.FreeAsync(id, CancellationToken.None);
                tally.Ok();
            }
            await client.GetStatsAsync(stop);
            tally.Ok();
            await PauseAsync(stop);
        });
    }

    private static async Task FreeQuietly(FlashMlaClient client, ulong id)
    {
        try
        {
            await client.FreeAsync(id, CancellationToken.None);
        }
        catch (Exception)
        {
            // Best effort at the end: the lease reclaims what is left.
        }
    }
}
