using System.Buffers;
using System.Diagnostics;
using System.Threading.Channels;
using FlashMla.Core.Backends;
using FlashMla.Core.Cache;
using FlashMla.Core.Telemetry;

namespace FlashMla.Core.Scheduling;

/// <summary>
/// The one owner of the cache, the allocator and the backend. RPC handlers post commands and await their
/// completion; a single loop runs them. Cache commands and decode requests come in through separate bounded
/// channels, so a cache command never queues behind decodes. Up to <see cref="SchedulerOptions.MaxDecodeBatchesInFlight"/>
/// decode calls run on the backend at once while the loop goes on (<see cref="DecodeBatchExecutor"/>); the loop
/// itself never waits for one. Batching is continuous: a decode request that finds a slot free starts at once
/// (with whatever was queued alongside it, merged by layer and shape in <see cref="DecodeBatcher"/>); requests that
/// arrive while every slot is busy merge into the next call, which starts as soon as a slot frees. A non-zero
/// <see cref="SchedulerOptions.BatchWindow"/> instead holds each batch that long.
/// <para>
/// Order: a cache command is ordered only against the work that touches what it touches (<see cref="CacheAccess"/>):
/// one on a sequence with decodes queued or in flight waits for them (and later decodes of that sequence wait for
/// it, <see cref="DeferredWork"/>), one on any other sequence, or on metadata (stats, create), runs at once, between
/// batches or while one computes. So a long decode stalls only the callers of its own sequences, and the cache
/// state an in-flight batch reads (its sequences' blocks and lengths) does not change under it. A request cancelled
/// before the loop started it fails at once and is never computed.
/// </para>
/// </summary>
public sealed class Scheduler : IAsyncDisposable
{
    private readonly Channel<object> _control;
    private readonly Channel<DecodeWork> _decodes;
    private readonly PagedKvCache _cache;
    private readonly IAttentionBackend _backend;
    private readonly FlashMlaMetrics _metrics;
    private readonly SequenceActivity _activity = new();
    private readonly DeferredWork _deferred = new();
    private readonly DecodeBatcher _batcher;
    private readonly DecodeBatchExecutor _executor;
    private readonly KvAppendsInFlight _appends;
    private readonly Action<IReadOnlyList<DecodeWork>> _runBatch;
    private readonly Func<object, bool> _tryRunDeferred;
    private readonly Task _loop;
    private readonly Timer? _leaseTimer;
    private volatile bool _serving = true;
    private bool _forceDeferred;
    private volatile string? _faultReason;

