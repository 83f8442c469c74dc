#!/usr/bin/env python3
"""Consistency checks for the FlashMLA Service deployment files.

The Dockerfile, docker-compose.yml, the Kubernetes manifests, the Prometheus rules and the Grafana
dashboard each restate a few facts (ports, metric names, the fatbin path, the scrape job name).
This script checks that they agree, and exits non-zero with one line per mismatch.

    python3 deploy/check_consistency.py                        # run every check
    python3 deploy/check_consistency.py --write-prometheusrule # regenerate the PrometheusRule from
                                                               # deploy/prometheus/rules/ first
    python3 deploy/check_consistency.py --mini-yaml            # force the built-in YAML reader
    python3 deploy/check_consistency.py --compare-parsers      # built-in reader vs PyYAML, every file

Python 3 standard library only. PyYAML is used when it is installed; otherwise a small reader for
the block-style YAML subset these files use (it refuses what it does not understand rather than
guessing). Optional tools deepen the checks when they are on PATH and are skipped otherwise:
`promtool` (rule syntax, rule unit tests, the dashboard's PromQL) and `kubectl` or `kustomize`
(renders the overlays, which are then checked as rendered).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"

DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
HEALTHCHECK = DEPLOY / "docker" / "healthcheck.sh"
METRICS_USED = DEPLOY / "metrics-used.txt"
METRICS_SOURCE = REPO / "src" / "FlashMla.Core" / "Telemetry" / "FlashMlaMetrics.cs"
SERVER_CSPROJ = REPO / "src" / "FlashMla.Server" / "FlashMla.Server.csproj"
NATIVE_BUILD = REPO / "native" / "build.sh"
PROM_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
PROM_K8S_SCRAPE = DEPLOY / "prometheus" / "kubernetes-scrape.yml"
RULES = DEPLOY / "prometheus" / "rules" / "flashmla.rules.yml"
RULES_TEST = DEPLOY / "prometheus" / "tests" / "flashmla.rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "flashmla.json"
GRAFANA_DATASOURCE = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_PROVIDER = DEPLOY / "grafana" / "provisioning" / "dashboards" / "flashmla.yml"
K8S = DEPLOY / "k8s"
K8S_BASE = K8S / "base"
K8S_OVERLAYS = K8S / "overlays"
PROMETHEUSRULE = K8S / "components" / "prometheus-operator" / "prometheusrule.yaml"

# The facts every file must agree on.
GRPC_PORT = 50051
# The data-plane listener: flashmla.v1.Decoder only, HTTP/2 cleartext (h2c with prior knowledge).
DATA_PLANE_PORT = 50052
METRICS_PORT = 9090
# The server's port options and the port each must be (image ENV, compose environment, ConfigMap).
PORT_OPTIONS = (("FlashMla__GrpcPort", GRPC_PORT), ("FlashMla__DataPlanePort", DATA_PLANE_PORT),
                ("FlashMla__MetricsPort", METRICS_PORT))
# Named container ports in the pod; the Services and probes refer to these names.
CONTAINER_PORTS = {"grpc": GRPC_PORT, "data-plane": DATA_PLANE_PORT, "metrics": METRICS_PORT}
# The ports that speak HTTP/2 cleartext: every Service port that targets one says so (appProtocol).
H2C_PORT_NAMES = ("grpc", "data-plane")
JOB_NAME = "flashmla"
APP_NAME = "flashmla"
FATBIN_NAME = "flashmla.fatbin"
# The server's graceful drain of in-flight work (DESIGN/issue: allow about 30 s).
DRAIN_SECONDS = 30

# Optional tools (promtool, kustomize/kubectl) are used when found, unless --no-tools.
USE_TOOLS = True

METRIC_RE = re.compile(r"(?<![A-Za-z0-9_:])flashmla_[a-z0-9_]+")


# --------------------------------------------------------------------------------------------------
# YAML: PyYAML when present, otherwise a reader for the block-style subset used here.

class YamlSubsetError(ValueError):
    pass


class MiniYaml:
    """Reads block mappings and sequences, flow collections on one or more lines, plain and quoted
    scalars (also over several lines, as kustomize writes them), literal and folded block scalars,
    anchors, aliases, merge keys (<<) and `---` document separators. Anything else (tags, complex
    keys, keep chomping) raises YamlSubsetError, naming the file and line."""

    _BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False,
             "yes": True, "Yes": True, "YES": True, "no": False, "No": False, "NO": False,
             "on": True, "On": True, "ON": True, "off": False, "Off": False, "OFF": False}
    _INT = re.compile(r"^[-+]?(0|[1-9][0-9_]*)$")
    _FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9][0-9_]*\.[0-9_]*)([eE][-+]?[0-9]+)?$")

    def __init__(self, text: str, name: str):
        self.name = name
        self.lines = text.split("\n")
        self.anchors: dict[str, object] = {}
        self.pos = 0
        self.end = 0

    def documents(self) -> list:
        separators = [i for i, line in enumerate(self.lines) if re.match(r"^---\s*(#.*)?$", line)]
        bounds = [-1] + separators + [len(self.lines)]
        docs = []
        for start, stop in zip(bounds, bounds[1:]):
            self.pos, self.end = start + 1, stop
            if self._next(self.pos) is None:
                continue
            doc = self._node(0)
            left = self._next(self.pos)
            if left is not None:
                self._fail(left, "unexpected content (indentation?)")
            docs.append(doc)
        return docs

    # -- lines
    def _fail(self, index: int, message: str):
        raise YamlSubsetError(f"{self.name}:{index + 1}: {message}: {self.lines[index].strip()!r}")

    def _next(self, index: int):
        while index < self.end:
            stripped = self.lines[index].strip()
            if stripped and not stripped.startswith("#"):
                return index
            index += 1
        return None

    @staticmethod
    def _indent(line: str) -> int:
        return len(line) - len(line.lstrip(" "))

    @staticmethod
    def _strip_comment(text: str) -> str:
        quote = None
        for i, ch in enumerate(text):
            if quote:
                if ch == quote:
                    quote = None
            elif ch in "'\"" and (i == 0 or text[i - 1] in " \t[{,:"):
                quote = ch
            elif ch == "#" and (i == 0 or text[i - 1] in " \t"):
                return text[:i].rstrip()
        return text.rstrip()

    @staticmethod
    def _split_key(text: str):
        """('key', 'rest') when text starts a mapping entry, else None."""
        quote, depth = None, 0
        for i, ch in enumerate(text):
            if quote:
                if ch == quote:
                    quote = None
            elif ch in "'\"" and (i == 0 or text[i - 1] in " \t[{,:"):
                quote = ch
            elif ch in "[{":
                depth += 1
            elif ch in "]}":
                depth -= 1
            elif ch == ":" and depth == 0 and (i + 1 == len(text) or text[i + 1] in " \t"):
                key = text[:i].strip()
                if key[:1] in "\"'":
                    key = MiniYaml._quoted(key)
                return key, text[i + 1:].strip()
        return None

    @staticmethod
    def _is_seq_item(text: str) -> bool:
        return text == "-" or text.startswith("- ")

    # -- nodes
    def _node(self, min_indent: int):
        i = self._next(self.pos)
        if i is None or self._indent(self.lines[i]) < min_indent:
            return None
        indent = self._indent(self.lines[i])
        if self._is_seq_item(self.lines[i].strip()):
            return self._sequence(indent)
        return self._mapping(indent)

    def _mapping(self, indent: int) -> dict:
        result: dict = {}
        while True:
            i = self._next(self.pos)
            if i is None or self._indent(self.lines[i]) < indent:
                return result
            if self._indent(self.lines[i]) > indent:
                self._fail(i, "unexpected indentation")
            text = self._strip_comment(self.lines[i].strip())
            if self._is_seq_item(text):
                return result
            split = self._split_key(text)
            if split is None:
                self._fail(i, "expected 'key: value'")
            key, rest = split
            self.pos = i + 1
            value = self._value(rest, indent, i, same_indent_sequence=True)
            if key == "<<":
                merged = value if isinstance(value, list) else [value]
                for source in reversed(merged):
                    if not isinstance(source, dict):
                        self._fail(i, "merge key needs a mapping")
                    result = {**source, **result}
            else:
                result[key] = value

    def _sequence(self, indent: int) -> list:
        items = []
        while True:
            i = self._next(self.pos)
            if i is None or self._indent(self.lines[i]) != indent:
                return items
            stripped = self.lines[i].strip()
            if not self._is_seq_item(stripped):
                return items
            content = stripped[1:].lstrip(" ")
            column = indent + len(stripped) - len(content)
            text = self._strip_comment(content)
            if text and (self._is_seq_item(text) or
                         (text[0] not in "[{\"'|>*&" and self._split_key(text) is not None)):
                # "- key: value" or "- - x": a nested block that starts on the dash's line.
                self.lines[i] = " " * column + content
                self.pos = i
                items.append(self._node(column))
            else:
                self.pos = i + 1
                items.append(self._value(text, indent, i, same_indent_sequence=False))

    def _value(self, rest: str, indent: int, index: int, same_indent_sequence: bool):
        anchor = None
        m = re.match(r"&([^\s\[\]{},]+)\s*", rest)
        if m:
            anchor, rest = m.group(1), rest[m.end():]
        if rest == "":
            i = self._next(self.pos)
            value = None
            if i is not None:
                child = self._indent(self.lines[i])
                if child > indent:
                    value = self._node(child)
                elif child == indent and same_indent_sequence and self._is_seq_item(self.lines[i].strip()):
                    value = self._sequence(indent)
        elif rest[0] in "|>":
            value = self._block_scalar(rest, indent, index)
        elif rest[0] == "*":
            name = rest[1:].strip()
            if name not in self.anchors:
                self._fail(index, f"unknown alias *{name}")
            value = self.anchors[name]
        elif rest[0] in "[{":
            value = self._flow_value(rest, index)
        elif rest[0] in "\"'" and self._quote_end(rest) is None:
            value = self._multiline_quoted(rest, index)
        elif rest[0] in "!":
            self._fail(index, "tags are not supported")
        else:
            value = self._scalar(self._plain_continued(rest, indent), index)
        if anchor:
            self.anchors[anchor] = value
        return value

    def _block_scalar(self, header: str, indent: int, index: int) -> str:
        m = re.match(r"^([|>])([-+]?)\s*$", header)
        if not m:
            self._fail(index, "unsupported block scalar header")
        style, chomp = m.groups()
        body = []
        i = self.pos
        while i < self.end:
            line = self.lines[i]
            if line.strip() and self._indent(line) <= indent:
                break
            body.append(line)
            i += 1
        self.pos = i
        while body and not body[-1].strip():
            body.pop()
        content_indent = min((self._indent(l) for l in body if l.strip()), default=indent + 1)
        lines = [l[content_indent:] if l.strip() else "" for l in body]
        if style == "|":
            text = "\n".join(lines)
        else:
            # Folding: a break between two plain lines becomes a space; each empty line is a break;
            # breaks around more-indented lines are kept.
            text = lines[0] if lines else ""
            for previous, line in zip(lines, lines[1:]):
                if line == "":
                    text += "\n"
                elif previous == "":
                    text += line
                elif line.startswith((" ", "\t")) or previous.startswith((" ", "\t")):
                    text += "\n" + line
                else:
                    text += " " + line
        if chomp == "-":
            return text
        if chomp == "+":
            self._fail(index, "keep chomping (+) is not supported")
        return text.rstrip("\n") + "\n" if text else ""

    def _plain_continued(self, text: str, indent: int) -> str:
        """A plain scalar with its continuation lines (more indented than its key or dash, as
        kustomize wraps long strings): line breaks fold to spaces, an empty line is a newline."""
        i, empty = self.pos, 0
        while i < self.end:
            line = self.lines[i]
            if not line.strip():
                empty += 1
            elif self._indent(line) > indent and not line.strip().startswith("#"):
                text += "\n" * empty if empty else " "
                text += self._strip_comment(line.strip())
                empty = 0
                self.pos = i + 1
            else:
                break
            i += 1
        return text

    @staticmethod
    def _quote_end(text: str):
        """Index of the quote that closes the quoted scalar opening text, or None."""
        quote, at = text[0], 1
        while at < len(text):
            ch = text[at]
            if quote == '"' and ch == "\\":
                at += 2
                continue
            if ch == quote:
                if quote == "'" and text[at + 1:at + 2] == "'":
                    at += 2
                    continue
                return at
            at += 1
        return None

    def _multiline_quoted(self, rest: str, index: int) -> str:
        """A quoted scalar over several lines (as kustomize writes long strings): a line break
        between text is a space, an empty line is a newline, an escaped break (double quotes) joins."""
        text, i, after_empty = rest, self.pos, False
        while self._quote_end(text) is None:
            if i >= self.end:
                self._fail(index, "unterminated quoted scalar")
            line = self.lines[i].strip()
            i += 1
            if line == "":
                text += "\n"
                after_empty = True
            elif text[0] == '"' and re.search(r"(?<!\\)(\\\\)*\\$", text):
                text = text[:-1] + line
            else:
                text += ("" if after_empty else " ") + line
                after_empty = False
        self.pos = i
        end = self._quote_end(text)
        if self._strip_comment(text[end + 1:]).strip():
            self._fail(index, "text after a quoted scalar")
        return self._quoted(text[:end + 1])

    def _flow_value(self, rest: str, index: int):
        text, i = rest, self.pos
        while self._unbalanced(text):
            if i >= self.end:
                self._fail(index, "unterminated flow collection")
            text += " " + self._strip_comment(self.lines[i].strip())
            i += 1
        self.pos = max(self.pos, i)
        value, end = self._flow(text, 0, index)
        if text[end:].strip():
            self._fail(index, "text after a flow collection")
        return value

    @staticmethod
    def _unbalanced(text: str) -> bool:
        depth, quote = 0, None
        for ch in text:
            if quote:
                if ch == quote:
                    quote = None
            elif ch in "'\"":
                quote = ch
            elif ch in "[{":
                depth += 1
            elif ch in "]}":
                depth -= 1
        return depth > 0

    def _flow(self, text: str, at: int, index: int):
        while text[at] == " ":
            at += 1
        opener = text[at]
        if opener in "[{":
            closer = "]" if opener == "[" else "}"
            items, mapping = [], {}
            at += 1
            while True:
                while at < len(text) and text[at] in " ,":
                    at += 1
                if at >= len(text):
                    self._fail(index, "unterminated flow collection")
                if text[at] == closer:
                    return (items if opener == "[" else mapping), at + 1
                item, at = self._flow(text, at, index)
                while at < len(text) and text[at] == " ":
                    at += 1
                if opener == "{":
                    if text[at] != ":":
                        self._fail(index, "expected ':' in a flow mapping")
                    value, at = self._flow(text, at + 1, index)
                    mapping[item] = value
                else:
                    items.append(item)
        if opener in "\"'":
            close = at + 1
            while True:
                close = text.index(opener, close)
                if opener == "'" and text[close + 1:close + 2] == "'":
                    close += 2
                    continue
                if opener == '"' and text[close - 1] == "\\":
                    close += 1
                    continue
                break
            return self._quoted(text[at:close + 1]), close + 1
        end = at
        while end < len(text) and text[end] not in ",]}" and not (text[end] == ":" and text[end + 1:end + 2] in (" ", "")):
            end += 1
        return self._scalar(text[at:end].strip(), index), end

    @staticmethod
    def _quoted(text: str) -> str:
        if text[0] == "'":
            return text[1:-1].replace("''", "'")
        return json.loads(text)

    def _scalar(self, text: str, index: int):
        if text[:1] in "\"'":
            if len(text) < 2 or text[-1] != text[0]:
                self._fail(index, "unsupported quoted scalar")
            try:
                return self._quoted(text)
            except json.JSONDecodeError:
                self._fail(index, "unsupported escape in a double-quoted scalar")
        if text in ("", "~", "null", "Null", "NULL"):
            return None
        if text in self._BOOL:
            return self._BOOL[text]
        if self._INT.match(text):
            return int(text.replace("_", ""))
        if self._FLOAT.match(text):
            return float(text.replace("_", ""))
        return text


def _pyyaml():
    if os.environ.get("FLASHMLA_CHECK_MINI_YAML") == "1":
        return None
    try:
        import yaml  # type: ignore
        return yaml
    except ImportError:
        return None


def load_yaml(path: Path) -> list:
    """Every document of a YAML file (empty documents dropped)."""
    text = path.read_text(encoding="utf-8")
    yaml = _pyyaml()
    if yaml is not None:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    return MiniYaml(text, str(path.relative_to(REPO))).documents()


def load_yaml_text(text: str, name: str) -> list:
    yaml = _pyyaml()
    if yaml is not None:
        return [d for d in yaml.safe_load_all(text) if d is not None]
    return MiniYaml(text, name).documents()


# --------------------------------------------------------------------------------------------------
# Reporting

class Report:
    def __init__(self):
        self.failures: list[str] = []
        self.passed = 0
        self.failed = 0
        self.notes: list[str] = []

    def check(self, name: str, func, *args):
        before = len(self.failures)
        try:
            func(self, *args)
        except (OSError, ValueError, KeyError, TypeError, IndexError, json.JSONDecodeError) as e:
            self.fail(f"{type(e).__name__}: {e}")
        if len(self.failures) == before:
            self.passed += 1
            print(f"ok    {name}")
        else:
            self.failed += 1
            print(f"FAIL  {name}")
            for message in self.failures[before:]:
                print(f"      - {message}")

    def fail(self, message: str):
        self.failures.append(message)

    def note(self, message: str):
        self.notes.append(message)


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------------------------
# Metric names

def dashboard_exprs(dashboard: dict) -> list[str]:
    """PromQL of every panel target and every query variable of a Grafana dashboard."""
    exprs: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for key in ("query", "definition"):
                value = node.get(key)
                if node.get("type") == "query" and isinstance(value, str):
                    exprs.append(value)
                if isinstance(value, dict) and isinstance(value.get("query"), str):
                    exprs.append(value["query"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(dashboard)
    return exprs


def rule_exprs(groups: list) -> list[str]:
    return [rule["expr"] for group in groups for rule in group.get("rules", []) if "expr" in rule]


def metric_names(exprs) -> set[str]:
    return {m for expr in exprs for m in METRIC_RE.findall(str(expr))}


def read_metrics_used() -> list[str]:
    names = []
    for line in METRICS_USED.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(line)
    return names


_UNIT_SUFFIX = {"s": "seconds", "ms": "milliseconds", "By": "bytes", "KiBy": "kibibytes",
                "MiBy": "mebibytes", "%": "percent"}


def exported_names_from_source(source: str) -> dict[str, str]:
    """The Prometheus names OpenTelemetry's exporter gives the instruments created in the source:
    dots to underscores, the unit's suffix unless the unit is a {annotation}, _total for monotonic
    counters, _bucket/_sum/_count for histograms. Maps exported name to instrument name."""
    names: dict[str, str] = {}
    create = re.compile(r"\.Create(ObservableCounter|ObservableUpDownCounter|ObservableGauge|UpDownCounter|"
                        r"Counter|Histogram|Gauge)\s*(?:<[^>]*>)?\s*\(\s*\"([^\"]+)\"")
    for m in create.finditer(source):
        kind, instrument = m.groups()
        unit_match = re.compile(r"\"([^\"]*)\"").search(source, m.end())
        unit = unit_match.group(1) if unit_match else ""
        base = re.sub(r"[^a-zA-Z0-9_]", "_", instrument)
        suffix = "" if unit.startswith("{") or unit in ("", "1") else _UNIT_SUFFIX.get(unit, "")
        if suffix and not base.endswith("_" + suffix):
            base += "_" + suffix
        if kind in ("Counter", "ObservableCounter"):
            names[base + "_total"] = instrument
        elif kind == "Histogram":
            for part in ("_bucket", "_sum", "_count"):
                names[base + part] = instrument
        else:
            names[base] = instrument
    return names


def check_metric_names(report: Report):
    used = read_metrics_used()
    listed = set(used)
    for name in sorted({n for n in used if used.count(n) > 1}):
        report.fail(f"{rel(METRICS_USED)} lists {name} more than once")
    for name in sorted(listed):
        if not re.fullmatch(r"flashmla_[a-z0-9_]+", name):
            report.fail(f"{rel(METRICS_USED)}: {name!r} is not a flashmla_ metric name")

    sources = {
        rel(DASHBOARD): metric_names(dashboard_exprs(json.loads(DASHBOARD.read_text(encoding="utf-8")))),
        rel(RULES): metric_names(rule_exprs(load_yaml(RULES)[0]["groups"])),
    }
    if PROMETHEUSRULE.exists():
        sources[rel(PROMETHEUSRULE)] = metric_names(rule_exprs(load_yaml(PROMETHEUSRULE)[0]["spec"]["groups"]))
    all_used = set().union(*sources.values())
    for where, names in sources.items():
        for name in sorted(names - listed):
            report.fail(f"{where} uses {name}, which is not in {rel(METRICS_USED)}")
    for name in sorted(listed - all_used):
        report.fail(f"{rel(METRICS_USED)} lists {name}, which no dashboard or rule uses (remove it)")

    if METRICS_SOURCE.exists():
        exported = exported_names_from_source(METRICS_SOURCE.read_text(encoding="utf-8"))
        if not exported:
            report.fail(f"found no instruments in {rel(METRICS_SOURCE)} (has the Meter API usage changed?)")
        for name in sorted(listed - exported.keys()):
            report.fail(f"{name} (in {rel(METRICS_USED)}) is not exported by any instrument of "
                        f"{rel(METRICS_SOURCE)}; exported: {', '.join(sorted(exported))}")
    else:
        report.note(f"{rel(METRICS_SOURCE)} not found: metric names checked against {rel(METRICS_USED)} only")


# --------------------------------------------------------------------------------------------------
# Prometheus rules: the file and its PrometheusRule copy

PROMETHEUSRULE_HEADER = """\
# GENERATED from deploy/prometheus/rules/flashmla.rules.yml by
# `python3 deploy/check_consistency.py --write-prometheusrule`. Do not edit: edit the rules file and
# regenerate (check_consistency.py fails while the two differ).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: flashmla
  labels:
    app.kubernetes.io/name: flashmla
