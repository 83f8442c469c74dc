#!/usr/bin/env python3
"""Metric names: the dashboard and the alert rules use exactly the series listed in deploy/metrics-used.txt, and
each listed series follows from an instrument the server creates (FlashMlaMetrics.cs), under the Prometheus
exporter's naming rules. No tool checks PromQL against C# source; promtool checks the PromQL itself."""

from __future__ import annotations

import json
import re

from checklib import DASHBOARD, METRICS_USED, PROMETHEUSRULE, RULES, load_yaml, rel, run_and_exit, source_file

METRIC_RE = re.compile(r"(?<![A-Za-z0-9_:])flashmla_[a-z0-9_]+")
# The OpenTelemetry Prometheus exporter appends the unit's name; units in braces ({request}) add nothing.
UNIT_SUFFIX = {"s": "seconds", "ms": "milliseconds", "By": "bytes"}


def dashboard_exprs(node) -> list[str]:
    """PromQL of every panel target and query variable of a Grafana dashboard."""
    if isinstance(node, list):
        return [e for item in node for e in dashboard_exprs(item)]
    if not isinstance(node, dict):
        return []
    exprs = [node["expr"]] if isinstance(node.get("expr"), str) else []
    query = node.get("query")
    if isinstance(query, dict) and isinstance(query.get("query"), str):
        exprs.append(query["query"])
    elif node.get("type") == "query" and isinstance(query, str):
        exprs.append(query)
    return exprs + [e for value in node.values() for e in dashboard_exprs(value)]


def rule_exprs(groups: list) -> list[str]:
    return [rule["expr"] for group in groups for rule in group.get("rules", []) if "expr" in rule]


def listed_names() -> list[str]:
    lines = (line.strip() for line in METRICS_USED.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def exported_names() -> set[str]:
    """The series the exporter makes of each instrument created in FlashMlaMetrics.cs: dots to underscores, the
    unit's suffix, _total for counters, _bucket/_sum/_count for histograms."""
    source = source_file("FlashMlaMetrics.cs").read_text(encoding="utf-8")
    create = re.compile(r"\.Create(ObservableCounter|ObservableUpDownCounter|ObservableGauge|UpDownCounter|Counter|"
                        r"Histogram|Gauge)\s*(?:<[^>]*>)?\s*\(\s*\"([^\"]+)\"(?:\s*,\s*(?:\(\)\s*=>[^,]+,\s*)?\"([^\"]*)\")?")
    names = set()
    for kind, instrument, unit in create.findall(source):
        base = instrument.replace(".", "_")
        suffix = UNIT_SUFFIX.get(unit, "")
        if suffix and not base.endswith("_" + suffix):
            base += "_" + suffix
        if kind in ("Counter", "ObservableCounter"):
            names.add(base + "_total")
        elif kind == "Histogram":
            names |= {base + "_bucket", base + "_sum", base + "_count"}
        else:
            names.add(base)
    return names


def check_list():
    names = listed_names()
    if not names:
        yield f"{rel(METRICS_USED)} lists no names"
    for name in sorted({n for n in names if names.count(n) > 1}):
        yield f"{rel(METRICS_USED)} lists {name} more than once"
    for name in names:
        if not re.fullmatch(r"flashmla_[a-z0-9_]+", name):
            yield f"{rel(METRICS_USED)}: {name!r} is not a flashmla_ series name"


def check_used_equals_listed():
    listed = set(listed_names())
    used_by = {
        rel(DASHBOARD): dashboard_exprs(json.loads(DASHBOARD.read_text(encoding="utf-8"))),
        rel(RULES): rule_exprs(load_yaml(RULES)[0]["groups"]),
        rel(PROMETHEUSRULE): rule_exprs(load_yaml(PROMETHEUSRULE)[0]["spec"]["groups"]),
    }
    used = {where: {m for e in exprs for m in METRIC_RE.findall(e)} for where, exprs in used_by.items()}
    for where, names in used.items():
        for name in sorted(names - listed):
            yield f"{where} uses {name}, which {rel(METRICS_USED)} does not list"
    for name in sorted(listed - set().union(*used.values())):
        yield f"{rel(METRICS_USED)} lists {name}, which no dashboard panel or rule uses"


def check_listed_are_exported():
    exported = exported_names()
    if not exported:
        yield "found no instruments in FlashMlaMetrics.cs (has its use of the Meter API changed?)"
        return
    for name in sorted(set(listed_names()) - exported):
        yield f"{name} is not made by any instrument of FlashMlaMetrics.cs (it makes {', '.join(sorted(exported))})"


if __name__ == "__main__":
    run_and_exit([
        ("metrics-used.txt: one flashmla_ series per line, no repeats", check_list),
        ("the dashboard, the rules and the PrometheusRule use exactly the series metrics-used.txt lists",
         check_used_equals_listed),
        ("every series metrics-used.txt lists comes from an instrument in FlashMlaMetrics.cs", check_listed_are_exported),
    ])
