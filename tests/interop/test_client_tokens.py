"""flashmla_client's ``token`` against a server with a token file: the token goes with every call on both ports,
a call without one is UNAUTHENTICATED, and another tenant's sequence is NOT_FOUND."""

from __future__ import annotations

import json

import grpc
import pytest

from server_process import SERVER_OPTIONS, LocalServer
from flashmla_client import FlashMlaClient, FlashMlaError, KvUpload, random_bf16

TOKEN_A = "python-token-of-tenant-a"
TOKEN_B = "python-token-of-tenant-b"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.json"
    tokens.write_text(json.dumps({"tenants": [{"name": "a", "tokens": [TOKEN_A]}, {"name": "b", "tokens": [TOKEN_B]}]}))
    started = LocalServer({**SERVER_OPTIONS, "TokenFile": tokens})
    yield started
    started.stop()


def test_a_token_opens_both_ports_and_only_its_tenants_sequences(secured, rng):
    with FlashMlaClient(secured.grpc_target, decode_port=secured.data_plane_port, token=TOKEN_A) as a, \
            FlashMlaClient(secured.grpc_target, decode_port=secured.data_plane_port, token=TOKEN_B) as b:
        sequence = a.create_sequence()
        rows = random_bf16(rng, (20, 576))
        a.append_kv(KvUpload(sequence, 0, rows))
        output = a.decode(0, [sequence], random_bf16(rng, (1, 1, 4, 576)))
        assert output.out.shape == (1, 1, 4, 512)
        with a.open_decode_stream() as stream:
            assert stream.decode(0, [sequence], random_bf16(rng, (1, 1, 4, 576))).out.shape == (1, 1, 4, 512)

        for call in (lambda: b.get_sequence(sequence), lambda: b.read_kv(sequence, 0),
                     lambda: b.decode(0, [sequence], random_bf16(rng, (1, 1, 4, 576)))):
            with pytest.raises(FlashMlaError) as refused:
                call()
            assert refused.value.code == grpc.StatusCode.NOT_FOUND
        assert (a.read_kv(sequence, 0) == rows).all()


def test_a_call_without_a_token_is_unauthenticated_on_both_ports(secured, rng):
    with FlashMlaClient(secured.grpc_target, decode_port=secured.data_plane_port) as anonymous:
        for call in (anonymous.create_sequence, lambda: anonymous.decode(0, [1], random_bf16(rng, (1, 1, 4, 576)))):
            with pytest.raises(FlashMlaError) as refused:
                call()
            assert refused.value.code == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(ValueError):
        FlashMlaClient(secured.grpc_target, token="has a space")