spec:
"""


def render_prometheusrule() -> str:
    lines = RULES.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = ["  " + line if line.strip() else "" for line in lines[start:]]
    return PROMETHEUSRULE_HEADER + "\n".join(body).rstrip() + "\n"


def check_prometheusrule(report: Report):
    rules = load_yaml(RULES)[0]
    if not PROMETHEUSRULE.exists():
        report.fail(f"{rel(PROMETHEUSRULE)} is missing: run with --write-prometheusrule")
        return
    prometheusrule = load_yaml(PROMETHEUSRULE)[0]
    if prometheusrule.get("kind") != "PrometheusRule":
        report.fail(f"{rel(PROMETHEUSRULE)} is not a PrometheusRule")
    if prometheusrule.get("spec", {}).get("groups") != rules.get("groups"):
        report.fail(f"{rel(PROMETHEUSRULE)} differs from {rel(RULES)}: run "
                    "`python3 deploy/check_consistency.py --write-prometheusrule`")
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                    report.fail(f"alert {rule['alert']} needs labels.severity critical|warning|info")
                if not rule.get("annotations", {}).get("summary"):
                    report.fail(f"alert {rule['alert']} needs annotations.summary")
    jobs = set(re.findall(r'job\s*=~?\s*"([^"]*)"', " ".join(rule_exprs(rules["groups"]))))
    if jobs - {JOB_NAME}:
        report.fail(f"{rel(RULES)} selects job(s) {sorted(jobs - {JOB_NAME})}; the scrape job is {JOB_NAME!r}")


# --------------------------------------------------------------------------------------------------
# Dockerfile

def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comment lines dropped."""
    instructions, current = [], ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            word, _, rest = current.strip().partition(" ")
            instructions.append((word.upper(), rest.strip()))
        current = ""
    return instructions


