# syntax=docker/dockerfile:1
#
# FlashMLA Service image: three stages.
#   kernels  nvcc builds native/ into flashmla.fatbin (sm_90a SASS, Hopper only)
#   publish  the .NET SDK restores, then publishes src/FlashMla.Server (framework-dependent, linux-x64)
#   runtime  ASP.NET Core runtime + the published server + the fatbin; no CUDA toolkit
#
# The runtime image carries no CUDA libraries at all: the server talks to the GPU through the
# CUDA driver API only (libcuda.so.1), and the NVIDIA container toolkit mounts the host driver's
# libcuda into the container when it is started with a GPU (NVIDIA_DRIVER_CAPABILITIES=compute).
#
# Build (needs a Docker engine with BuildKit; x86-64 only):
#   docker build -t flashmla-server:dev .
# See deploy/README.md for running it under compose or Kubernetes.

ARG CUDA_VERSION=13.0.0
ARG DOTNET_VERSION=10.0

# ---------------------------------------------------------------------------------------------------
# Stage 1: the CUDA kernels. nvcc compiles without a GPU, so this runs on any x86-64 build machine.
FROM nvidia/cuda:${CUDA_VERSION}-devel-ubuntu24.04 AS kernels
WORKDIR /src
# Only native/ is copied, so a change in the C# sources never rebuilds the kernels (and vice versa).
COPY native/ native/
# native/build.sh owns the nvcc flags (-gencode=arch=compute_90a,code=sm_90a, the CCCL include path);
# the image must not drift from the device-machine build, so it calls the same script.
RUN bash native/build.sh \
 && test -s native/build/flashmla.fatbin

# ---------------------------------------------------------------------------------------------------
# Stage 2: restore and publish the server.
FROM mcr.microsoft.com/dotnet/sdk:${DOTNET_VERSION} AS publish
WORKDIR /src
# Restore layer: only the files that decide the package graph. It stays cached until one of them
# changes. Every project the server references (transitively) must be listed here;
# deploy/checks/dockerfile.py checks that against the ProjectReference items.
COPY global.json Directory.Build.props Directory.Packages.props ./
COPY src/FlashMla.Contracts/FlashMla.Contracts.csproj src/FlashMla.Contracts/
COPY src/FlashMla.Core/FlashMla.Core.csproj src/FlashMla.Core/
COPY src/FlashMla.Cuda/FlashMla.Cuda.csproj src/FlashMla.Cuda/
COPY src/FlashMla.Http2/FlashMla.Http2.csproj src/FlashMla.Http2/
COPY src/FlashMla.Server/FlashMla.Server.csproj src/FlashMla.Server/
# Restore the server project, not the solution: the solution also holds the tests, the CLI and the
# benchmarks, none of which go into this image.
RUN dotnet restore src/FlashMla.Server/FlashMla.Server.csproj -r linux-x64
# Sources: the .proto contract (Contracts compiles it with Grpc.Tools) and src/.
COPY proto/ proto/
COPY src/ src/
RUN dotnet publish src/FlashMla.Server/FlashMla.Server.csproj \
      -c Release -r linux-x64 --self-contained false --no-restore \
      -p:UseAppHost=false \
      -o /app

# ---------------------------------------------------------------------------------------------------
# Stage 3: runtime. The full (not chiseled) ASP.NET image, because the HEALTHCHECK needs a shell:
# the chiseled image has none, and neither image has curl, wget or grpc_health_probe.
FROM mcr.microsoft.com/dotnet/aspnet:${DOTNET_VERSION} AS runtime

LABEL org.opencontainers.image.title="flashmla-server" \
      org.opencontainers.image.description="FlashMLA Service: paged MLA KV cache and decode attention over gRPC, one Hopper GPU per process"

WORKDIR /app
# Root-owned and read-only for the service user: nothing in /app is written at run time.
COPY --from=publish /app/ /app/
# FatbinPath's default is "flashmla.fatbin next to the executable" (= /app); it is also set
# explicitly below so that the path is visible in `docker inspect` and checked by
# deploy/checks/dockerfile.py.
COPY --from=kernels /src/native/build/flashmla.fatbin /app/flashmla.fatbin
COPY deploy/docker/healthcheck.sh /usr/local/bin/flashmla-healthcheck
RUN chmod 0755 /usr/local/bin/flashmla-healthcheck

ENV \
    # The server's options (section "FlashMla"); ports are the server defaults, pinned here so that
    # EXPOSE, the health check and the manifests agree.
    FlashMla__GrpcPort=50051 \
    FlashMla__DataPlanePort=50052 \
    FlashMla__MetricsPort=9090 \
    FlashMla__Backend=auto \
    FlashMla__FatbinPath=/app/flashmla.fatbin \
    FlashMla__LogFormat=json \
    # The base image sets ASPNETCORE_HTTP_PORTS=8080; the server binds its ports itself, so
    # clear it rather than have Kestrel warn that it overrides (or, worse, also open) port 8080.
    ASPNETCORE_HTTP_PORTS="" \
    # Server GC: the gRPC data plane moves GB/s through pooled buffers on many threads.
    DOTNET_gcServer=1 \
    # The NVIDIA container toolkit reads these: expose the GPU(s) granted to the container and mount
    # the driver libraries for compute (libcuda) and utility (nvidia-smi, NVML) only.
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    # The fatbin is built by CUDA 13.0: refuse to start on a host driver too old to load it (the
    # toolkit prints a clear error) instead of failing later inside cuModuleLoadData.
    NVIDIA_REQUIRE_CUDA="cuda>=13.0"

# gRPC (HTTP/2 cleartext: every service, health, reflection), the data plane (HTTP/2 cleartext:
# flashmla.v1.Decoder only, the decode path with fewer copies) and metrics (HTTP/1.1: /metrics, /healthz).
EXPOSE 50051 50052 9090

# The aspnet base image defines the non-root user "app" (UID 1654, in $APP_UID).
USER $APP_UID

# GET /healthz on the metrics port through bash's /dev/tcp (see deploy/docker/healthcheck.sh).
# start-period covers CUDA context creation and the KV cache allocation (tens of GB) at start-up.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["/usr/local/bin/flashmla-healthcheck"]

# SIGTERM starts the graceful drain (in-flight work finishes, about 30 s): give `docker stop` and
# compose a longer timeout (compose: stop_grace_period: 45s; Kubernetes: terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM
ENTRYPOINT ["dotnet", "/app/flashmla-server.dll"]
