using System.Buffers;
using System.Diagnostics;
using System.Threading.Channels;
using FlashMla.Core.Backends;
using FlashMla.Core.Cache;
using FlashMla.Core.Telemetry;

namespace FlashMla.Core.Scheduling;

/// <summary>
/// The one owner of the cache, the allocator and the backend. RPC handlers post commands into a bounded
/// channel and await their completion; a single loop runs them in arrival order. Up to
/// <see cref="SchedulerOptions.MaxDecodeBatchesInFlight"/> decode calls run on the backend at once while the loop
/// goes on (<see cref="DecodeBatchExecutor"/>). Batching is continuous: a decode request that finds a slot free
/// starts at once (with whatever was queued alongside it, merged by layer and shape in <see cref="DecodeBatcher"/>);
/// requests that arrive while every slot is busy merge into the next call, which starts as soon as a slot frees
/// or the call is full. A non-zero <see cref="SchedulerOptions.BatchWindow"/> instead holds each batch that long. Any cache command flushes pending
/// decodes and waits for those in flight first, so every client sees its own requests in order.
/// </summary>
public sealed class Scheduler : IAsyncDisposable
{
    private readonly Channel<object> _inbox;
    private readonly PagedKvCache _cache;
    private readonly IAttentionBackend _backend;
    private readonly FlashMlaMetrics _metrics;
    private readonly DecodeBatcher _batcher;
    private readonly DecodeBatchExecutor _executor;
    private readonly Task _loop;
    private readonly Timer? _leaseTimer;
    private volatile bool _serving = true;
    private volatile string? _faultReason;