def dockerfile_env(instructions) -> dict[str, str]:
    env = {}
    for word, rest in instructions:
        if word == "ENV":
            for m in re.finditer(r'([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S*)', rest):
                value = m.group(2)
                env[m.group(1)] = value[1:-1] if value.startswith('"') else value
    return env


def project_closure(csproj: Path) -> list[Path]:
    """The project and every project it references, transitively."""
    seen: list[Path] = []
    todo = [csproj.resolve()]
    while todo:
        project = todo.pop()
        if project in seen:
            continue
        seen.append(project)
        for ref in re.findall(r'<ProjectReference\s+Include="([^"]+)"', project.read_text(encoding="utf-8")):
            todo.append((project.parent / ref.replace("\\", "/")).resolve())
    return seen


def check_dockerfile(report: Report):
    instructions = dockerfile_instructions()
    env = dockerfile_env(instructions)

    exposed = set()
    for word, rest in instructions:
        if word == "EXPOSE":
            exposed |= {int(p.split("/")[0]) for p in rest.split()}
    if exposed != set(CONTAINER_PORTS.values()):
        report.fail(f"Dockerfile EXPOSE {sorted(exposed)}; expected {sorted(CONTAINER_PORTS.values())}")
    for key, port in PORT_OPTIONS:
        if env.get(key) != str(port):
            report.fail(f"Dockerfile ENV {key}={env.get(key)!r}; expected {port}")
    health = HEALTHCHECK.read_text(encoding="utf-8")
    if f"${{FlashMla__MetricsPort:-{METRICS_PORT}}}" not in health or "/healthz" not in health:
        report.fail(f"{rel(HEALTHCHECK)} must GET /healthz on ${{FlashMla__MetricsPort:-{METRICS_PORT}}}")
    if not any(w == "HEALTHCHECK" and "flashmla-healthcheck" in r for w, r in instructions):
        report.fail("Dockerfile HEALTHCHECK does not run flashmla-healthcheck")
    if not any(w == "COPY" and rel(HEALTHCHECK) in r and "/usr/local/bin/flashmla-healthcheck" in r
               for w, r in instructions):
        report.fail(f"Dockerfile does not COPY {rel(HEALTHCHECK)} to /usr/local/bin/flashmla-healthcheck")
    if not any(w == "USER" for w, _ in instructions):
        report.fail("Dockerfile runtime stage sets no USER (must run as non-root)")

    # The fatbin: built by native/build.sh into native/build/flashmla.fatbin, copied next to the
    # server, and named by FatbinPath.
    fatbin_copies = [r for w, r in instructions if w == "COPY" and "--from=kernels" in r]
    expected_source = f"native/build/{FATBIN_NAME}"
    if not any(expected_source in r for r in fatbin_copies):
        report.fail(f"Dockerfile copies no {expected_source} from the kernels stage")
    destination = fatbin_copies[0].split()[-1] if fatbin_copies else None
    if env.get("FlashMla__FatbinPath") != destination:
        report.fail(f"Dockerfile ENV FlashMla__FatbinPath={env.get('FlashMla__FatbinPath')!r} but the fatbin "
                    f"is copied to {destination!r}")
    if destination and not destination.endswith("/" + FATBIN_NAME):
        report.fail(f"fatbin copied to {destination}: the server's default FatbinPath is {FATBIN_NAME} "
                    "next to the executable")
    if not any(w == "RUN" and "native/build.sh" in r and expected_source in r for w, r in instructions):
        report.fail(f"Dockerfile kernels stage must run native/build.sh and check {expected_source}")
    if NATIVE_BUILD.exists():
        script = NATIVE_BUILD.read_text(encoding="utf-8")
        if FATBIN_NAME not in script or "build" not in script:
            report.fail(f"{rel(NATIVE_BUILD)} does not mention {FATBIN_NAME}: the Dockerfile expects it "
                        f"to write {expected_source}")
        if "sm_90a" not in script:
            report.fail(f"{rel(NATIVE_BUILD)} does not target sm_90a")
    else:
        report.note(f"{rel(NATIVE_BUILD)} not found: its output path was not checked")

    # Restore layer: every project the server needs is copied before the restore.
    copies_before_restore = []
    for word, rest in instructions:
        if word == "RUN" and "dotnet restore" in rest:
            break
        if word == "COPY":
            copies_before_restore.append(rest)
    if SERVER_CSPROJ.exists():
        for project in project_closure(SERVER_CSPROJ):
            path = rel(project)
            if not any(path in c for c in copies_before_restore):
                report.fail(f"Dockerfile restore layer does not COPY {path} (referenced by the server)")
    for name in ("global.json", "Directory.Build.props", "Directory.Packages.props"):
        if (REPO / name).exists() and not any(name in c for c in copies_before_restore):
            report.fail(f"Dockerfile restore layer does not COPY {name}")
    if not any(w == "RUN" and "dotnet publish" in r and rel(SERVER_CSPROJ) in r for w, r in instructions):
        report.fail(f"Dockerfile does not publish {rel(SERVER_CSPROJ)}")
    if not any(w == "ENTRYPOINT" and "flashmla-server.dll" in r for w, r in instructions):
        report.fail("Dockerfile ENTRYPOINT does not start flashmla-server.dll")


