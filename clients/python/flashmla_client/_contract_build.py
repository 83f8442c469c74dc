"""Compiles the contract (``proto/flashmla/v1/*.proto``) into one FileDescriptorSet.

Standard library only: ``setup.py`` loads this file by path at build time, before the package's
dependencies are importable, and ``_contract`` calls it at import time in a source checkout.

A descriptor set rather than generated ``_pb2`` modules: the message classes are then built by
whatever protobuf runtime is installed (``_contract``), so the compiler's version does not have to
match the runtime's (Debian's grpc_tools embeds protoc 3.5, whose ``_pb2`` output protobuf 4
refuses), no grpc plugin is needed (calls go through grpcio's generic multicallables), and no
import paths need rewriting.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# decoder.proto imports google/rpc/status.proto, which lives in googleapis and which Debian does not
# package for Python. Only its wire shape matters here, and only the fields the server sets (code and
# message; `repeated google.protobuf.Any details = 3` stays out, so no well-known type is needed and any
# protoc will do: a details field would be kept as an unknown field).
_RPC_STATUS_PROTO = """\
syntax = "proto3";
package google.rpc;
message Status {
  int32 code = 1;
  string message = 2;
}
"""

CONTRACT_FILES = ("flashmla/v1/tensor.proto", "flashmla/v1/kv_cache.proto", "flashmla/v1/decoder.proto")


def repository_proto_root(project_dir: Path) -> Path | None:
    """``FLASHMLA_PROTO_DIR``, else the repository's ``proto/`` two folders above ``clients/python``;
    None when neither is there (an installed package, which carries its compiled contract)."""
    explicit = os.environ.get("FLASHMLA_PROTO_DIR")
    if explicit:
        return Path(explicit)
    candidate = project_dir.parent.parent / "proto"
    return candidate if (candidate / CONTRACT_FILES[-1]).is_file() else None


def is_stale(output: Path, proto_root: Path) -> bool:
    if not output.is_file():
        return True
    built = output.stat().st_mtime
    sources = [proto_root / name for name in CONTRACT_FILES] + [Path(__file__)]  # this file holds status.proto
    return any(source.stat().st_mtime > built for source in sources)


def _compiler() -> list[str]:
    """The protoc command line prefix: grpcio-tools' protoc when importable, else ``PROTOC`` or ``protoc``."""
    try:
        import grpc_tools.protoc  # noqa: F401  (Debian's python3-grpc-tools or the grpcio-tools wheel)

        return [sys.executable, "-m", "grpc_tools.protoc"]
    except ImportError:
        pass
    protoc = os.environ.get("PROTOC") or shutil.which("protoc")
    if protoc is None:
        raise RuntimeError(
            "flashmla_client: no protobuf compiler to build the contract from proto/: install grpcio-tools "
            "(Debian: python3-grpc-tools) or protoc (Debian: protobuf-compiler), or set PROTOC")
    return [protoc]


def build_descriptor_set(proto_root: Path, output: Path, files: tuple[str, ...] = CONTRACT_FILES) -> None:
    """Writes the FileDescriptorSet of ``files`` (paths under ``proto_root``; the contract by default) and
    everything they import to ``output``, atomically."""
    command = _compiler()
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        status = Path(scratch, "google", "rpc", "status.proto")
        status.parent.mkdir(parents=True)
        status.write_text(_RPC_STATUS_PROTO)
        partial = Path(scratch, "contract.binpb")
        args = [*command, f"-I{proto_root}", f"-I{scratch}", "--include_imports", f"--descriptor_set_out={partial}", *files]
        run = subprocess.run(args, capture_output=True, text=True)
        if run.returncode != 0:
            raise RuntimeError(f"flashmla_client: protoc failed ({' '.join(args)}):\n{run.stderr}")
        tmp = output.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(partial, tmp)
        os.replace(tmp, output)


if __name__ == "__main__":
    # python3 _contract_build.py OUTPUT [PROTO_ROOT]
    target = Path(sys.argv[1])
    root = Path(sys.argv[2]) if len(sys.argv) > 2 else repository_proto_root(Path(__file__).resolve().parent.parent)
    if root is None:
        sys.exit("no proto/ found; pass it as the second argument")
    build_descriptor_set(root, target)
