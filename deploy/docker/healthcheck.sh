#!/usr/bin/env bash
# Container health check for the FlashMLA server image (Dockerfile HEALTHCHECK).
#
# The runtime image has no curl, wget or grpc_health_probe, and adding one only for this would grow
# the attack surface of every pod. bash is in the base image, and its /dev/tcp redirection is enough
# for one HTTP/1.1 GET against /healthz on the metrics port. Healthy means status 200; anything
# else (503 while NOT_SERVING or draining, no listener yet, a timeout) is unhealthy.
#
# Kubernetes does not use this: it probes the gRPC health service natively (deploy/k8s).
set -euo pipefail

port="${FlashMla__MetricsPort:-9090}"

exec 3<>"/dev/tcp/127.0.0.1/${port}"
printf 'GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
# Status line: "HTTP/1.1 200 OK".
IFS=' ' read -r -t 3 _version status _reason <&3
exec 3<&-

if [[ "${status}" != "200" ]]; then
    echo "flashmla: /healthz on port ${port} answered ${status:-nothing}" >&2
    exit 1
fi