# --------------------------------------------------------------------------------------------------
# docker-compose.yml, the compose Prometheus and Grafana

def compose_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: str(v) for k, v in env.items()}


def container_ports(service: dict) -> set[int]:
    ports = set()
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            ports.add(int(port["target"]))
        else:
            ports.add(int(str(port).split("/")[0].split(":")[-1]))
    return ports


def duration_seconds(text) -> float:
    total = 0.0
    for amount, unit in re.findall(r"([0-9.]+)(ms|h|m|s)", str(text)):
        total += float(amount) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def check_compose(report: Report):
    compose = load_yaml(COMPOSE)[0]
    services = compose["services"]
    servers = {name: s for name, s in services.items() if "FlashMla__Backend" in compose_env(s)}
    if not servers:
        report.fail("docker-compose.yml has no service with FlashMla__Backend")
    profiles = {}
    for name, service in servers.items():
        env = compose_env(service)
        for key, port in PORT_OPTIONS:
            if env.get(key, str(port)) != str(port):
                report.fail(f"compose service {name}: {key}={env[key]}; expected {port}")
        if container_ports(service) != set(CONTAINER_PORTS.values()):
            report.fail(f"compose service {name} publishes container ports {sorted(container_ports(service))}; "
                        f"expected {sorted(CONTAINER_PORTS.values())}")
        if duration_seconds(service.get("stop_grace_period", "10s")) < DRAIN_SECONDS + 5:
            report.fail(f"compose service {name}: stop_grace_period {service.get('stop_grace_period')} is "
                        f"shorter than the drain ({DRAIN_SECONDS} s) plus margin")
        aliases = (((service.get("networks") or {}).get("default") or {}).get("aliases") or [])
        if name != "flashmla" and "flashmla" not in aliases:
            report.fail(f"compose service {name} is not reachable as 'flashmla' (Prometheus' target)")
        devices = (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices")
        backend = env["FlashMla__Backend"]
        for profile in service.get("profiles") or []:
            profiles[profile] = (name, backend, bool(devices))
        if backend == "cuda" and not devices:
            report.fail(f"compose service {name} uses the cuda backend without a GPU reservation")
        if devices and not any(d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or [])
                               for d in devices):
            report.fail(f"compose service {name}: GPU reservation must be driver nvidia, capabilities [gpu]")
    if "cpu" not in profiles or profiles["cpu"][1] != "cpu" or profiles["cpu"][2]:
        report.fail("compose profile 'cpu' must run the server with FlashMla__Backend=cpu and no GPU reservation")

    # Prometheus scrapes the server's metrics port, loads the rules, and compose mounts both.
    prom = load_yaml(PROM_CONFIG)[0]
    jobs = {job["job_name"]: job for job in prom["scrape_configs"]}
    if JOB_NAME not in jobs:
        report.fail(f"{rel(PROM_CONFIG)} has no job {JOB_NAME!r}")
    else:
        targets = [t for sc in jobs[JOB_NAME].get("static_configs", []) for t in sc.get("targets", [])]
        if targets != [f"flashmla:{METRICS_PORT}"]:
            report.fail(f"{rel(PROM_CONFIG)} job {JOB_NAME} targets {targets}; expected ['flashmla:{METRICS_PORT}']")
    if "rules/*.yml" not in (prom.get("rule_files") or []):
        report.fail(f"{rel(PROM_CONFIG)} does not load rules/*.yml")
    volumes = " ".join(str(v) for v in services.get("prometheus", {}).get("volumes", []))
    for needed in ("./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml",
                   "./deploy/prometheus/rules:/etc/prometheus/rules"):
        if needed not in volumes:
            report.fail(f"compose prometheus does not mount {needed}")

    # Grafana: the provisioned datasource points at Prometheus; the provider reads the mounted dashboards.
    grafana = services.get("grafana", {})
    volumes = [str(v) for v in grafana.get("volumes", [])]
    provider = load_yaml(GRAFANA_PROVIDER)[0]["providers"][0]
    mount = next((v.split(":")[1] for v in volumes if v.startswith("./deploy/grafana/dashboards:")), None)
    if mount != provider["options"]["path"]:
        report.fail(f"Grafana provider reads {provider['options']['path']} but compose mounts the dashboards at {mount}")
    if not any(v.startswith("./deploy/grafana/provisioning:/etc/grafana/provisioning") for v in volumes):
        report.fail("compose grafana does not mount deploy/grafana/provisioning at /etc/grafana/provisioning")
    home = compose_env(grafana).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home and mount and home != f"{mount}/{DASHBOARD.name}":
        report.fail(f"GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH={home} is not {mount}/{DASHBOARD.name}")
    datasource = load_yaml(GRAFANA_DATASOURCE)[0]["datasources"][0]
    if datasource["url"] != "http://prometheus:9090":
        report.fail(f"{rel(GRAFANA_DATASOURCE)} url {datasource['url']} is not the compose Prometheus")


