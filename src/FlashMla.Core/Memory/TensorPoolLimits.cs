namespace FlashMla.Core.Memory;

/// <summary>
/// The three ceilings of <see cref="PinnedTensorPool"/>: tensor bytes held by requests and responses in flight
/// (rented and not yet returned), idle bytes kept for reuse, and bytes page-locked for a device. Each is a number of
/// bytes; <see cref="Unbounded"/> has none.
/// </summary>
public sealed record TensorPoolLimits
{
    public static readonly TensorPoolLimits Unbounded = new();

    /// <summary>
    /// Most bytes rented at once through <see cref="PinnedTensorPool.TryRent"/>: a rent that would take the pool's
    /// held bytes past this is refused. Plain <see cref="PinnedTensorPool.Rent"/> (a batch's outputs, which cannot be
    /// refused once its requests were admitted) always succeeds and counts toward the held bytes, so requests are
    /// refused while responses occupy the budget.
    /// </summary>
    public long HeldBytes { get; init; } = long.MaxValue;

    /// <summary>Most bytes of idle (returned) arrays kept for reuse; a returned array past this is let go.</summary>
    public long RetainedBytes { get; init; } = long.MaxValue;

    /// <summary>Most bytes page-locked by the attached registrar; arrays past this stay unregistered (the backend stages them).</summary>
    public long PageLockedBytes { get; init; } = long.MaxValue;
}

/// <summary>
/// A request's tensor bytes would take the server past its budget of bytes held (<see cref="TensorPoolLimits.HeldBytes"/>):
/// the request is refused before its bytes are received (RESOURCE_EXHAUSTED at the edge), and the client may retry later.
/// </summary>
public sealed class TensorBudgetExceededException(long requestedBytes, long heldBytes, long limitBytes)
    : Exception($"the server holds {heldBytes} bytes of request and response tensors; {requestedBytes} more would pass its budget of {limitBytes} bytes (try again later)")
{
    public long RequestedBytes { get; } = requestedBytes;
}
