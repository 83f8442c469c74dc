#!/usr/bin/env python3
"""Prints the Grafana dashboard's queries as a Prometheus rules file (one recording rule per query, Grafana's
variables filled in), so that promtool parses every panel's PromQL:

    python3 deploy/checks/dashboard_rules.py > /tmp/dashboard.rules.yml && promtool check rules /tmp/dashboard.rules.yml
"""

from __future__ import annotations

import json
import sys

import yaml

from checklib import DASHBOARD
from metric_names import dashboard_exprs

# Grafana's built-in and dashboard variables, replaced by values PromQL accepts.
VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$job": ".+", "$instance": ".+"}


def rules() -> dict:
    queries = [e for e in dashboard_exprs(json.loads(DASHBOARD.read_text(encoding="utf-8")))
               if not e.startswith("label_values(")]
    for name, value in VARIABLES.items():
        queries = [q.replace(name, value) for q in queries]
    return {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:query_{i}", "expr": q}
                                                      for i, q in enumerate(queries)]}]}


if __name__ == "__main__":
    yaml.safe_dump(rules(), sys.stdout, sort_keys=False, width=1000)