def check_dashboard(report: Report):
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [p["id"] for p in dashboard["panels"]]
    if len(ids) != len(set(ids)):
        report.fail(f"{rel(DASHBOARD)} has duplicate panel ids")
    if not dashboard.get("uid"):
        report.fail(f"{rel(DASHBOARD)} has no uid (provisioned links break without one)")
    variables = {v["name"] for v in dashboard.get("templating", {}).get("list", [])}
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        targets = panel.get("targets") or []
        if not targets:
            report.fail(f"panel {panel['title']!r} has no query")
        for target in targets:
            if not target.get("expr"):
                report.fail(f"panel {panel['title']!r} has a target without expr")
            uid = (target.get("datasource") or panel.get("datasource") or {}).get("uid", "")
            if uid.startswith("$") and uid.strip("${}") not in variables:
                report.fail(f"panel {panel['title']!r} uses datasource {uid}, which is not a dashboard variable")
            for var in re.findall(r"\$([a-z_]+)", target.get("expr", "")):
                if var not in variables and not var.startswith("__"):
                    report.fail(f"panel {panel['title']!r} uses ${var}, which is not a dashboard variable")


# --------------------------------------------------------------------------------------------------
# Kubernetes

def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip()
    return env


def tool(name: str):
    return shutil.which(name) if USE_TOOLS else None


