namespace FlashMla.Core.Cache;

/// <summary>Why a cache or decode request was refused. The server maps each to one gRPC status code.</summary>
public enum CacheError
{
    /// <summary>Malformed request: shapes, ranges, duplicates.</summary>
    InvalidArgument,
    /// <summary>Unknown sequence id.</summary>
    NotFound,
    /// <summary>Not enough free blocks.</summary>
    ResourceExhausted,
    /// <summary>The request is well formed but the state does not allow it.</summary>
    FailedPrecondition,
    /// <summary>The service is draining or its device is lost.</summary>
    Unavailable,
    /// <summary>The backend failed while running the request.</summary>
    Internal,
}

/// <summary>A refused request. Thrown before any state changed.</summary>
public sealed class CacheException(CacheError error, string message) : Exception(message)
{
    public CacheError Error { get; } = error;

    public static CacheException Invalid(string message) => new(CacheError.InvalidArgument, message);
    public static CacheException UnknownSequence(ulong id) => new(CacheError.NotFound, $"sequence {id} does not exist (never created, freed, or reclaimed after its lease ran out)");
}
