using System.Security.Cryptography;

namespace FlashMla.Server.Security;

/// <summary>
/// Reads the token file again every <c>interval</c> and, when its bytes changed, applies it: new tokens work on the
/// next call, removed ones fail on the next call (and on the next request of a stream opened with them). Polling
/// rather than file-change events: a Kubernetes Secret volume changes by swapping a symbolic link, which change
/// notifications on the file itself do not see. A file that no longer reads or parses keeps the tokens in force
/// (logged once per bad version).
/// </summary>
internal sealed class TokenFileReloader(string path, byte[] loadedHash, TimeSpan interval, TenantDirectory tenants, ILogger<TokenFileReloader> logger)
    : BackgroundService
{
    private byte[] _appliedHash = loadedHash;
    private byte[]? _refusedHash;

    public static byte[] HashOf(ReadOnlySpan<byte> content) => SHA256.HashData(content);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(interval);
        try
        {
            while (await timer.WaitForNextTickAsync(stoppingToken).ConfigureAwait(false)) ReloadIfChanged();
        }
        catch (OperationCanceledException)
        {
        }
    }

    /// <summary>One look at the file; true when it applied a new version.</summary>
    public bool ReloadIfChanged()
    {
        byte[] content;
        try
        {
            content = File.ReadAllBytes(path);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            // Mid-swap reads may miss the file for a moment; a file gone for good is logged once.
            if (_refusedHash is not [])
            {
                logger.LogError("Token file {Path} cannot be read ({Reason}); the tokens loaded before stay in force", path, ex.Message);
                _refusedHash = [];
            }
            return false;
        }
        var hash = HashOf(content);
        if (hash.AsSpan().SequenceEqual(_appliedHash) || (_refusedHash is not null && hash.AsSpan().SequenceEqual(_refusedHash))) return false;
        try
        {
            var file = TokenFile.Parse(content, path);
            tenants.Apply(file);
            _appliedHash = hash;
            _refusedHash = null;
            logger.LogInformation("Token file {Path} reloaded: {Tenants} tenants, {Tokens} tokens, {CertificateNames} certificate names", path,
                file.Tenants.Count, tenants.TokenCount, tenants.CertificateNameCount);
            return true;
        }
        catch (InvalidDataException ex)
        {
            _refusedHash = hash;
            logger.LogError("Token file {Path} changed but is not valid, the tokens loaded before stay in force: {Reason}", path, ex.Message);
            return false;
        }
    }
}
