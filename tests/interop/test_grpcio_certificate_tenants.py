"""grpcio over mTLS against a server that takes the tenant from the client certificate (Tls:ClientCertificateTenant
subject-cn): the certificate the CLI's dev-cert writes (CN flashmla-client) is tenant a on both ports without a token,
another tenant's token beside it is UNAUTHENTICATED, and an upload refused from its headers while grpcio is still
streaming 47 MB of it ends with the refusal's status (the server answers, then RST_STREAM(NO_ERROR))."""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest

from flashmla_client.bf16 import random_bf16
from server_process import SERVER_OPTIONS, LocalServer, dev_certificates
from workload import CHANNEL_OPTIONS, DECODER, KV_CACHE, bf16_tensor, decode_request, message, rpc

TOKEN_A = "python-token-of-tenant-a"
TOKEN_B = "python-token-of-tenant-b"
TLS_CHANNEL_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", "localhost")]


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return dev_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def server(certificates, tmp_path_factory):
    tokens = tmp_path_factory.mktemp("tokens") / "tokens.json"
    tokens.write_text(json.dumps({"tenants": [
        {"name": "a", "tokens": [TOKEN_A], "certificateNames": ["flashmla-client"]},
        {"name": "b", "tokens": [TOKEN_B]}]}))
    started = LocalServer({**SERVER_OPTIONS, "Tls:CertificateFile": certificates / "tls.crt", "Tls:KeyFile": certificates / "tls.key",
                           "Tls:ClientCaFile": certificates / "ca.crt", "Tls:ClientCertificateTenant": "subject-cn", "TokenFile": tokens})
    yield started
    started.stop()


def secure(target: str, certificates):
    credentials = grpc.ssl_channel_credentials(root_certificates=(certificates / "ca.crt").read_bytes(),
                                               private_key=(certificates / "client.key").read_bytes(),
                                               certificate_chain=(certificates / "client.crt").read_bytes())
    return grpc.secure_channel(target, credentials, options=TLS_CHANNEL_OPTIONS)


def bearer(token: str):
    return [("authorization", f"Bearer {token}")]


def test_the_certificate_is_its_tenant_on_both_ports_and_a_token_of_another_tenant_beside_it_is_refused(server, certificates):
    rng = np.random.default_rng(21)
    with secure(server.grpc_target, certificates) as grpc_channel, secure(server.data_plane_target, certificates) as data_plane:
        sequence = rpc(grpc_channel, KV_CACHE, "CreateSequence")(message("CreateSequenceRequest"), timeout=10).sequence_id
        rows = random_bf16(rng, (3, 576))
        chunk = message("AppendKvChunk", sequence_id=sequence, layer=0, kv=bf16_tensor(rows))
        assert rpc(data_plane, KV_CACHE, "AppendKv")(iter([chunk]), timeout=10).rows == 3
        q = random_bf16(rng, (1, 1, 4, 576))
        for channel in (grpc_channel, data_plane):
            assert len(rpc(channel, DECODER, "DecodeOnce")(decode_request(1, 0, [sequence], q), timeout=30).out.data) == 4 * 512 * 2
        # The same certificate with a's token is a; with b's, two tenants: refused on either port.
        info = rpc(grpc_channel, KV_CACHE, "GetSequence")(message("GetSequenceRequest", sequence_id=sequence), metadata=bearer(TOKEN_A), timeout=10)
        assert list(info.layer_lengths)[0] == 3
        for channel, call in ((grpc_channel, lambda c: rpc(c, KV_CACHE, "GetSequence")(message("GetSequenceRequest", sequence_id=sequence),
                                                                                         metadata=bearer(TOKEN_B), timeout=10)),
                              (data_plane, lambda c: rpc(c, DECODER, "DecodeOnce")(decode_request(2, 0, [sequence], q), metadata=bearer(TOKEN_B), timeout=10))):
            with pytest.raises(grpc.RpcError) as refused:
                call(channel)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "different tenants" in refused.value.details()


def test_an_upload_refused_from_its_headers_while_grpcio_streams_it_ends_unauthenticated(server, certificates):
    chunk = message("AppendKvChunk", sequence_id=1, layer=0, kv=bf16_tensor(np.zeros((2048, 576), dtype=np.uint16)))
    with secure(server.data_plane_target, certificates) as data_plane:
        for _ in range(3):
            with pytest.raises(grpc.RpcError) as refused:
                rpc(data_plane, KV_CACHE, "AppendKv")(iter([chunk] * 20), metadata=bearer("not-a-token-of-this-server"), timeout=60)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The connection still serves: the certificate's own upload of an unknown sequence is answered by the service.
        with pytest.raises(grpc.RpcError) as missing:
            rpc(data_plane, KV_CACHE, "AppendKv")(iter([chunk]), timeout=30)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