def kustomize_command():
    if tool("kustomize"):
        return ["kustomize", "build"]
    if tool("kubectl"):
        return ["kubectl", "kustomize"]
    return None




def k8s_variants(report: Report) -> list[tuple[str, list, dict]]:
    """(name, documents, options env) for the base and each overlay: rendered with kustomize when it
    is available, else the base's files read directly (with each overlay's env file merged)."""
    variants = []
    command = kustomize_command()
    directories = [K8S_BASE] + sorted(p for p in K8S_OVERLAYS.iterdir() if (p / "kustomization.yaml").exists())
    if command:
        for directory in directories:
            done = subprocess.run(command + [str(directory)], capture_output=True, text=True)
            if done.returncode != 0:
                report.fail(f"{' '.join(command)} {rel(directory)} failed: {done.stderr.strip()}")
                continue
            docs = load_yaml_text(done.stdout, f"<{' '.join(command)} {rel(directory)}>")
            env = {}
            for doc in docs:
                if doc.get("kind") == "ConfigMap" and doc["metadata"]["name"].startswith("flashmla-config"):
                    env = {k: str(v) for k, v in (doc.get("data") or {}).items()}
            variants.append((rel(directory), docs, env))
        return variants
    report.note("kustomize/kubectl not found: checked the base manifests as written, overlays' patches not rendered")
    base_docs = []
    for resource in load_yaml(K8S_BASE / "kustomization.yaml")[0]["resources"]:
        base_docs += load_yaml(K8S_BASE / resource)
    base_env = read_env_file(K8S_BASE / "flashmla.env")
    variants.append((rel(K8S_BASE), base_docs, base_env))
    for directory in directories[1:]:
        env = dict(base_env)
        if (directory / "flashmla.env").exists():
            env.update(read_env_file(directory / "flashmla.env"))
        variants.append((rel(directory), base_docs, env))
    return variants