    /// <param name="tensorBuffers">Where the outputs of decode batches are rented (the host's one pool of tensor-sized
    /// arrays, which a device backend page-locks so it copies outputs straight into them).</param>
    public Scheduler(IAttentionBackend backend, CacheLimits limits, SchedulerOptions options, FlashMlaMetrics metrics,
        ArrayPool<byte> tensorBuffers)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxDecodeBatchesInFlight, 1, nameof(options));
        ArgumentNullException.ThrowIfNull(tensorBuffers);
        // What the backend can run bounds what the edge accepts (DecodeShape checks against these options).
        Options = options with { MaxQueryRowsPerSequence = Math.Min(options.MaxQueryRowsPerSequence, backend.MaxQueryRowsPerSequence) };
        _backend = backend;
        _metrics = metrics;
        _cache = new PagedKvCache(backend, limits);
        _executor = new DecodeBatchExecutor(_cache, backend, metrics, tensorBuffers, options.MaxDecodeBatchesInFlight);
        _executor.StickyFault += OnStickyFault;
        _batcher = new DecodeBatcher(options, _executor);
        _inbox = Channel.CreateBounded<object>(new BoundedChannelOptions(options.QueueCapacity)
        {
            SingleReader = true,
            FullMode = BoundedChannelFullMode.Wait,
        });
        PublishGauges();
        _loop = Task.Run(RunLoopAsync);
        if (options.SequenceLease > TimeSpan.Zero)
            _leaseTimer = new Timer(_ => _inbox.Writer.TryWrite(LeaseTick.Instance), null, options.LeaseCheckInterval, options.LeaseCheckInterval);
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

    /// <summary>Runs <paramref name="operation"/> on the loop, after every command posted before it.</summary>
    public async Task<T> RunAsync<T>(Func<PagedKvCache, T> operation, CancellationToken cancellationToken = default)
    {
        var command = new CacheCommand<T>(operation, OnStickyFault);
        await PostAsync(command, cancellationToken).ConfigureAwait(false);
        return await command.Completion.ConfigureAwait(false);
    }

    /// <summary>Queues a decode request; the result comes when its batch has run.</summary>
    public async Task<DecodeResult> DecodeAsync(DecodeWork work, CancellationToken cancellationToken = default)
    {
        work.Tenant ??= _cache.DefaultTenant;
        await PostAsync(work, cancellationToken).ConfigureAwait(false);
        return await work.Completion.ConfigureAwait(false);
    }

    /// <summary>
    /// Counters and occupancy, read on the loop: the whole cache's for an admin tenant (and when none is named),
    /// <paramref name="tenant"/>'s own otherwise (<see cref="SchedulerStats.Of"/>).
    /// </summary>
    public Task<SchedulerStats> GetStatsAsync(Tenant? tenant = null, CancellationToken cancellationToken = default) =>
        RunAsync(cache => tenant is null || tenant.IsAdmin
            ? new SchedulerStats(cache.Allocator.TotalBlocks, cache.Allocator.FreeBlocks, cache.Allocator.UsedBlocks, cache.SequenceCount,
                cache.Reclaimed, _executor.Requests, _executor.Batches, cache.RejectedNoSpace)
            : SchedulerStats.Of(tenant, cache.Allocator), cancellationToken);

    /// <summary>Stops taking new work (UNAVAILABLE from then on), finishes what is queued, and returns.</summary>
    public async Task DrainAsync()
    {
        _serving = false;
        PublishGauges();
        _inbox.Writer.TryComplete();
        await _loop.ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        if (_leaseTimer is not null) await _leaseTimer.DisposeAsync().ConfigureAwait(false);
        await DrainAsync().ConfigureAwait(false);
    }

    private async ValueTask PostAsync(object command, CancellationToken cancellationToken)
    {
        if (_faultReason is { } reason)
            throw new CacheException(CacheError.Unavailable, "the service stopped serving after a device fault: " + reason);
        try
        {
            await _inbox.Writer.WriteAsync(command, cancellationToken).ConfigureAwait(false);
        }
        catch (ChannelClosedException)
        {
            throw new CacheException(CacheError.Unavailable, "the service is shutting down and takes no new requests");
        }
    }

    private async Task RunLoopAsync()
    {
        var reader = _inbox.Reader;
        Task<bool>? waitingForWork = null;
        while (true)
        {
            _executor.RetireCompleted();
            NotifyIfStopped();
            // Take whatever is queued already, so requests that arrived together share a batch.
            while (!_batcher.IsFull && reader.TryRead(out var command)) Dispatch(command);
            if (_batcher.HasPending)
            {
                if (Options.BatchWindow > TimeSpan.Zero) HoldForCompany(reader);
                if (_batcher.IsFull || Options.BatchWindow > TimeSpan.Zero)
                {
                    // A full batch, or a window that has run out: start now, waiting for a slot if none is free.
                    _batcher.FlushAll();
                    continue;
                }
                // Continuous batching: start what the free slots take; the rest waits for a slot and merges
                // with what arrives meanwhile.
                while (_batcher.HasPending && _executor.HasFreeSlot) _batcher.FlushOldest();
                if (_batcher.HasPending) _executor.RetireCompleted();
                if (_batcher.HasPending && _executor.HasFreeSlot) continue;
            }
            PublishGauges();
            waitingForWork ??= reader.WaitToReadAsync().AsTask();
            if (!waitingForWork.IsCompleted && _executor.OldestCompletion is { } oldest)
            {
                // Wake for whichever comes first: new work, or the oldest batch in flight finishing (which
                // frees a slot for what is pending).
                await Task.WhenAny(waitingForWork, oldest).ConfigureAwait(false);
                continue;
            }
            bool more = await waitingForWork.ConfigureAwait(false);
            waitingForWork = null;
            if (!more) break;
        }
        // Draining: what is queued has been dispatched; run the last batches and wait for all in flight.
        _batcher.FlushAll();
        _executor.RetireAll();
        NotifyIfStopped();
        PublishGauges();
    }

    /// <summary>
    /// A fixed window (<see cref="SchedulerOptions.BatchWindow"/> above zero): holds the pending batch open that
    /// long for company, even with a slot free, taking whatever arrives meanwhile, until it is full.
    /// </summary>
    private void HoldForCompany(ChannelReader<object> reader)
    {
        long deadline = Stopwatch.GetTimestamp() + (long)(Options.BatchWindow.TotalSeconds * Stopwatch.Frequency);
        var spinner = new SpinWait();
        while (_batcher.HasPending && !_batcher.IsFull && Stopwatch.GetTimestamp() < deadline)
        {
            if (reader.TryRead(out var more)) Dispatch(more);
            else
            {
                _executor.RetireCompleted();
                spinner.SpinOnce(sleep1Threshold: -1);
            }
        }
    }

    private void Dispatch(object command)
    {
        switch (command)
        {
            case DecodeWork work:
                _batcher.Add(work);
                break;
            case ICacheCommand cacheCommand:
                // The cache command sees every decode queued before it, finished: nothing is in flight
                // while the cache changes by other means, which keeps a rollback of in-flight batches exact.
                _batcher.FlushAll();
                _executor.RetireAll();
                cacheCommand.Execute(_cache);
                break;
            case LeaseTick:
                _batcher.FlushAll();
                _executor.RetireAll();
                int reclaimed = _cache.ReclaimIdle(Stopwatch.GetTimestamp(), (long)(Options.SequenceLease.TotalSeconds * Stopwatch.Frequency));
                if (reclaimed > 0) _metrics.SequencesReclaimed.Add(reclaimed);
                break;
        }
        NotifyIfStopped();
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

    private interface ICacheCommand
    {
        void Execute(PagedKvCache cache);
    }

    private sealed class CacheCommand<T>(Func<PagedKvCache, T> operation, Action<BackendFaultException> onStickyFault) : ICacheCommand
    {
        private readonly TaskCompletionSource<T> _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public Task<T> Completion => _completion.Task;

        public void Execute(PagedKvCache cache)
        {
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
