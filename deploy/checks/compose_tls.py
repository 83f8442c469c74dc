#!/usr/bin/env python3
"""docker-compose.tls.yml, the TLS example over docker-compose.yml: it adds TLS to every service of the base file that
runs the server, points FlashMla__Tls__ files into a directory it mounts read-only (a directory, not the files, so that
replacing a file reaches the container), sets the certificate and key together, and publishes no port of its own.

    python3 deploy/checks/compose_tls.py
"""

from __future__ import annotations

from checklib import COMPOSE, REPO, load_yaml, run_and_exit

COMPOSE_TLS = REPO / "docker-compose.tls.yml"
TLS_OPTIONS = ("FlashMla__Tls__CertificateFile", "FlashMla__Tls__KeyFile", "FlashMla__Tls__ClientCaFile")


def servers() -> set[str]:
    return {name for name, s in load_yaml(COMPOSE)[0]["services"].items() if "FlashMla__Backend" in (s.get("environment") or {})}


def check_services():
    overrides = load_yaml(COMPOSE_TLS)[0]["services"]
    if set(overrides) != servers():
        yield f"docker-compose.tls.yml covers {sorted(overrides)}; the server runs as {sorted(servers())} in docker-compose.yml"
    for name, service in overrides.items():
        if "ports" in service:
            yield f"service {name}: the TLS example must keep the base file's ports"


def check_files():
    for name, service in load_yaml(COMPOSE_TLS)[0]["services"].items():
        env = service.get("environment") or {}
        files = {k: env[k] for k in TLS_OPTIONS if env.get(k)}
        if "FlashMla__Tls__CertificateFile" not in files or "FlashMla__Tls__KeyFile" not in files:
            yield f"service {name} must set FlashMla__Tls__CertificateFile and FlashMla__Tls__KeyFile together"
        mounts = [str(v).rsplit(":", 2) for v in service.get("volumes", [])]
        for option, path in files.items():
            holding = [m for m in mounts if len(m) >= 2 and path.startswith(m[1].rstrip("/") + "/")]
            if not holding:
                yield f"service {name}: {option}={path} lies in no mounted directory"
            elif holding[0][-1] != "ro":
                yield f"service {name}: the directory of {path} must be mounted read-only (:ro)"


if __name__ == "__main__":
    run_and_exit([
        ("docker-compose.tls.yml covers every server service and keeps their ports", check_services),
        ("docker-compose.tls.yml's TLS files lie in a read-only mounted directory", check_files),
    ])