    /// <param name="tensorBuffers">Where the outputs of decode batches are rented (the host's one pool of tensor-sized
    /// arrays, which a device backend page-locks so it copies outputs straight into them).</param>
    public Scheduler(IAttentionBackend backend, CacheLimits limits, SchedulerOptions options, FlashMlaMetrics metrics,
        ArrayPool<byte> tensorBuffers)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxDecodeBatchesInFlight, 1, nameof(options));
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxKvTokensPerCall, 1, nameof(options));
        ArgumentNullException.ThrowIfNull(tensorBuffers);
        // What the backend can run bounds what the edge accepts (DecodeShape checks against these options).
        Options = options with { MaxQueryRowsPerSequence = Math.Min(options.MaxQueryRowsPerSequence, backend.MaxQueryRowsPerSequence) };
        _backend = backend;
        _metrics = metrics;
        _cache = new PagedKvCache(backend, limits);
        _executor = new DecodeBatchExecutor(_cache, backend, metrics, tensorBuffers, options.MaxDecodeBatchesInFlight,
            options.MaxKvTokensPerCall, _activity);
        _executor.StickyFault += OnStickyFault;
        _appends = new KvAppendsInFlight(_cache, backend, Math.Max(1, options.MaxAppendsInFlight), _activity);
        _appends.StickyFault += OnStickyFault;
        _batcher = new DecodeBatcher(Options);
        _runBatch = _executor.Run;
        _tryRunDeferred = TryRunDeferred;
        var bounded = new BoundedChannelOptions(options.QueueCapacity) { SingleReader = true, FullMode = BoundedChannelFullMode.Wait };
        _control = Channel.CreateBounded<object>(bounded);
        _decodes = Channel.CreateBounded<DecodeWork>(bounded);
        PublishGauges();
        _loop = Task.Run(RunLoopAsync);
        if (options.SequenceLease > TimeSpan.Zero)
            _leaseTimer = new Timer(_ => _control.Writer.TryWrite(LeaseTick.Instance), null, options.LeaseCheckInterval, options.LeaseCheckInterval);
    }

    /// <summary>The options given, with <see cref="SchedulerOptions.MaxQueryRowsPerSequence"/> lowered to what the backend runs.</summary>
    public SchedulerOptions Options { get; }
    public CacheLimits Limits => _cache.Limits;
    public KvPoolGeometry Geometry => _backend.Geometry;
    public string BackendName => _backend.Name;
    public string DeviceDescription => _backend.DeviceDescription;

    /// <summary>False once draining started or the device was lost; the health service reports it.</summary>
    public bool IsServing => _serving;

    /// <summary>Why the service stopped serving because of the device, if it did.</summary>
    public string? FaultReason => _faultReason;

    /// <summary>Raised (on the loop) when serving stops because of a device fault.</summary>
    public event Action<string>? ServingStopped;

    /// <summary>
    /// Runs <paramref name="operation"/> on the loop as a barrier: after every decode the loop holds (queued or in
    /// flight), before every decode it takes later. For commands that say what they touch, use the overload with a
    /// <see cref="CacheAccess"/>: they do not wait for unrelated work.
    /// </summary>
    public Task<T> RunAsync<T>(Func<PagedKvCache, T> operation, CancellationToken cancellationToken = default) =>
        RunAsync(CacheAccess.Everything, operation, cancellationToken);

    /// <summary>
    /// Runs <paramref name="operation"/> on the loop, ordered only against work that touches <paramref name="access"/>.
    /// Cancelled before it ran, it never runs and throws <see cref="OperationCanceledException"/> at once.
    /// </summary>
    public async Task<T> RunAsync<T>(CacheAccess access, Func<PagedKvCache, T> operation, CancellationToken cancellationToken = default)
    {
        var command = new CacheCommand<T>(access, operation, OnStickyFault);
        await PostAsync(_control.Writer, command, cancellationToken).ConfigureAwait(false);
        using var cancel = cancellationToken.CanBeCanceled
            ? cancellationToken.Register(static state => ((ICacheCommand)state!).Cancel(), command)
            : default;
        return await command.Completion.ConfigureAwait(false);
    }

    /// <summary>
    /// Queues a decode request; the result comes when its batch has run. Cancelled before its batch started, it
    /// is taken out (never computed) and throws <see cref="OperationCanceledException"/> at once; once started, it
    /// runs to its end (its buffers are in use), bounded by <see cref="SchedulerOptions.MaxKvTokensPerCall"/>.
    /// </summary>
    public async Task<DecodeResult> DecodeAsync(DecodeWork work, CancellationToken cancellationToken = default)
    {
        work.Tenant ??= _cache.DefaultTenant;
        await PostAsync(_decodes.Writer, work, cancellationToken).ConfigureAwait(false);
        using var cancel = cancellationToken.CanBeCanceled
            ? cancellationToken.Register(static state => ((DecodeWork)state!).Cancel(CancellationToken.None), work)
            : default;
        return await work.Completion.ConfigureAwait(false);
    }

    /// <summary>
    /// Appends one chunk of KV rows; returns the rows appended once they are in the pool. Ordered only against work on
    /// the chunk's sequence: decodes of other sequences go on while its rows are written (on the backend's own queues).
    /// Until this returns or throws, the chunk's bytes must stay unchanged. Cancelled before it started, it never runs.
    /// The chunk's tenant must own the sequence (another's is not found), and new blocks count against its quota.
    /// </summary>
    public async Task<int> AppendAsync(KvAppendWork work, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(work);
        work.Tenant ??= _cache.DefaultTenant;
        await PostAsync(_control.Writer, (object)work, cancellationToken).ConfigureAwait(false);
        using var cancel = cancellationToken.CanBeCanceled
            ? cancellationToken.Register(static state => ((KvAppendWork)state!).Cancel(), work)
            : default;
        return await work.Completion.ConfigureAwait(false);
    }

    /// <summary>
    /// Counters and occupancy, read on the loop (never waits for a decode): the whole cache's for an admin tenant (and
    /// when none is named), <paramref name="tenant"/>'s own otherwise (<see cref="SchedulerStats.Of"/>).
    /// </summary>
    public Task<SchedulerStats> GetStatsAsync(Tenant? tenant = null, CancellationToken cancellationToken = default) =>
        RunAsync(CacheAccess.Metadata, cache => tenant is null || tenant.IsAdmin
            ? new SchedulerStats(cache.Allocator.TotalBlocks, cache.Allocator.FreeBlocks, cache.Allocator.UsedBlocks, cache.SequenceCount,
                cache.Reclaimed, _executor.Requests, _executor.Batches, cache.RejectedNoSpace)
            : SchedulerStats.Of(tenant, cache.Allocator), cancellationToken);

    /// <summary>Stops taking new work (UNAVAILABLE from then on), finishes what is queued, and returns.</summary>
    public async Task DrainAsync()
    {
        _serving = false;
        PublishGauges();
        _control.Writer.TryComplete();
        _decodes.Writer.TryComplete();
        await _loop.ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        if (_leaseTimer is not null) await _leaseTimer.DisposeAsync().ConfigureAwait(false);
        await DrainAsync().ConfigureAwait(false);
    }

    private async ValueTask PostAsync<TItem>(ChannelWriter<TItem> writer, TItem command, CancellationToken cancellationToken)
    {
        if (_faultReason is { } reason)
            throw new CacheException(CacheError.Unavailable, "the service stopped serving after a device fault: " + reason);
        try
        {
            await writer.WriteAsync(command, cancellationToken).ConfigureAwait(false);
        }
        catch (ChannelClosedException)
        {
            throw new CacheException(CacheError.Unavailable, "the service is shutting down and takes no new requests");
        }
    }

    /// <summary>True while the loop takes more decodes in: what it holds (batcher, held back) stays bounded.</summary>
    private bool RoomForDecodes => !_batcher.IsFull && _deferred.Decodes < Options.QueueCapacity;

    private async Task RunLoopAsync()
    {
        Task<bool>? controlWait = null, decodeWait = null;
        bool controlOpen = true, decodesOpen = true;
        while (controlOpen || decodesOpen)
        {
            Retire();
            // Cache commands first: they never wait behind decodes in a queue.
            while (_control.Reader.TryRead(out var command)) DispatchCommand(command);
            // Take whatever decodes are queued already, so requests that arrived together share a batch.
            while (RoomForDecodes && _decodes.Reader.TryRead(out var work)) DispatchDecode(work);
            if (_batcher.HasPending && _executor.HasFreeSlot)
            {
                if (Options.BatchWindow > TimeSpan.Zero) HoldForCompany();
                // Start what the free slots take; the rest waits for a slot and merges with what arrives meanwhile.
                while (_batcher.HasPending && _executor.HasFreeSlot) _batcher.RunOldest(_runBatch);
                continue;
            }
            PublishGauges();
            if (controlOpen) controlWait ??= _control.Reader.WaitToReadAsync().AsTask();
            bool wantDecodes = decodesOpen && RoomForDecodes;
            if (wantDecodes) decodeWait ??= _decodes.Reader.WaitToReadAsync().AsTask();
            if (!(controlWait?.IsCompleted ?? false) && !(wantDecodes && decodeWait!.IsCompleted))
            {
                // Wake for whichever comes first: a command, a decode (when there is room for it), the oldest batch in
                // flight finishing (which frees a slot and may release held-back commands), or the oldest KV write.
                await Task.WhenAny(Waits(controlWait, wantDecodes ? decodeWait : null, _executor.OldestCompletion, _appends.OldestCompletion))
                    .ConfigureAwait(false);
            }
            if (controlWait is { IsCompleted: true })
            {
                controlOpen = await controlWait.ConfigureAwait(false);
                controlWait = null;
            }
            if (decodeWait is { IsCompleted: true })
            {
                decodesOpen = await decodeWait.ConfigureAwait(false);
                decodeWait = null;
            }
        }
        // Draining: both channels are closed and empty; run what the loop still holds and wait for all in flight.
        while (true)
        {
            Retire();
            if (_batcher.HasPending) _batcher.RunOldest(_runBatch); // waits for a slot: nothing else is left to serve
            else if (_executor.InFlight > 0) _executor.RetireAll();
            else if (_appends.Count > 0) _appends.RetireAll();
            else if (_deferred.Count > 0)
            {
                // Nothing is unfinished, so nothing can hold these back any more.
                _forceDeferred = true;
                _deferred.Release(_tryRunDeferred, force: true);
            }
            else break;
        }
        NotifyIfStopped();
        PublishGauges();
    }

    private static Task[] Waits(params Task?[] waits)
    {
        int n = 0;
        foreach (var wait in waits) if (wait is not null) n++;
        var tasks = new Task[n];
        n = 0;
        foreach (var wait in waits) if (wait is not null) tasks[n++] = wait;
        return tasks;
    }

    /// <summary>Delivers finished batches, then lets go whatever held-back work they were holding up.</summary>
    private void Retire()
    {
        _executor.RetireCompleted();
        _appends.RetireCompleted();
        _deferred.Release(_tryRunDeferred);
        NotifyIfStopped();
    }

    /// <summary>
    /// A fixed window (<see cref="SchedulerOptions.BatchWindow"/> above zero): holds the pending batch open until its
    /// oldest request has waited that long, even with a slot free, taking whatever arrives meanwhile, until it is full.
    /// </summary>
    private void HoldForCompany()
    {
        long deadline = _batcher.OldestArrival + (long)(Options.BatchWindow.TotalSeconds * Stopwatch.Frequency);
        var spinner = new SpinWait();
        while (_batcher.HasPending && !_batcher.IsFull && Stopwatch.GetTimestamp() < deadline)
        {
            bool took = false;
            if (_control.Reader.TryRead(out var command))
            {
                DispatchCommand(command);
                took = true;
            }
            if (RoomForDecodes && _decodes.Reader.TryRead(out var work))
            {
                DispatchDecode(work);
                took = true;
            }
            if (!took)
            {
                Retire();
                spinner.SpinOnce(sleep1Threshold: -1);
            }
        }
    }

    private void DispatchCommand(object command)
    {
        switch (command)
        {
            case ICacheCommand cacheCommand:
                if (cacheCommand.IsCancelled) break;
                if (!cacheCommand.Access.IsMetadata && (_deferred.MustPrecede(cacheCommand.Access) || IsBusy(cacheCommand.Access)))
                    _deferred.Add(cacheCommand);
                else cacheCommand.Execute(_cache);
                break;
            case KvAppendWork append:
                if (append.IsCancelled) break;
                if (_deferred.MustPrecede(append.Access) || IsBusy(append.Access) || !_appends.HasFreeSlot) _deferred.Add(append);
                else _appends.Start(append);
                break;
            case LeaseTick:
                // Only sequences nothing is working on: a decode in flight keeps its sequences' blocks in use.
                int reclaimed = _cache.ReclaimIdle(Stopwatch.GetTimestamp(), (long)(Options.SequenceLease.TotalSeconds * Stopwatch.Frequency),
                    id => _activity.IsBusy(id) || _deferred.MustPrecede(CacheAccess.Sequence(id)));
                if (reclaimed > 0) _metrics.SequencesReclaimed.Add(reclaimed);
                break;
        }
        NotifyIfStopped();
    }

    private void DispatchDecode(DecodeWork work)
    {
        if (work.IsCancelled) return;
        // A decode never reads rows still being written: it waits behind a KV write in flight on its sequences.
        if (_deferred.MustPrecede(work.SequenceIds) || _appends.TouchesAny(work.SequenceIds)) _deferred.Add(work);
        else Admit(work);
    }

    /// <summary>Into the batcher, unless its KV alone passes what one backend call may attend over.</summary>
    private void Admit(DecodeWork work)
    {
        long kvTokens = KvTokensOf(work);
        if (kvTokens > Options.MaxKvTokensPerCall)
        {
            if (work.TryStart()) work.Fail(DecodeBatchExecutor.KvTokensRefusal(kvTokens, Options.MaxKvTokensPerCall));
            return;
        }
        _activity.Enter(work.SequenceIds);
        _batcher.Add(work, kvTokens);
    }

    /// <summary>The KV positions a request attends over, as the cache stands (unknown sequences, and other tenants', count 0: the batch refuses them).</summary>
    private long KvTokensOf(DecodeWork work)
    {
        if ((uint)work.Layer >= (uint)_cache.NumLayers) return 0;
        long total = 0;
        foreach (ulong id in work.SequenceIds)
        {
            try
            {
                total += _cache.Get(id, work.Tenant).Lengths[work.Layer];
            }
            catch (CacheException)
            {
                continue;
            }
            if (work.HasNewKv) total += work.QueryTokens;
        }
        return total;
    }

    private bool IsBusy(CacheAccess access) =>
        access.IsEverything ? _activity.Count > 0 || _batcher.HasPending || _executor.InFlight > 0
        : access.IsSequence && _activity.IsBusy(access.SequenceId);

    private bool TryRunDeferred(object item)
    {
        switch (item)
        {
            case DecodeWork work:
                if (work.IsCancelled) return true;
                if (_appends.TouchesAny(work.SequenceIds)) return false;
                Admit(work);
                return true;
            case KvAppendWork append:
                if (append.IsCancelled) return true;
                if ((IsBusy(append.Access) || !_appends.HasFreeSlot) && !_forceDeferred) return false;
                _appends.Start(append);
                return true;
            case ICacheCommand command:
                if (command.IsCancelled) return true;
                if (IsBusy(command.Access) && !_forceDeferred) return false;
                command.Execute(_cache);
                return true;
            default:
                return true;
        }
    }

    private void NotifyIfStopped()
    {
        if (!_serving && _faultReason is not null && ServingStopped is { } handler)
        {
            ServingStopped = null;
            handler(_faultReason);
        }
    }

    /// <summary>The device is lost: stop serving (health NOT_SERVING, new work UNAVAILABLE).</summary>
    private void OnStickyFault(BackendFaultException fault)
    {
        _faultReason = fault.Message;
        _serving = false;
    }

    private void PublishGauges() => _metrics.PublishCache(new CacheGaugeSnapshot(
        _cache.Allocator.TotalBlocks, _cache.Allocator.FreeBlocks, _cache.SequenceCount, _serving));

    private interface ICacheCommand : IDeferrableCommand
    {
        bool IsCancelled { get; }
        void Cancel();
        void Execute(PagedKvCache cache);
    }

    private sealed class CacheCommand<T>(CacheAccess access, Func<PagedKvCache, T> operation, Action<BackendFaultException> onStickyFault)
        : ICacheCommand
    {
        private readonly TaskCompletionSource<T> _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private StartGate _gate;

        public Task<T> Completion => _completion.Task;
        public CacheAccess Access => access;
        public bool IsCancelled => _gate.IsCancelled;

        public void Cancel()
        {
            if (_gate.TryCancel()) _completion.TrySetCanceled();
        }

        public void Execute(PagedKvCache cache)
        {
            if (!_gate.TryStart()) return;
            try
            {
                _completion.TrySetResult(operation(cache));
            }
            catch (BackendFaultException fault)
            {
                if (fault.IsSticky) onStickyFault(fault);
                _completion.TrySetException(new CacheException(fault.IsSticky ? CacheError.Unavailable : CacheError.Internal,
                    "the attention backend failed: " + fault.Message));
            }
            catch (Exception ex)
            {
                _completion.TrySetException(ex);
            }
        }
    }

    private sealed class LeaseTick
    {
        public static readonly LeaseTick Instance = new();
    }
}

/// <summary>Cache occupancy and decode counters.</summary>
public sealed record SchedulerStats(int TotalBlocks, int FreeBlocks, int UsedBlocks, int Sequences, long ReclaimedSequences,
    long DecodeRequests, long DecodeBatches, long RejectedNoSpace)
{
    /// <summary>
    /// One tenant's view: the blocks it may hold (its quota, at most the cache's), those it may still take (what its
    /// quota leaves, at most what is free), those it holds, and its own sequences and counters.
    /// </summary>
    internal static SchedulerStats Of(Tenant tenant, BlockAllocator allocator)
    {
        int total = Math.Min(tenant.Quota.MaxBlocks ?? int.MaxValue, allocator.TotalBlocks);
        int free = Math.Clamp(Math.Min(total - tenant.BlocksHeld, allocator.FreeBlocks), 0, total);
        return new SchedulerStats(total, free, tenant.BlocksHeld, tenant.Sequences, tenant.ReclaimedSequences,
            tenant.DecodeRequests, tenant.DecodeBatches, tenant.RejectedNoSpace);
    }
}
