#!/usr/bin/env python3
"""The Dockerfile's two cross-file facts no tool here checks (CI has no Docker engine to build the image): the
restore layer copies every project the server references, and the fatbin lands where FlashMla__FatbinPath says."""

from __future__ import annotations

import re
from pathlib import Path

from checklib import REPO, dockerfile_env, dockerfile_instructions, rel, run_and_exit

SERVER_PROJECT = REPO / "src" / "FlashMla.Server" / "FlashMla.Server.csproj"
FATBIN = "native/build/flashmla.fatbin"


def project_closure(project: Path) -> list[Path]:
    """The project and every project it references, transitively."""
    seen: list[Path] = []
    todo = [project.resolve()]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.append(current)
            refs = re.findall(r'<ProjectReference\s+Include="([^"]+)"', current.read_text(encoding="utf-8"))
            todo += [(current.parent / ref.replace("\\", "/")).resolve() for ref in refs]
    return seen


def check_restore_layer():
    instructions = dockerfile_instructions()
    restore = next(i for i, line in enumerate(instructions) if line.startswith("RUN") and "dotnet restore" in line)
    copied = " ".join(line for line in instructions[:restore] if line.startswith("COPY"))
    for project in project_closure(SERVER_PROJECT):
        if rel(project) not in copied:
            yield f"the restore layer does not COPY {rel(project)}, which the server references"
    for name in ("global.json", "Directory.Build.props", "Directory.Packages.props"):
        if name not in copied:
            yield f"the restore layer does not COPY {name}"


def check_fatbin():
    instructions = dockerfile_instructions()
    if not any(line.startswith("RUN") and "native/build.sh" in line and FATBIN in line for line in instructions):
        yield f"the kernels stage must run native/build.sh and test that it wrote {FATBIN}"
    copies = [line.split() for line in instructions if line.startswith("COPY") and "--from=kernels" in line]
    destination = copies[0][-1] if copies and FATBIN in " ".join(copies[0]) else None
    configured = dockerfile_env()
    if destination is None or configured.get("FlashMla__FatbinPath") != destination:
        yield (f"the fatbin is copied to {destination!r} but FlashMla__FatbinPath is "
               f"{configured.get('FlashMla__FatbinPath')!r}")


if __name__ == "__main__":
    run_and_exit([
        ("Dockerfile: the restore layer copies every project the server references", check_restore_layer),
        ("Dockerfile: the kernels' fatbin lands where FlashMla__FatbinPath points", check_fatbin),
    ])
