using System.Buffers;
using FlashMla.Core.Backends;
using FlashMla.Core.Cache;
using FlashMla.Core.Memory;

namespace FlashMla.Core.Scheduling;

/// <summary>
/// KV ingest chunks started on the backend (<see cref="IAttentionBackend.SubmitWriteKv"/>, or
/// <see cref="IAttentionBackend.SubmitWriteStoredKv"/> for rows in the stored format) and not yet complete. A
/// chunk reserves its blocks and commits the layer's new length when it starts, like a decode step; its sequence
/// stays busy (<see cref="SequenceActivity"/>) until the write completes, so no decode reads those rows and no command
/// changes the sequence before then, and a failed write rolls back exactly. Chunks of other sequences, and decodes
/// of other sequences, run beside it. Loop only.
/// </summary>
internal sealed class KvAppendsInFlight(PagedKvCache cache, IAttentionBackend backend, int maxInFlight, SequenceActivity activity)
{
    private readonly Queue<Entry> _inFlight = new();
    private readonly Dictionary<ulong, int> _appending = [];

    public int Count => _inFlight.Count;
    public bool HasFreeSlot => _inFlight.Count < maxInFlight;

    /// <summary>Completes when the oldest write in flight does; null when none is.</summary>
    public Task? OldestCompletion => _inFlight.Count > 0 ? _inFlight.Peek().Submission.Completion : null;

    /// <summary>Raised when the backend reports a fault that leaves the device unusable.</summary>
    public event Action<BackendFaultException>? StickyFault;

    /// <summary>True when a write to one of <paramref name="ids"/> is in flight (a decode of them must wait).</summary>
    public bool TouchesAny(ulong[] ids)
    {
        if (_appending.Count == 0) return false;
        foreach (ulong id in ids)
            if (_appending.ContainsKey(id)) return true;
        return false;
    }

    /// <summary>Reserves, starts the write and commits the length; a refusal fails the chunk alone and changes nothing.</summary>
    public void Start(KvAppendWork work)
    {
        if (!work.TryStart()) return;
        int[]? slots = null;
        try
        {
            int count = work.Stored ? cache.CheckStoredRows(work.Layer, work.Rows.Length)
                : cache.CheckRows(work.Layer, work.Rows.Length / sizeof(ushort));
            slots = ArrayPool<int>.Shared.Rent(count);
            var (sequence, oldBlocks) = cache.ReserveAppend(work.SequenceId, work.Layer, count, slots, work.Tenant);
            DecodeSubmission submission;
            try
            {
                submission = work.Stored
                    ? backend.SubmitWriteStoredKv(work.Layer, slots.AsSpan(0, count), work.Rows)
                    : backend.SubmitWriteKv(work.Layer, slots.AsSpan(0, count), MemoryCast.Cast<byte, ushort>(work.Rows));
            }
            catch
            {
                cache.ReleaseBeyond(sequence, oldBlocks);
                throw;
            }
            sequence.LayerLengths[work.Layer] += count;
            activity.Enter(work.SequenceId);
            _appending.TryGetValue(work.SequenceId, out int n);
            _appending[work.SequenceId] = n + 1;
            _inFlight.Enqueue(new Entry(work, sequence, count, oldBlocks, submission));
        }
        catch (Exception ex)
        {
            work.Fail(ErrorOf(ex));
            if (ex is BackendFaultException { IsSticky: true } sticky) StickyFault?.Invoke(sticky);
        }
        finally
        {
            if (slots is not null) ArrayPool<int>.Shared.Return(slots);
        }
        RetireCompleted(); // a synchronous backend has written them already
    }

    /// <summary>Delivers every write at the head of the queue that has completed; never blocks.</summary>
    public void RetireCompleted()
    {
        while (_inFlight.Count > 0 && _inFlight.Peek().Submission.IsComplete) Retire(_inFlight.Dequeue());
    }

    /// <summary>Waits for every write in flight (at drain).</summary>
    public void RetireAll()
    {
        while (_inFlight.Count > 0) Retire(_inFlight.Dequeue());
    }

    private void Retire(Entry entry)
    {
        var (work, sequence, count, oldBlocks, submission) = entry;
        try
        {
            submission.Wait();
            work.Complete(count);
        }
        catch (Exception ex)
        {
            // Nothing else touched the sequence while the write was in flight: undo exactly what it did.
            sequence.LayerLengths[work.Layer] -= count;
            cache.ReleaseBeyond(sequence, oldBlocks);
            work.Fail(ErrorOf(ex));
            if (ex is BackendFaultException { IsSticky: true } sticky) StickyFault?.Invoke(sticky);
        }
        activity.Leave(work.SequenceId);
        if (_appending[work.SequenceId] <= 1) _appending.Remove(work.SequenceId);
        else _appending[work.SequenceId]--;
    }

    private static Exception ErrorOf(Exception ex) => ex switch
    {
        CacheException => ex,
        BackendFaultException fault => new CacheException(fault.IsSticky ? CacheError.Unavailable : CacheError.Internal,
            "the attention backend failed: " + fault.Message),
        _ => new CacheException(CacheError.Internal, "the attention backend failed: " + ex.Message),
    };

    private readonly record struct Entry(KvAppendWork Work, Sequence Sequence, int Count, int OldBlocks, DecodeSubmission Submission);
}
