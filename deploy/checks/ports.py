#!/usr/bin/env python3
"""Ports: every file that names one of the server's ports (the Dockerfile, its health check, docker-compose.yml, the
Prometheus scrape configs, the rendered Kubernetes objects) names the default of the server's option for it
(FlashMlaOptions: GrpcPort, DataPlanePort, MetricsPort). No tool relates a manifest to C# defaults.

    kubectl kustomize deploy/k8s/overlays/h800 > /tmp/h800.yaml
    python3 deploy/checks/ports.py /tmp/h800.yaml     # rendered manifests, one file per variant
"""

from __future__ import annotations

import sys
from pathlib import Path

from checklib import COMPOSE, DEPLOY, JOB_NAME, dockerfile_env, dockerfile_instructions, load_yaml, option_defaults, run_and_exit

# Container port name (the Services and the ServiceMonitor refer to these) -> the server's option.
PORT_OPTIONS = {"grpc": "GrpcPort", "data-plane": "DataPlanePort", "metrics": "MetricsPort"}


def expected_ports() -> dict[str, int]:
    defaults = option_defaults()
    return {name: defaults[option] for name, option in PORT_OPTIONS.items()}


def option_env(values: dict) -> dict[str, str]:
    """FlashMla__X=value pairs (an image's ENV, compose's environment, a ConfigMap), as strings."""
    return {k: str(v) for k, v in (values or {}).items() if k.startswith("FlashMla__")}


def env_problems(where: str, env: dict[str, str]):
    for name, port in expected_ports().items():
        key = "FlashMla__" + PORT_OPTIONS[name]
        if key in env and env[key] != str(port):
            yield f"{where} sets {key}={env[key]}; the server's default is {port}"


def check_options():
    ports = expected_ports()
    if len(set(ports.values())) != len(ports):
        yield f"the options' default ports collide: {ports}"


def check_dockerfile():
    lines = dockerfile_instructions()
    exposed = {int(p.split("/")[0]) for line in lines if line.upper().startswith("EXPOSE ") for p in line.split()[1:]}
    if exposed != set(expected_ports().values()):
        yield f"Dockerfile EXPOSE {sorted(exposed)}; the server's ports are {sorted(expected_ports().values())}"
    env = dockerfile_env()
    yield from env_problems("Dockerfile ENV", env)
    for name, option in PORT_OPTIONS.items():
        if "FlashMla__" + option not in env:
            yield f"Dockerfile ENV does not pin FlashMla__{option} (EXPOSE and the health check rely on it)"
    health = (DEPLOY / "docker" / "healthcheck.sh").read_text(encoding="utf-8")
    if f"${{FlashMla__MetricsPort:-{expected_ports()['metrics']}}}" not in health:
        yield f"deploy/docker/healthcheck.sh does not default to the metrics port {expected_ports()['metrics']}"


def check_compose():
    compose = load_yaml(COMPOSE)[0]
    servers = {name: s for name, s in compose["services"].items() if "FlashMla__Backend" in option_env(s.get("environment"))}
    if not servers:
        yield "docker-compose.yml has no service that sets FlashMla__Backend"
    for name, service in servers.items():
        yield from env_problems(f"compose service {name}", option_env(service.get("environment")))
        published = {int(str(p).split("/")[0].split(":")[-1]) for p in service.get("ports", [])}
        if published != set(expected_ports().values()):
            yield f"compose service {name} publishes container ports {sorted(published)}; expected {sorted(expected_ports().values())}"
    prometheus = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")[0]
    job = next((j for j in prometheus["scrape_configs"] if j["job_name"] == JOB_NAME), {})
    targets = [t for sc in job.get("static_configs", []) for t in sc.get("targets", [])]
    if targets != [f"flashmla:{expected_ports()['metrics']}"]:
        yield f"deploy/prometheus/prometheus.yml job {JOB_NAME} scrapes {targets}; expected flashmla:{expected_ports()['metrics']}"


def check_kubernetes_scrape():
    jobs = load_yaml(DEPLOY / "prometheus" / "kubernetes-scrape.yml")[0]
    job = next((j for j in jobs if j.get("job_name") == JOB_NAME), None)
    keeps = {tuple(r.get("source_labels", [])): r.get("regex") for r in (job or {}).get("relabel_configs", [])
             if r.get("action") == "keep"}
    if keeps.get(("__meta_kubernetes_pod_container_port_name",)) != "metrics":
        yield "deploy/prometheus/kubernetes-scrape.yml must keep only the container port named 'metrics'"


def check_rendered(path: Path):
    docs = load_yaml(path)
    ports = expected_ports()
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        declared = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        if declared != ports:
            yield f"Deployment {deployment['metadata']['name']} declares container ports {declared}; expected {ports}"
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            spec = container.get(probe) or {}
            if "httpGet" in spec:  # /healthz, when the gRPC ports speak TLS (manifests.py)
                port = spec["httpGet"].get("port")
                if port not in (ports["metrics"], "metrics"):
                    yield f"{probe} gets /healthz from port {port}; the metrics port is {ports['metrics']}"
                continue
            port = spec.get("grpc", {}).get("port")
            if port != ports["grpc"]:
                yield f"{probe} probes port {port}; the gRPC port is {ports['grpc']}"
    for config in (d for d in docs if d["kind"] == "ConfigMap"):
        yield from env_problems(f"ConfigMap {config['metadata']['name']}", option_env(config.get("data")))
    for service in (d for d in docs if d["kind"] == "Service"):
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            number = ports.get(target, target)
            if number not in ports.values():
                yield f"Service {service['metadata']['name']} port {port['name']} targets {target}, not a server port"
            elif port["port"] != number:
                yield (f"Service {service['metadata']['name']} exposes {port['name']} on {port['port']}, the server "
                       f"listens on {number}: keep them equal")


if __name__ == "__main__":
    run_and_exit([
        ("the server's options declare three distinct default ports", check_options),
        ("Dockerfile: EXPOSE, ENV and the health check use the server's ports", check_dockerfile),
        ("docker-compose.yml and its Prometheus use the server's ports", check_compose),
        ("kubernetes-scrape.yml scrapes the container port named metrics", check_kubernetes_scrape),
        *((f"rendered {p.stem}: container ports, probes, ConfigMap and Services use the server's ports", check_rendered, p)
          for p in map(Path, sys.argv[1:])),
    ])
