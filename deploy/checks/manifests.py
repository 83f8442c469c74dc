#!/usr/bin/env python3
"""The rendered Kubernetes objects (kubectl kustomize's output, one file per variant) keep the promises the
service's operation rests on: one GPU per hardened pod, health probes (gRPC, or /healthz on the metrics port when the
gRPC ports speak TLS, which the kubelet's gRPC probe cannot), a shutdown long enough for the drain, Services that reach
the pods and say h2c or TLS as the pods speak, a headless Service of ready pods only, a disruption budget, a
ServiceMonitor that scrapes each pod once under the job the alerts select, the token Secret mounted where the server
reads it (so a rotation reaches it), for TLS the certificate Secret mounted whole (a subPath mount never sees a
renewal) and readable by the server's user, and a NetworkPolicy that lets one namespace reach the gRPC ports and
Prometheus alone the metrics port.

    kubectl kustomize deploy/k8s/overlays/h800 > /tmp/h800.yaml && python3 deploy/checks/manifests.py /tmp/h800.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path

from checklib import JOB_NAME, Checks, load_yaml, option_defaults

H2C_PORT_NAMES = ("grpc", "data-plane")
# Seconds between the end of the drain and SIGKILL that the grace period must leave.
SHUTDOWN_MARGIN = 5


class Rendered:
    """One variant's objects, with the server's Deployment and pod picked out."""

    def __init__(self, path: Path):
        self.docs = load_yaml(path)
        deployments = self.kind("Deployment")
        if len(deployments) != 1 or len(deployments[0]["spec"]["template"]["spec"]["containers"]) != 1:
            raise ValueError(f"expected one Deployment with one container, found {[d['metadata']['name'] for d in deployments]}")
        self.deployment = deployments[0]
        self.pod = self.deployment["spec"]["template"]["spec"]
        self.container = self.pod["containers"][0]
        self.selector = self.deployment["spec"]["selector"]["matchLabels"]

    def kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def options(self) -> dict[str, str]:
        """The FlashMla__ options of the ConfigMaps the container's envFrom names, a later one's value winning as in
        the pod's environment (empty when none is rendered)."""
        refs = [s["configMapRef"]["name"] for s in self.container.get("envFrom", []) if "configMapRef" in s]
        configs = {c["metadata"]["name"]: c.get("data") or {} for c in self.kind("ConfigMap")}
        merged: dict[str, str] = {}
        for ref in refs:
            merged.update(configs.get(ref, {}))
        return merged

    @property
    def tls(self) -> bool:
        """Whether the gRPC ports speak TLS (FlashMla:Tls:CertificateFile set)."""
        return bool(self.options().get("FlashMla__Tls__CertificateFile"))


