using System.Net;
using FlashMla.Contracts.V1;
using FlashMla.Core.Memory;
using FlashMla.Core.Scheduling;
using FlashMla.Core.Telemetry;
using FlashMla.Core.Tensors;
using FlashMla.Server.Security;
using FlashMla.Server.Security.Tls;
using FlashMla.Server.Services;
using Grpc.AspNetCore.Server.Model;
using Grpc.Health.V1;
using Grpc.Reflection;
using Grpc.Reflection.V1Alpha;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Server.Kestrel.Core;
using Microsoft.AspNetCore.Server.Kestrel.Https;
using Microsoft.Extensions.Options;
using OpenTelemetry.Metrics;
using Serilog;
using Serilog.Events;
using Serilog.Formatting.Compact;

namespace FlashMla.Server.Hosting;

/// <summary>Builds the whole server: options, logging, backend, scheduler, Kestrel, gRPC, metrics, health.</summary>
public static class FlashMlaServerApp
{
    /// <param name="overrideServices">Runs after every registration, before the host is built: tests replace a service
    /// (a backend that returns wrong outputs, say) without a switch in the product.</param>
    public static WebApplication Build(string[] args, Action<IServiceCollection>? overrideServices = null)
    {
        var builder = WebApplication.CreateBuilder(args);
        var options = new FlashMlaOptions();
        builder.Configuration.GetSection(FlashMlaOptions.Section).Bind(options);
        var problems = options.Validate().ToList();
        var switches = MeasurementSwitches.Read(builder.Configuration, problems);
        var tenants = LoadTenants(options, problems, out byte[] tokenFileHash);
        var tls = problems.Count == 0 ? LoadTls(options.Tls, problems) : null;
        if (problems.Count > 0)
            throw new OptionsValidationException(FlashMlaOptions.Section, typeof(FlashMlaOptions), problems);
        builder.Services.AddSingleton(Options.Create(options));
        builder.Services.AddSingleton(tls!);
        builder.Services.AddHostedService<TlsReloadPoller>();

        // preserveStaticLogger: this server's loggers write to this server's logger. Without it Serilog's factory writes
        // through the process-wide Log.Logger as it is when each ILogger is made, which the last server built in the
        // process set and the first one disposed closes (Log.CloseAndFlush): with servers side by side (the tests'), a
        // server's lines went to another's sinks or to the silent logger (its start-up line, now and then).
        builder.Services.AddSerilog((_, log) =>
        {
            log.MinimumLevel.Information()
                .MinimumLevel.Override("Microsoft.AspNetCore", LogEventLevel.Warning)
                .MinimumLevel.Override("Grpc", LogEventLevel.Warning)
                .ReadFrom.Configuration(builder.Configuration)
                .Enrich.FromLogContext();
            if (options.LogFormat == "json") log.WriteTo.Console(new CompactJsonFormatter());
            else log.WriteTo.Console(outputTemplate: "[{Timestamp:HH:mm:ss.fff} {Level:u3}] {SourceContext}: {Message:lj}{NewLine}{Exception}");
        }, preserveStaticLogger: true);

        var endpoints = new BoundEndpoints();
        builder.Services.AddSingleton(endpoints);
        // Kestrel's socket transport takes its memory pools from this factory: large blocks, so one receive
        // call moves up to a block of a tensor instead of 4 KiB (LargeBlockMemoryPool). 4 KiB keeps Kestrel's own.
        if (switches.SocketBlockKiB != 4)
            builder.Services.AddSingleton<IMemoryPoolFactory<byte>>(
                new LargeBlockMemoryPoolFactory(switches.SocketBlockKiB * 1024, retainedBlocks: Math.Max(64, (256 << 20) / (switches.SocketBlockKiB * 1024))));
        builder.WebHost.UseSockets(sockets => sockets.UnsafePreferInlineScheduling = switches.InlineSocketScheduling);
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            var address = options.ListenAddress == "loopback" ? IPAddress.Loopback : IPAddress.Any;
            // Large windows and frames: a decode step moves megabytes each way (docs/architecture.md, "Why the data plane is a hot path").
            kestrel.Limits.Http2.InitialConnectionWindowSize = 64 * 1024 * 1024;
            kestrel.Limits.Http2.InitialStreamWindowSize = 16 * 1024 * 1024;
            // Clients that advertise a large SETTINGS_MAX_FRAME_SIZE (FlashMla.Client's LargeFrameHttp2Handler) get
            // DATA frames up to this size and may send them. MaxRequestBufferSize (1 MiB by default) is smaller than
            // such a frame plus its header, yet it cannot stall one: Kestrel's HTTP/2 connection copies the socket's
            // input pipe (the one that pauses at MaxRequestBufferSize) into a pipe of its own that never pauses, and
            // assembles frames there; the flow-control windows above bound that memory. Checked by experiment with
            // MaxRequestBufferSize = 64 KiB, a sixteenth of a frame: 530 MB went up in 1 MiB frames without a stall
            // on the development VM; LargeFrameTransportTests pins uploads of tens of MB in 1 MiB frames.
            kestrel.Limits.Http2.MaxFrameSize = 1024 * 1024;
            kestrel.Limits.Http2.MaxStreamsPerConnection = options.MaxStreamsPerConnection;
            // Kestrel counts it per endpoint (each bound address gets its own limit): the gRPC port's connections, and
            // the metrics port's apart, so a full gRPC port never turns away Prometheus or the kubelet's probes (the
            // limit tests scrape while it is full). Null: no limit.
            kestrel.Limits.MaxConcurrentConnections = options.MaxConnectionsPerPort > 0 ? options.MaxConnectionsPerPort : null;
            kestrel.Limits.MaxRequestBodySize = null;
            RequestHeaderLimit.Configure(kestrel.Limits);
            // The same connection timeouts as the data-plane port (FlashMlaOptions: KeepAliveTimeoutSeconds, ...).
            var timeouts = options.ToConnectionTimeouts();
            kestrel.Limits.KeepAliveTimeout = timeouts.KeepAlive;
            kestrel.Limits.RequestHeadersTimeout = timeouts.RequestHeaders;
            kestrel.Limits.MinRequestBodyDataRate = timeouts.MinBodyBytesPerSecond > 0
                ? new MinDataRate(timeouts.MinBodyBytesPerSecond, timeouts.BodyGrace)
                : null;
            kestrel.Listen(address, options.GrpcPort, listen =>
            {
                listen.Protocols = HttpProtocols.Http2;
                // The same handshake settings as the data-plane port, asked for per connection: a reloaded certificate takes effect at once.
                if (tls!.Enabled)
                    listen.UseHttps(new TlsHandshakeCallbackOptions
                    {
                        OnConnection = _ => ValueTask.FromResult(tls.HandshakeOptions()),
                        HandshakeTimeout = ServerTls.HandshakeTimeout,
                    });
                endpoints.Grpc = listen;
            });
            kestrel.Listen(address, options.MetricsPort, listen =>
            {
                listen.Protocols = HttpProtocols.Http1;
                endpoints.Metrics = listen;
            });
        });

        builder.Services.AddSingleton(tenants);
        builder.Services.AddSingleton(sp =>
        {
            var metrics = new FlashMlaMetrics(sp.GetService<System.Diagnostics.Metrics.IMeterFactory>());
            metrics.ObserveTenants(() => tenants.Tenants);
            metrics.ObserveTensorPool(sp.GetRequiredService<PinnedTensorPool>());
            return metrics;
        });
        if (tenants.RequiresTokens)
            builder.Services.AddHostedService(sp => new TokenFileReloader(options.TokenFile, tokenFileHash, TimeSpan.FromSeconds(options.TokenReloadSeconds),
                tenants, sp.GetRequiredService<ILogger<TokenFileReloader>>()));
        builder.Services.AddSingleton(switches);
        builder.Services.AddSingleton(ServerTensorPool.Create(options.ToTensorPoolLimits(ServerTensorPool.AvailableMemoryBytes())));
        builder.Services.AddSingleton(sp => BackendSelector.Create(options, sp.GetRequiredService<PinnedTensorPool>(),
            sp.GetRequiredService<MeasurementSwitches>()));
        builder.Services.AddSingleton(sp => new Scheduler(sp.GetRequiredService<BackendHolder>().Backend, options.ToCacheLimits(),
            options.ToSchedulerOptions(), sp.GetRequiredService<FlashMlaMetrics>(), sp.GetRequiredService<PinnedTensorPool>()));
        builder.Services.AddSingleton<RequestFailures>();
        builder.Services.AddSingleton<ServiceDrain>();
        // The whole shutdown, Kestrel's wait for its streams included, is bounded by the drain timeout (GracefulShutdown).
        builder.Services.Configure<HostOptions>(host => host.ShutdownTimeout = TimeSpan.FromSeconds(options.DrainTimeoutSeconds));
        builder.Services.AddSingleton<DecodeHandler>();
        builder.Services.AddHostedService<SchedulerLifetime>();
        builder.Services.AddSingleton<DecoderService>();
        builder.Services.AddSingleton<KvCacheService>(); // also served on the data plane (AppendKv)
        builder.Services.AddSingleton<DataPlane.DataPlaneListener>();
        builder.Services.AddHostedService(sp => sp.GetRequiredService<DataPlane.DataPlaneListener>());
        // Drains both ports before any hosted service stops (its StoppingAsync), so the scheduler still runs the work
        // of the streams they accepted.
        builder.Services.AddHostedService<GracefulShutdown>();

        builder.Services.AddGrpc(grpc =>
        {
            grpc.MaxReceiveMessageSize = options.MaxMessageBytes;
            grpc.MaxSendMessageSize = options.MaxMessageBytes;
            RequestCompression.Configure(grpc, options.MaxMessageBytes);
        });
        // flashmla.v1.Decoder's methods, with marshallers over the host's tensor pool.
        builder.Services.AddSingleton<IServiceMethodProvider<DecoderService>, PooledDecoderMethods>();
        // flashmla.v1.KvCache's generated methods, with request parsing guarded (a body that is not protobuf is INTERNAL).
        builder.Services.AddSingleton<IServiceMethodProvider<KvCacheService>, KvCacheMethods>();
        // Server reflection finds a service's descriptor through the generated binding attribute, which
        // neither flashmla.v1 service uses (PooledDecoderMethods and KvCacheMethods bind them): the services mapped below are listed here.
        // Both reflection versions (v1alpha and v1) are served, so both get the list.
        builder.Services.AddSingleton(new ReflectionServiceImpl(Decoder.Descriptor, KvCache.Descriptor, Health.Descriptor,
            ServerReflection.Descriptor, Grpc.Reflection.V1.ServerReflection.Descriptor));
        builder.Services.AddSingleton(new ReflectionV1ServiceImpl(Decoder.Descriptor, KvCache.Descriptor, Health.Descriptor,
            ServerReflection.Descriptor, Grpc.Reflection.V1.ServerReflection.Descriptor));
        builder.Services.AddGrpcReflection();
        builder.Services.AddGrpcHealthChecks(health =>
            {
                health.Services.Map("", _ => true);
                health.Services.Map("flashmla.v1.Decoder", _ => true);
                health.Services.Map("flashmla.v1.KvCache", _ => true);
            })
            .AddCheck<ServingHealthCheck>("serving");
        builder.Services.AddOpenTelemetry().WithMetrics(metrics => metrics
            .AddMeter(FlashMlaMetrics.MeterName)
            // Kestrel's own meter: kestrel_active_connections{server_port} is what is open on the gRPC port (the soak reads it).
            .AddMeter("Microsoft.AspNetCore.Server.Kestrel")
            .AddPrometheusExporter());

        overrideServices?.Invoke(builder.Services);
        var app = builder.Build();
        RequestCompression.AdvertiseAcceptedEncodings(app);
        RequestHeaderLimit.UseOnGrpcPort(app, endpoints, app.Services.GetRequiredService<RequestFailures>());
        app.UseMiddleware<GrpcPortAuthentication>();
        app.MapGrpcService<KvCacheService>();
        app.MapGrpcService<DecoderService>();
        app.MapGrpcHealthChecksService();
        app.MapGrpcReflectionService();
        app.MapPrometheusScrapingEndpoint("/metrics");
        app.MapHealthChecks("/healthz");

        app.Lifetime.ApplicationStarted.Register(() =>
        {
            var holder = app.Services.GetRequiredService<BackendHolder>();
            var scheduler = app.Services.GetRequiredService<Scheduler>();
            app.Logger.LogInformation(
                "FlashMLA service on {Backend} ({Device}), picked because {Reason}; {Layers} layers x {Blocks} blocks of 64 tokens, KV {KvDtype:l} at {KvBytesPerToken} bytes a token: {TokenCapacity} tokens a layer; gRPC on port {GrpcPort} ({GrpcTransport}), data plane on port {DataPlanePort} ({DataPlaneTransport}), metrics on port {MetricsPort} (cleartext HTTP/1.1)",
                holder.Backend.Name, holder.Backend.DeviceDescription, holder.Reason, scheduler.Geometry.NumLayers,
                scheduler.Geometry.NumBlocks, scheduler.Geometry.Dtype.OptionName(), scheduler.Geometry.BytesPerToken, scheduler.Geometry.TotalSlots,
                endpoints.GrpcPort, tls!.Describe(), endpoints.DataPlanePort,
                endpoints.DataPlanePort == 0 ? "off" : tls.Describe(), endpoints.MetricsPort);
            if (tenants.RequiresTokens)
                app.Logger.LogInformation("Authentication on: bearer tokens from {TokenFile} ({Tenants} tenants, {Tokens} tokens), read again every {Seconds} s; " +
                    "tenants from client certificates: {CertificateTenant} ({CertificateNames} names)",
                    options.TokenFile, tenants.Tenants.Count - 1, tenants.TokenCount, options.TokenReloadSeconds, options.Tls.ClientCertificateTenant,
                    tenants.CertificateNameCount);
            else
                app.Logger.LogWarning("Authentication off (no TokenFile): every client that reaches the gRPC and data-plane ports can read and write every sequence");
        });
        return app;
    }

    /// <summary>The tenants of the token file, or the anonymous tenant alone when none is configured.</summary>
    private static TenantDirectory LoadTenants(FlashMlaOptions options, List<string> problems, out byte[] fileHash)
    {
        fileHash = [];
        if (string.IsNullOrEmpty(options.TokenFile)) return TenantDirectory.Open();
        try
        {
            byte[] content = File.ReadAllBytes(options.TokenFile);
            fileHash = TokenFileReloader.HashOf(content);
            return TenantDirectory.FromFile(TokenFile.Parse(content, options.TokenFile), options.Tls.ClientCertificateTenantSource);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or InvalidDataException)
        {
            problems.Add($"TokenFile: {ex.Message}");
            return TenantDirectory.Open();
        }
    }

    /// <summary>The TLS files, loaded before Kestrel binds: a certificate that cannot serve fails start-up like a bad option.</summary>
    private static ServerTls? LoadTls(TlsOptions options, List<string> problems)
    {
        try
        {
            return ServerTls.Create(options);
        }
        catch (TlsMaterialException ex)
        {
            problems.Add(ex.Message);
            return null;
        }
    }
}
