using FlashMla.Client;
using FlashMla.Core.Tensors;
using Grpc.Core;

namespace FlashMla.Cli.Soak;

/// <summary>
/// The badly behaved clients, one act every <c>AbuseEverySeconds</c>, in turn: a unary decode cancelled a moment after
/// it is sent, a decode stream cancelled with a request in flight, a client that closes its connection with a stream
/// request in flight (on either port), a decode the server must refuse (an unknown sequence, a q of the wrong size),
/// and with tokens: a tenant filling its sequence quota until RESOURCE_EXHAUSTED, a tenant naming another's sequence,
/// and a token the server does not know. Their results go to a tally of their own: refusals are what they expect.
/// </summary>
internal sealed class SoakAbuse(SoakSettings settings, IReadOnlyList<SoakLoad> tenants, SoakTally abuse)
{
    /// <summary>The acts, by number: what <c>--abuse-acts</c> picks from.</summary>
    public static readonly int[] AllActs = [0, 1, 2, 3, 4, 5, 6, 7];

    private readonly Random _random = new(99);
    private int _act;

    private string? Token(int tenant) => settings.Tokens[tenant % settings.Tokens.Count];

    public Task Start(CancellationToken stop) => Task.Run(async () =>
    {
        using var timer = new PeriodicTimer(TimeSpan.FromSeconds(settings.AbuseEverySeconds));
        try
        {
            while (await timer.WaitForNextTickAsync(stop))
            {
                try
                {
                    await NextAsync(stop);
                }
                catch (Exception e) when (!stop.IsCancellationRequested)
                {
                    abuse.Failed(e);
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
    });

    private DecodeInput Step(int tenant) =>
        new(0, tenants[tenant].SharedSequences, 1, settings.Heads, Workload.RandomBf16(_random, (long)settings.Batch * settings.Heads * MlaDims.HeadDimK));

    private async Task NextAsync(CancellationToken stop)
    {
        int turn = _act++;
        int tenant = turn / settings.AbuseActs.Count % tenants.Count;
        switch (settings.AbuseActs[turn % settings.AbuseActs.Count])
        {
            case 0: await CancelUnaryAsync(tenant, stop); break;
            case 1: await CancelStreamAsync(tenant, stop); break;
            case 2: await DisconnectMidStreamAsync(tenant, dataPlane: true); break;
            case 3: await DisconnectMidStreamAsync(tenant, dataPlane: false); break;
            case 4: await RefusedDecodesAsync(tenant, stop); break;
            case 5: await FillQuotaAsync(stop); break;
            case 6: await OtherTenantsSequenceAsync(stop); break;
            default: await UnknownTokenAsync(stop); break;
        }
    }

    private async Task CancelUnaryAsync(int tenant, CancellationToken stop)
    {
        using var client = new FlashMlaClient(settings.Address, settings.ClientOptions(Token(tenant), dataPlane: true));
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(stop);
        cancel.CancelAfter(TimeSpan.FromMilliseconds(_random.Next(0, 3)));
        await Expect(async () => { using var result = await client.DecodeOnceAsync(Step(tenant), cancel.Token); });
    }

    private async Task CancelStreamAsync(int tenant, CancellationToken stop)
    {
        using var client = new FlashMlaClient(settings.Address, settings.ClientOptions(Token(tenant), dataPlane: false));
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(stop);
        await Expect(async () =>
        {
            await using var stream = client.OpenDecodeStream(cancel.Token);
            var pending = await stream.SendAsync(Step(tenant), cancel.Token);
            cancel.Cancel();
            using var result = await pending;
        });
    }

    /// <summary>A stream request sent, then the connection closed without reading the answer or ending the stream.</summary>
    private async Task DisconnectMidStreamAsync(int tenant, bool dataPlane)
    {
        var client = new FlashMlaClient(settings.Address, settings.ClientOptions(Token(tenant), dataPlane));
        Task<DecodeOutput>? pending = null;
        await Expect(async () =>
        {
            var stream = client.OpenDecodeStream();
            pending = await stream.SendAsync(Step(tenant));
        });
        client.Dispose(); // the stream is never disposed: its connection just goes away
        // Every client call must end (issue 13, item 7): one still pending after 10 s counts as a TimeoutException.
        if (pending is not null) await Expect(async () => { using var result = await pending.WaitAsync(TimeSpan.FromSeconds(10)); });
    }

    private async Task RefusedDecodesAsync(int tenant, CancellationToken stop)
    {
        using var client = new FlashMlaClient(settings.Address, settings.ClientOptions(Token(tenant), dataPlane: true));
        var q = Workload.RandomBf16(_random, (long)settings.Heads * MlaDims.HeadDimK);
        await Expect(async () => { using var r = await client.DecodeOnceAsync(new DecodeInput(0, [ulong.MaxValue - (ulong)_act], 1, settings.Heads, q), stop); });
        await Expect(async () => { using var r = await client.DecodeOnceAsync(new DecodeInput(0, tenants[tenant].SharedSequences, 1, settings.Heads, q[..^1]), stop); });
    }

    /// <summary>Creates sequences under the quota tenant's token until the server refuses one, then frees them.</summary>
    private async Task FillQuotaAsync(CancellationToken stop)
    {
        if (settings.QuotaToken is not { } token)
        {
            await RefusedDecodesAsync(0, stop);
            return;
        }
        using var client = new FlashMlaClient(settings.Address, settings.ClientOptions(token, dataPlane: false));
        var created = new List<ulong>();
        try
        {
            for (int i = 0; i < 64; i++)
            {
                try
                {
                    created.Add(await client.CreateSequenceAsync(stop));
                    abuse.Ok();
                }
                catch (RpcException e)
                {
                    abuse.Failed(e);
                    break;
                }
            }
        }
        finally
        {
            foreach (ulong id in created) await client.FreeAsync(id, CancellationToken.None);
        }
    }

    private async Task OtherTenantsSequenceAsync(CancellationToken stop)
    {
        if (tenants.Count < 2)
        {
            await CancelUnaryAsync(0, stop);
            return;
        }
        using var client = new FlashMlaClient(settings.Address, settings.ClientOptions(Token(1), dataPlane: true));
        await Expect(async () => { using var r = await client.DecodeOnceAsync(Step(0), stop); });
    }

    private async Task UnknownTokenAsync(CancellationToken stop)
    {
        if (settings.Tokens[0] is null)
        {
            await DisconnectMidStreamAsync(0, dataPlane: true);
            return;
        }
        using var client = new FlashMlaClient(settings.Address, settings.ClientOptions("not-a-token-the-server-knows", dataPlane: true));
        await Expect(async () => { using var r = await client.DecodeOnceAsync(Step(0), stop); });
        await Expect(() => client.GetStatsAsync(stop));
    }

    /// <summary>Counts the call's outcome: ok, or its status code.</summary>
    private async Task Expect(Func<Task> call)
    {
        try
        {
            await call();
            abuse.Ok();
        }
        catch (Exception e)
        {
            abuse.Failed(e);
        }
    }
}