def check_pod(r: Rendered):
    if str(r.container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")) != "1":
        yield "the container must limit nvidia.com/gpu to 1 (one server owns one GPU)"
    security = r.container.get("securityContext", {})
    if not (security.get("readOnlyRootFilesystem") and security.get("allowPrivilegeEscalation") is False
            and security.get("capabilities", {}).get("drop") == ["ALL"]):
        yield "the container must run read-only, without privilege escalation, all capabilities dropped"
    if not r.pod.get("securityContext", {}).get("runAsNonRoot"):
        yield "the pod must set runAsNonRoot"


def check_probes(r: Rendered):
    if r.tls:
        # The kubelet's gRPC probe speaks cleartext only; /healthz answers as the Decoder's health does (NOT_SERVING while draining).
        for name in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = r.container.get(name) or {}
            if "grpc" in probe or probe.get("httpGet", {}).get("path") != "/healthz":
                yield f"{name}: the gRPC ports speak TLS, which gRPC probes cannot; probe GET /healthz on the metrics port (its port: ports.py)"
        return
    for name in ("startupProbe", "livenessProbe", "readinessProbe"):
        if "grpc" not in (r.container.get(name) or {}):
            yield f"{name} must be a gRPC health probe (its port: ports.py)"
    service = (r.container.get("readinessProbe") or {}).get("grpc", {}).get("service")
    if service != "flashmla.v1.Decoder":
        yield f"readinessProbe must check flashmla.v1.Decoder (a draining pod leaves the endpoints), not {service!r}"


def check_tls(r: Rendered):
    options = r.options()
    files = {k: options[k] for k in ("FlashMla__Tls__CertificateFile", "FlashMla__Tls__KeyFile", "FlashMla__Tls__ClientCaFile") if options.get(k)}
    if not files:
        return
    if "FlashMla__Tls__KeyFile" not in files:
        yield "FlashMla__Tls__CertificateFile is set without FlashMla__Tls__KeyFile (the server refuses to start)"
    volumes = {v["name"]: v for v in r.pod.get("volumes", [])}
    for option, path in files.items():
        mounts = [m for m in r.container.get("volumeMounts", []) if path.startswith(m["mountPath"].rstrip("/") + "/")]
        if not mounts:
            yield f"{option}={path} lies in no volume mount of the container"
            continue
        mount = mounts[0]
        secret = volumes.get(mount["name"], {}).get("secret")
        if secret is None:
            yield f"{option}={path} is on volume {mount['name']!r}, not a Secret volume"
        if "subPath" in mount or "subPathExpr" in mount:
            yield f"the mount of {path} uses subPath: a renewed Secret would never reach the pod"
        if not mount.get("readOnly"):
            yield f"the mount of {path} must be readOnly"
        mode = (secret or {}).get("defaultMode", 0o644)
        if secret is not None and mode & 0o004 == 0 and r.pod.get("securityContext", {}).get("fsGroup") is None:
            yield f"Secret volume {mount['name']!r} has mode {mode:o} and the pod no fsGroup: the non-root server cannot read {path}"
        if secret is not None and mode & 0o002:
            yield f"Secret volume {mount['name']!r} is world-writable (mode {mode:o})"


def check_shutdown(r: Rendered):
    # The server's whole shutdown is bounded by DrainTimeoutSeconds (the ConfigMap's value, else the default).
    drain = float(r.options().get("FlashMla__DrainTimeoutSeconds", option_defaults()["DrainTimeoutSeconds"]))
    grace = r.pod.get("terminationGracePeriodSeconds", 30)
    pre_stop = r.container.get("lifecycle", {}).get("preStop", {})
    command = pre_stop.get("exec", {}).get("command", [])
    pre_stop_seconds = pre_stop.get("sleep", {}).get("seconds") or (float(command[1]) if command[:1] == ["sleep"] else 0)
    if grace < pre_stop_seconds + drain + SHUTDOWN_MARGIN:
        yield (f"terminationGracePeriodSeconds {grace} < preStop {pre_stop_seconds} s + the server's drain "
               f"(DrainTimeoutSeconds {drain:g} s) + {SHUTDOWN_MARGIN} s")


def check_options(r: Rendered):
    refs = [s["configMapRef"]["name"] for s in r.container.get("envFrom", []) if "configMapRef" in s]
    configs = {c["metadata"]["name"]: c.get("data") or {} for c in r.kind("ConfigMap")}
    named = [configs[ref] for ref in refs if ref in configs]
    if not named:
        yield f"envFrom {refs} names no rendered ConfigMap (there are {sorted(configs)})"
    elif named[0].get("FlashMla__Backend") != "cuda":
        yield f"FlashMla__Backend={named[0].get('FlashMla__Backend')!r}: a GPU pod must fail without its GPU (cuda), not serve from the CPU"


def check_services(r: Rendered):
    services = r.kind("Service")
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    if len(headless) != 1 or len(services) != 2:
        yield f"expected one headless and one cluster-IP Service, found {[s['metadata']['name'] for s in services]}"
    for service in services:
        name = service["metadata"]["name"]
        if service["spec"].get("selector") != r.selector:
            yield f"Service {name} selects {service['spec'].get('selector')}, not the Deployment's pods {r.selector}"
        wanted = "https" if r.tls else "kubernetes.io/h2c"
        for port in service["spec"]["ports"]:
            if port.get("targetPort") in H2C_PORT_NAMES and port.get("appProtocol") != wanted:
                yield (f"Service {name} port {port['name']} carries HTTP/2 {'over TLS' if r.tls else 'cleartext'}: "
                       f"appProtocol must be {wanted}, not {port.get('appProtocol')!r}")
    for service in headless:
        if service["spec"].get("publishNotReadyAddresses"):
            yield "the headless Service must not publish not-ready (draining) pods"
        targets = sorted(p.get("targetPort") for p in service["spec"]["ports"])
        if targets != sorted(H2C_PORT_NAMES):
            yield f"the headless Service must carry the grpc and data-plane ports only, not {targets}"


def check_disruption_budget(r: Rendered):
    budgets = r.kind("PodDisruptionBudget")
    if len(budgets) != 1 or budgets[0]["spec"]["selector"]["matchLabels"] != r.selector:
        yield f"expected one PodDisruptionBudget selecting {r.selector}"


def check_service_monitor(r: Rendered):
    for monitor in r.kind("ServiceMonitor"):
        wanted = monitor["spec"]["selector"]["matchLabels"]
        matched = [s for s in r.kind("Service") if wanted.items() <= s["metadata"].get("labels", {}).items()]
        if len(matched) != 1:
            yield f"the ServiceMonitor selects {len(matched)} Services: exactly one, or every series is scraped twice"
            continue
        ports = {p["name"] for p in matched[0]["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            if endpoint.get("port") not in ports:
                yield f"ServiceMonitor endpoint port {endpoint.get('port')!r} is not a port of Service {matched[0]['metadata']['name']}"
        labels = matched[0]["metadata"].get("labels", {})
        job = labels.get(monitor["spec"].get("jobLabel", ""), matched[0]["metadata"]["name"])
        if job != JOB_NAME:
            yield f"the ServiceMonitor gives job {job!r}; the rules select {JOB_NAME!r}"


def check_token_secret(r: Rendered):
    token_file = r.options().get("FlashMla__TokenFile")
    if not token_file:
        yield "FlashMla__TokenFile is not set: the pods would serve without authentication"
        return
    secrets = {v["name"]: v["secret"] for v in r.pod.get("volumes", []) if "secret" in v}
    mounts = [m for m in r.container.get("volumeMounts", []) if m["name"] in secrets
              and token_file.startswith(m["mountPath"].rstrip("/") + "/")]
    if len(mounts) != 1:
        yield f"FlashMla__TokenFile {token_file} lies in no mounted Secret volume"
        return
    mount, secret = mounts[0], secrets[mounts[0]["name"]]
    if mount.get("subPath"):
        yield f"the token Secret is mounted with subPath {mount['subPath']!r}: a rotated Secret would never reach the pod"
    if not mount.get("readOnly"):
        yield "the token Secret must be mounted readOnly"
    if secret.get("optional"):
        yield "the token Secret must not be optional (a pod without it would fail to start, never serve open)"
    mode = secret.get("defaultMode", 0o644)
    if mode & 0o007:
        yield f"the token Secret's files are readable by others (defaultMode {oct(mode)})"


def ports_of(rule: dict) -> set:
    return {p.get("port") for p in rule.get("ports") or []}


def check_network_policy(r: Rendered):
    policies = [p for p in r.kind("NetworkPolicy") if p["spec"]["podSelector"].get("matchLabels", {}).items() <= r.selector.items()
                and p["spec"]["podSelector"].get("matchLabels")]
    if len(policies) != 1 or "Ingress" not in policies[0]["spec"].get("policyTypes", []):
        yield f"expected one Ingress NetworkPolicy selecting the pods {r.selector}, found {len(policies)}"
        return
    rules = policies[0]["spec"].get("ingress") or []
    names = {p["name"] for p in r.container.get("ports", [])}
    for rule in rules:
        sources = rule.get("from")
        if not sources:
            yield "an ingress rule without 'from' admits every source"
        if not rule.get("ports"):
            yield "an ingress rule without 'ports' opens every port"
        for source in sources or []:
            if "ipBlock" in source:
                yield f"an ingress rule admits an ipBlock {source['ipBlock']}: name the namespace instead"
            elif not source.get("namespaceSelector", {}).get("matchLabels"):
                yield f"an ingress source {source} is not bound to a named namespace"
        unknown = ports_of(rule) - names
        if unknown:
            yield f"an ingress rule names ports {sorted(map(str, unknown))} the container does not have"
    grpc = [rule for rule in rules if ports_of(rule) & set(H2C_PORT_NAMES)]
    metrics = [rule for rule in rules if "metrics" in ports_of(rule)]
    if any(ports_of(rule) & set(H2C_PORT_NAMES) != set(H2C_PORT_NAMES) or "metrics" in ports_of(rule) for rule in grpc):
        yield "the grpc and data-plane ports must be admitted together, by a rule of their own (not with metrics)"
    if len(metrics) != 1 or any(not source.get("podSelector") for source in metrics[0].get("from", [])):
        yield "the metrics port must be admitted by one rule whose sources name Prometheus's pods (a podSelector)"
    covered = set().union(*(ports_of(rule) for rule in rules)) if rules else set()
    if names - covered:
        yield f"container ports {sorted(names - covered)} are reachable by nobody (no rule admits them)"


CHECKS = (
    ("one GPU per hardened pod", check_pod),
    ("health probes: gRPC with readiness on flashmla.v1.Decoder, or /healthz when the gRPC ports speak TLS", check_probes),
    ("TLS files, where set, come from a whole read-only Secret mount the server can read", check_tls),
    ("the grace period covers preStop and the server's drain", check_shutdown),
    ("the options ConfigMap is rendered, referenced and picks the cuda backend", check_options),
    ("Services select the pods, say h2c or TLS as the pods speak, the headless one has ready pods and both HTTP/2 ports only", check_services),
    ("a PodDisruptionBudget selects the pods", check_disruption_budget),
    ("a ServiceMonitor, where there is one, scrapes one Service's metrics port as job flashmla", check_service_monitor),
    ("the token Secret is mounted read-only, whole, where FlashMla__TokenFile points", check_token_secret),
    ("a NetworkPolicy: one namespace reaches the gRPC ports, Prometheus alone the metrics port", check_network_policy),
)

if __name__ == "__main__":
    if not sys.argv[1:]:
        sys.exit(__doc__)
    checks = Checks()
    for path in map(Path, sys.argv[1:]):
        try:
            rendered = Rendered(path)
        except Exception as e:
            problem = f"{type(e).__name__}: {e}"
            checks.run(f"rendered {path.stem}: the server's Deployment", lambda: [problem])
            continue
        for name, check in CHECKS:
            checks.run(f"rendered {path.stem}: {name}", check, rendered)
    sys.exit(checks.finish())
