namespace FlashMla.Server.Security.Tls;

/// <summary>
/// Reads the TLS files again every Tls:ReloadIntervalSeconds and logs what a change did. Polling rather than a
/// file watcher: a Kubernetes Secret volume rotates by swapping a symlink (..data), which inotify on the files
/// themselves does not report, and a compose bind mount may be edited in place; reading a few KiB every
/// few seconds sees both.
/// </summary>
public sealed class TlsReloadPoller(ServerTls tls, ILogger<TlsReloadPoller> logger) : BackgroundService
{
    /// <summary>A certificate this close to its end is logged as a warning (once per certificate), in time for a renewal.</summary>
    public static readonly TimeSpan ExpiryWarning = TimeSpan.FromDays(14);

    private TlsMaterial? _warnedAbout;

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        if (!tls.Enabled) return;
        WarnIfExpiring();
        if (tls.Options.ReloadIntervalSeconds <= 0) return;
        using var timer = new PeriodicTimer(TimeSpan.FromSeconds(tls.Options.ReloadIntervalSeconds));
        try
        {
            while (await timer.WaitForNextTickAsync(stoppingToken).ConfigureAwait(false))
            {
                TlsReload? reload;
                try
                {
                    reload = tls.Reload();
                }
                catch (Exception ex) when (ex is not OperationCanceledException)
                {
                    // A failure the loader did not foresee must not stop the host (a BackgroundService's exception does): log it, poll on.
                    logger.LogError(ex, "Reading the TLS files failed; still serving the certificate loaded before");
                    continue;
                }
                WarnIfExpiring();
                switch (reload)
                {
                    case { Swapped: true } done:
                        logger.LogInformation("TLS certificate reloaded from {File}: new handshakes on both ports use {Subject} (SHA-256 {Thumbprint}), valid until {NotAfter:u}",
                            tls.Options.CertificateFile, done.InUse.Certificate.Subject, done.InUse.Certificate.GetCertHashString(System.Security.Cryptography.HashAlgorithmName.SHA256),
                            done.InUse.Certificate.NotAfter.ToUniversalTime());
                        break;
                    case { Swapped: false } kept:
                        logger.LogWarning("TLS files changed but cannot be loaded ({Problem}); still serving {Subject}, valid until {NotAfter:u}",
                            kept.Problem, kept.InUse.Certificate.Subject, kept.InUse.Certificate.NotAfter.ToUniversalTime());
                        break;
                }
            }
        }
        catch (OperationCanceledException)
        {
            // Shutdown.
        }
    }

    private void WarnIfExpiring()
    {
        if (tls.Current is not { } material || ReferenceEquals(material, _warnedAbout)) return;
        var left = material.Certificate.NotAfter.ToUniversalTime() - DateTime.UtcNow;
        if (left >= ExpiryWarning) return;
        _warnedAbout = material;
        logger.LogWarning("The TLS certificate {Subject} from {File} {Expiry} ({NotAfter:u}): renew it; the server takes up the new files without a restart",
            material.Certificate.Subject, tls.Options.CertificateFile, left <= TimeSpan.Zero ? "has expired" : $"expires in {left.TotalDays:F1} days",
            material.Certificate.NotAfter.ToUniversalTime());
    }
}