def check_k8s(report: Report):
    fatbin_in_image = dockerfile_env(dockerfile_instructions()).get("FlashMla__FatbinPath")
    for name, docs, env in k8s_variants(report):
        where = f"[{name}]"
        by_kind: dict[str, list] = {}
        for doc in docs:
            by_kind.setdefault(doc["kind"], []).append(doc)
        deployments = [d for d in by_kind.get("Deployment", []) if d["metadata"]["name"] == "flashmla"]
        if len(deployments) != 1:
            report.fail(f"{where} expected one Deployment 'flashmla', found {len(deployments)}")
            continue
        deployment = deployments[0]
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        if ports != CONTAINER_PORTS:
            report.fail(f"{where} container ports {ports}; expected {CONTAINER_PORTS}")

        for key, port in PORT_OPTIONS:
            if env.get(key) != str(port):
                report.fail(f"{where} ConfigMap {key}={env.get(key)!r}; expected {port}")
        if "FlashMla__FatbinPath" in env and env["FlashMla__FatbinPath"] != fatbin_in_image:
            report.fail(f"{where} ConfigMap FlashMla__FatbinPath={env['FlashMla__FatbinPath']} but the image "
                        f"has the fatbin at {fatbin_in_image}")
        if env.get("FlashMla__Backend") != "cuda":
            report.fail(f"{where} FlashMla__Backend={env.get('FlashMla__Backend')!r}: GPU pods should use cuda")
        config_refs = [s["configMapRef"]["name"] for s in container.get("envFrom", []) if "configMapRef" in s]
        config_maps = [d["metadata"]["name"] for d in by_kind.get("ConfigMap", [])]
        if not any(ref in config_maps for ref in config_refs) and kustomize_command():
            report.fail(f"{where} envFrom {config_refs} names no rendered ConfigMap ({config_maps})")

        for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = container.get(probe_name)
            if not probe or "grpc" not in probe:
                report.fail(f"{where} {probe_name} must be a gRPC health probe")
            elif probe["grpc"].get("port") != GRPC_PORT:
                report.fail(f"{where} {probe_name} probes port {probe['grpc'].get('port')}; expected {GRPC_PORT}")
        readiness_service = (container.get("readinessProbe") or {}).get("grpc", {}).get("service")
        if readiness_service != "flashmla.v1.Decoder":
            report.fail(f"{where} readinessProbe should check service flashmla.v1.Decoder, not {readiness_service!r}")

        limits = container.get("resources", {}).get("limits", {})
        if str(limits.get("nvidia.com/gpu")) != "1":
            report.fail(f"{where} container must limit nvidia.com/gpu to 1 (one server owns one GPU)")
        security = container.get("securityContext", {})
        if not (security.get("readOnlyRootFilesystem") and security.get("allowPrivilegeEscalation") is False
                and security.get("capabilities", {}).get("drop") == ["ALL"]):
            report.fail(f"{where} container securityContext must be read-only, no privilege escalation, drop ALL")
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            report.fail(f"{where} pod securityContext must set runAsNonRoot")

        grace = pod.get("terminationGracePeriodSeconds", 30)
        pre_stop = container.get("lifecycle", {}).get("preStop", {})
        command = pre_stop.get("exec", {}).get("command", [])
        pre_stop_seconds = (pre_stop.get("sleep", {}).get("seconds", 0) or
                            (float(command[1]) if command[:1] == ["sleep"] and len(command) > 1 else 0))
        if grace < pre_stop_seconds + DRAIN_SECONDS + 5:
            report.fail(f"{where} terminationGracePeriodSeconds {grace} < preStop {pre_stop_seconds} s + "
                        f"drain {DRAIN_SECONDS} s + 5 s margin")

        selector = deployment["spec"]["selector"]["matchLabels"]
        services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
        headless = [s for s in services.values() if s["spec"].get("clusterIP") == "None"]
        balanced = [s for s in services.values() if s["spec"].get("clusterIP") != "None"]
        if len(headless) != 1 or len(balanced) != 1:
            report.fail(f"{where} expected one headless and one cluster-IP Service, found "
                        f"{[s['metadata']['name'] for s in services.values()]}")
        for service in services.values():
            sname = service["metadata"]["name"]
            if service["spec"].get("selector") != selector:
                report.fail(f"{where} Service {sname} selector {service['spec'].get('selector')} is not the "
                            f"Deployment's {selector}")
            for port in service["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                number = ports.get(target, target)
                if number not in ports.values():
                    report.fail(f"{where} Service {sname} port {port['name']} targets {target}, not a container port")
                elif port["port"] != number:
                    report.fail(f"{where} Service {sname} exposes {port['name']} on {port['port']}, the container "
                                f"on {number}: keep them equal")
                if (number in (CONTAINER_PORTS[n] for n in H2C_PORT_NAMES)
                        and port.get("appProtocol") != "kubernetes.io/h2c"):
                    report.fail(f"{where} Service {sname} port {port['name']} carries HTTP/2 cleartext: "
                                "appProtocol must be kubernetes.io/h2c")
        for service in headless:
            if service["spec"].get("publishNotReadyAddresses"):
                report.fail(f"{where} headless Service must not publish not-ready (draining) pods")
            headless_ports = {p["port"] for p in service["spec"]["ports"]}
            if METRICS_PORT in headless_ports:
                report.fail(f"{where} headless Service should carry gRPC and the data plane only")
            for port_name in H2C_PORT_NAMES:
                if CONTAINER_PORTS[port_name] not in headless_ports:
                    report.fail(f"{where} headless Service lacks port {port_name} ({CONTAINER_PORTS[port_name]}): "
                                "clients reach each pod's listeners through it")

        pdbs = by_kind.get("PodDisruptionBudget", [])
        if len(pdbs) != 1 or pdbs[0]["spec"]["selector"]["matchLabels"] != selector:
            report.fail(f"{where} expected one PodDisruptionBudget selecting {selector}")

        for monitor in by_kind.get("ServiceMonitor", []):
            wanted = monitor["spec"]["selector"]["matchLabels"]
            matched = [s for s in services.values()
                       if all(s["metadata"].get("labels", {}).get(k) == v for k, v in wanted.items())]
            if len(matched) != 1:
                report.fail(f"{where} ServiceMonitor selects {len(matched)} Services; it must select exactly one "
                            "(the balanced one), or every series is scraped twice")
            else:
                service_ports = {p["name"] for p in matched[0]["spec"]["ports"]}
                for endpoint in monitor["spec"]["endpoints"]:
                    if endpoint.get("port") not in service_ports:
                        report.fail(f"{where} ServiceMonitor endpoint port {endpoint.get('port')} is not a port of "
                                    f"Service {matched[0]['metadata']['name']}")
                job = matched[0]["metadata"].get("labels", {}).get(monitor["spec"].get("jobLabel", ""),
                                                                   matched[0]["metadata"]["name"])
                if job != JOB_NAME:
                    report.fail(f"{where} ServiceMonitor gives job {job!r}; the rules expect {JOB_NAME!r}")

    # The plain-Prometheus job for Kubernetes: the same job name, the container's metrics port by name.
    scrape = load_yaml(PROM_K8S_SCRAPE)[0]
    job = next((j for j in scrape if j.get("job_name") == JOB_NAME), None)
    if job is None:
        report.fail(f"{rel(PROM_K8S_SCRAPE)} has no job {JOB_NAME!r}")
    else:
        keeps = {tuple(r.get("source_labels", [])): r.get("regex") for r in job.get("relabel_configs", [])
                 if r.get("action") == "keep"}
        if keeps.get(("__meta_kubernetes_pod_container_port_name",)) != "metrics":
            report.fail(f"{rel(PROM_K8S_SCRAPE)} must keep container port 'metrics' only")
        if keeps.get(("__meta_kubernetes_pod_label_app_kubernetes_io_name",)) != APP_NAME:
            report.fail(f"{rel(PROM_K8S_SCRAPE)} must keep pods labelled app.kubernetes.io/name={APP_NAME}")


# --------------------------------------------------------------------------------------------------
# Optional: promtool

def check_promtool(report: Report):
    promtool = tool("promtool")
    if not promtool:
        report.note("promtool not found: rule syntax, rule unit tests and dashboard PromQL were not checked")
        return
    for args in (["check", "rules", str(RULES)], ["test", "rules", str(RULES_TEST)]):
        done = subprocess.run([promtool] + args, capture_output=True, text=True)
        if done.returncode != 0:
            report.fail(f"promtool {' '.join(args[:2])} {rel(Path(args[2]))}:\n{done.stdout}{done.stderr}")
    # The dashboard's queries, with Grafana's variables filled in, as recording rules promtool parses.
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exprs = [e for e in dashboard_exprs(dashboard) if not e.startswith("label_values(")]
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        f.write("groups:\n  - name: dashboard\n    rules:\n")
        for i, expr in enumerate(exprs):
            expr = (expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
                    .replace("$job", ".+").replace("$instance", ".+"))
            f.write(f"      - record: dashboard:query_{i}\n        expr: {json.dumps(expr)}\n")
        path = f.name
    try:
        done = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
        if done.returncode != 0:
            report.fail(f"a dashboard query does not parse as PromQL:\n{done.stdout}{done.stderr}")
    finally:
        os.unlink(path)


# --------------------------------------------------------------------------------------------------

def yaml_files() -> list[Path]:
    files = [COMPOSE] + sorted(DEPLOY.rglob("*.yml")) + sorted(DEPLOY.rglob("*.yaml"))
    return [f for f in files if f.exists()]


def compare_parsers() -> int:
    os.environ.pop("FLASHMLA_CHECK_MINI_YAML", None)
    yaml = _pyyaml()
    if yaml is None:
        print("PyYAML is not installed: nothing to compare against")
        return 2
    sources = [(rel(path), path.read_text(encoding="utf-8")) for path in yaml_files()]
    command = kustomize_command()
    if command:
        for directory in [K8S_BASE] + sorted(p for p in K8S_OVERLAYS.iterdir() if (p / "kustomization.yaml").exists()):
            done = subprocess.run(command + [str(directory)], capture_output=True, text=True, check=True)
            sources.append((f"<{' '.join(command)} {rel(directory)}>", done.stdout))
    differing = 0
    for name, text in sources:
        expected = [d for d in yaml.safe_load_all(text) if d is not None]
        try:
            got = MiniYaml(text, name).documents()
        except YamlSubsetError as e:
            print(f"FAIL  {name}: {e}")
            differing += 1
            continue
        if got != expected:
            print(f"FAIL  {name}: the built-in reader disagrees with PyYAML")
            differing += 1
        else:
            print(f"ok    {name}")
    return 1 if differing else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write-prometheusrule", action="store_true",
                        help=f"regenerate {rel(PROMETHEUSRULE)} from {rel(RULES)}, then check")
    parser.add_argument("--mini-yaml", action="store_true", help="use the built-in YAML reader even if PyYAML is installed")
    parser.add_argument("--compare-parsers", action="store_true",
                        help="check that the built-in YAML reader reads every deployment file as PyYAML does")
    parser.add_argument("--no-tools", action="store_true", help="skip promtool and kustomize even if installed")
    args = parser.parse_args()

    if args.compare_parsers:
        return compare_parsers()
    if args.mini_yaml:
        os.environ["FLASHMLA_CHECK_MINI_YAML"] = "1"
    if args.no_tools:
        global USE_TOOLS
        USE_TOOLS = False
    if args.write_prometheusrule:
        PROMETHEUSRULE.write_text(render_prometheusrule(), encoding="utf-8")
        print(f"wrote {rel(PROMETHEUSRULE)}")

    print(f"YAML reader: {'PyYAML' if _pyyaml() else 'built-in subset reader'}")
    report = Report()
    report.check("metric names: dashboard and rules use exactly deploy/metrics-used.txt, all exported",
                 check_metric_names)
    report.check("Prometheus rules: PrometheusRule matches the rules file, alerts well-formed", check_prometheusrule)
    report.check("Dockerfile: ports, health check, fatbin path, restore layer", check_dockerfile)
    report.check("docker-compose.yml: ports, profiles, GPU reservation, Prometheus and Grafana wiring", check_compose)
    report.check("Grafana dashboard: panels, queries, variables", check_dashboard)
    report.check("Kubernetes: ports, probes, ConfigMap, Services, PDB, ServiceMonitor, drain time", check_k8s)
    report.check("promtool: rule syntax, rule unit tests, dashboard PromQL", check_promtool)
    for note in report.notes:
        print(f"note  {note}")
    print(f"{report.passed} passed, {report.failed} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
