"""One server for the whole run (CPU backend, free loopback ports) and grpcio channels to both its ports.

The tests talk to it through grpcio itself (``channel.unary_unary`` and friends with the contract's
message classes), except ``test_client_package``, which goes through ``flashmla_client``.
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import grpc
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "clients" / "python"))

from server_process import SERVER_OPTIONS, LocalServer  # noqa: E402
from workload import CHANNEL_OPTIONS, Cache  # noqa: E402


@pytest.fixture(scope="session")
def server():
    started = LocalServer(SERVER_OPTIONS)
    yield started
    assert started.running(), "the server died during the run:\n" + "\n".join(started.log)
    started.stop()


@pytest.fixture(scope="session")
def grpc_channel(server):
    with grpc.insecure_channel(server.grpc_target, options=CHANNEL_OPTIONS) as channel:
        yield channel


@pytest.fixture(scope="session")
def data_plane_channel(server):
    with grpc.insecure_channel(server.data_plane_target, options=CHANNEL_OPTIONS) as channel:
        yield channel


@pytest.fixture(params=["grpc-port", "data-plane-port"])
def decode_channel(request, grpc_channel, data_plane_channel):
    """Each Decoder test runs against both doors."""
    return grpc_channel if request.param == "grpc-port" else data_plane_channel


@pytest.fixture
def cache(grpc_channel):
    """KvCache on the gRPC port for set-up; what the test created is freed after it."""
    made = Cache(grpc_channel)
    yield made
    made.free_created()


@pytest.fixture
def rng(request):
    """Random inputs, the same for a test on every run."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
