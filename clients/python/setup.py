"""Builds the package with the contract compiled from the repository's proto/ (see _contract_build)."""

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


def _contract_build():
    # Loaded by path: importing the package itself needs grpcio and numpy, which a build may not have.
    spec = importlib.util.spec_from_file_location("_contract_build", HERE / "flashmla_client" / "_contract_build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithContract(build_py):
    """build_py, then the contract's descriptor set into the built package."""

    def run(self):
        super().run()
        builder = _contract_build()
        proto_root = builder.repository_proto_root(HERE)
        if proto_root is None:
            raise SystemExit("flashmla-client builds from the repository: proto/ not found two folders up "
                             "(or set FLASHMLA_PROTO_DIR)")
        builder.build_descriptor_set(proto_root, Path(self.build_lib, "flashmla_client", "_generated", "flashmla_v1.binpb"))


setup(cmdclass={"build_py": BuildPyWithContract})
