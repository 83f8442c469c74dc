#!/usr/bin/env python3
"""The Prometheus Operator's PrometheusRule is a generated copy of deploy/prometheus/rules/flashmla.rules.yml (the
one source of the rules): check that the copy matches and that every alert carries what receivers route on.

    python3 deploy/checks/prometheusrule.py           # check
    python3 deploy/checks/prometheusrule.py --write   # regenerate the copy after editing the rules file, then check
"""

from __future__ import annotations

import re
import sys

from checklib import JOB_NAME, PROMETHEUSRULE, RULES, load_yaml, rel, run_and_exit

HEADER = f"""\
# GENERATED from {rel(RULES)} by `python3 deploy/checks/prometheusrule.py --write`.
# Do not edit: edit the rules file and regenerate (CI fails while the two differ).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: flashmla
  labels:
    app.kubernetes.io/name: flashmla
spec:
"""


def render() -> str:
    """The rules file's `groups:` and everything after it, comments included, indented under spec."""
    lines = RULES.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    return HEADER + "\n".join("  " + line if line.strip() else "" for line in lines[start:]).rstrip() + "\n"


def check_copy():
    copy = load_yaml(PROMETHEUSRULE)[0]
    if copy.get("kind") != "PrometheusRule":
        yield f"{rel(PROMETHEUSRULE)} is not a PrometheusRule"
    if copy.get("spec", {}).get("groups") != load_yaml(RULES)[0]["groups"]:
        yield f"{rel(PROMETHEUSRULE)} differs from {rel(RULES)}: run `python3 deploy/checks/prometheusrule.py --write`"


def check_alerts():
    groups = load_yaml(RULES)[0]["groups"]
    for rule in (r for g in groups for r in g["rules"] if "alert" in r):
        if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
            yield f"alert {rule['alert']} needs labels.severity: critical, warning or info"
        if not rule.get("annotations", {}).get("summary"):
            yield f"alert {rule['alert']} needs annotations.summary"
    jobs = {j for g in groups for r in g["rules"] for j in re.findall(r'job\s*=~?\s*"([^"]*)"', r.get("expr", ""))}
    if jobs - {JOB_NAME}:
        yield f"the rules select job(s) {sorted(jobs - {JOB_NAME})}; the scrape job is {JOB_NAME!r}"


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        PROMETHEUSRULE.write_text(render(), encoding="utf-8")
        print(f"wrote {rel(PROMETHEUSRULE)}")
    elif sys.argv[1:]:
        sys.exit(__doc__)
    run_and_exit([
        ("the PrometheusRule is the rules file", check_copy),
        ("every alert has a severity and a summary; the rules select the flashmla job", check_alerts),
    ])
