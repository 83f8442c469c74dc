"""What the deploy checks share: the repository's paths, YAML read by PyYAML, the server's option defaults
read from its options class, and a runner that prints one line per check and the counts .ci/run adds up."""

from __future__ import annotations

import re
import sys
import traceback
from pathlib import Path
from typing import Callable, Iterable

import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILE = REPO / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
RULES = DEPLOY / "prometheus" / "rules" / "flashmla.rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "flashmla.json"
PROMETHEUSRULE = DEPLOY / "k8s" / "components" / "prometheus-operator" / "prometheusrule.yaml"
METRICS_USED = DEPLOY / "metrics-used.txt"

# The scrape job's name: the rules' target-down alert selects job="flashmla".
JOB_NAME = "flashmla"


def rel(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def load_yaml(path: Path) -> list:
    """Every document of a YAML file (or of kubectl kustomize's output), empty ones dropped."""
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def source_file(name: str) -> Path:
    """The one file under src/ called <name>: found by name, so a move between folders does not break the checks."""
    found = [p for p in (REPO / "src").rglob(name) if "bin" not in p.parts and "obj" not in p.parts]
    if len(found) != 1:
        raise LookupError(f"expected one {name} under src/, found {[rel(p) for p in found]}")
    return found[0]


def option_defaults() -> dict[str, float]:
    """The server's numeric options whose default is a literal, as FlashMlaOptions declares them
    (`public int GrpcPort { get; set; } = 50051;`)."""
    text = source_file("FlashMlaOptions.cs").read_text(encoding="utf-8")
    declared = re.finditer(r"public\s+(?:int|long|double)\s+(\w+)\s*\{\s*get;\s*set;\s*\}\s*=\s*(-?[0-9_]+(?:\.[0-9]+)?)\s*;", text)
    return {m.group(1): float(m.group(2)) if "." in m.group(2) else int(m.group(2)) for m in declared}


def dockerfile_instructions() -> list[str]:
    """One line per instruction: comment lines dropped (as Docker drops them, also inside a continuation), then
    continuations joined."""
    kept = [line for line in DOCKERFILE.read_text(encoding="utf-8").splitlines() if not line.strip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(kept))
    return [line.strip() for line in joined.splitlines() if line.strip()]



def dockerfile_env() -> dict[str, str]:
    """The FlashMla__X=value pairs the Dockerfile's ENV instructions set."""
    env = " ".join(line for line in dockerfile_instructions() if line.startswith("ENV"))
    return dict(re.findall(r"(FlashMla__\w+)=(\S+)", env))


class Checks:
    """Runs named checks; a check is a function yielding problems (strings): none means it passed."""

    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def run(self, name: str, check: Callable[..., Iterable[str]], *args) -> None:
        try:
            problems = list(check(*args))
        except Exception as e:  # a check that cannot read its inputs fails, and says why
            problems = [f"{type(e).__name__}: {e}", *traceback.format_exc().strip().splitlines()[-3:-1]]
        if problems:
            self.failed += 1
            print(f"FAIL  {name}")
            for problem in problems:
                print(f"      - {problem}")
        else:
            self.passed += 1
            print(f"ok    {name}")

    def finish(self) -> int:
        """The counts line .ci/run reads, and the exit status."""
        print(f"{self.passed} passed, {self.failed} failed, 0 skipped")
        sys.stdout.flush()
        return 1 if self.failed else 0


def run_and_exit(checks: Iterable[tuple]) -> None:
    """Runs (name, check, *args) in order, prints the counts line and exits with the status."""
    runner = Checks()
    for name, check, *args in checks:
        runner.run(name, check, *args)
    sys.exit(runner.finish())
