"""grpcio over TLS (ALPN h2) against both of the server's ports: a TLS server's cache calls and decodes match the
float64 reference, a cleartext channel to a TLS port gets nowhere, and with a client CA the server refuses a channel
without a client certificate and serves one with."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from flashmla_client.bf16 import random_bf16
from server_process import SERVER_OPTIONS, LocalServer, dev_certificates
from workload import CHANNEL_OPTIONS, DECODER, KV_CACHE, Cache, assert_matches_reference, decode_request, message, rpc

# The certificate names localhost and 127.0.0.1; the channels dial 127.0.0.1 and verify the name localhost.
TLS_CHANNEL_OPTIONS = [*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", "localhost")]


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    return dev_certificates(tmp_path_factory.mktemp("tls"))


def tls_server(certificates, mutual: bool) -> LocalServer:
    options = {**SERVER_OPTIONS, "Tls:CertificateFile": certificates / "tls.crt", "Tls:KeyFile": certificates / "tls.key"}
    if mutual:
        options["Tls:ClientCaFile"] = certificates / "ca.crt"
    return LocalServer(options)


@pytest.fixture(scope="module")
def server(certificates):
    started = tls_server(certificates, mutual=False)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def mutual_server(certificates):
    started = tls_server(certificates, mutual=True)
    yield started
    started.stop()


def credentials(certificates, client_certificate: bool):
    return grpc.ssl_channel_credentials(
        root_certificates=(certificates / "ca.crt").read_bytes(),
        private_key=(certificates / "client.key").read_bytes() if client_certificate else None,
        certificate_chain=(certificates / "client.crt").read_bytes() if client_certificate else None)


def secure(target: str, certificates, client_certificate: bool = False):
    return grpc.secure_channel(target, credentials(certificates, client_certificate), options=TLS_CHANNEL_OPTIONS)


def config(channel, timeout: float = 10):
    return rpc(channel, KV_CACHE, "GetConfig")(message("GetConfigRequest"), timeout=timeout)


def test_cache_calls_and_decode_on_both_ports_over_tls_match_the_reference(server, certificates):
    rng = np.random.default_rng(14)
    with secure(server.grpc_target, certificates) as grpc_channel, secure(server.data_plane_target, certificates) as data_plane:
        assert config(grpc_channel).backend == "cpu"
        cache = Cache(grpc_channel)
        try:
            sequences = cache.prefilled(rng, [70, 3])
            rows = [cache.read(s, 0) for s in sequences]
            q = random_bf16(rng, (2, 1, 16, 576))
            for channel in (grpc_channel, data_plane):
                response = rpc(channel, DECODER, "DecodeOnce")(decode_request(5, 0, sequences, q), timeout=30)
                assert_matches_reference(response, q, rows)
        finally:
            cache.free_created()


def test_a_cleartext_channel_to_a_tls_port_is_unavailable(server):
    for target in (server.grpc_target, server.data_plane_target):
        with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
            with pytest.raises(grpc.RpcError) as failure:
                config(channel, timeout=5) if target == server.grpc_target else \
                    rpc(channel, DECODER, "DecodeOnce")(message("DecodeRequest"), timeout=5)
            assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


def test_with_a_client_ca_both_ports_refuse_a_channel_without_a_client_certificate(mutual_server, certificates):
    for target in (mutual_server.grpc_target, mutual_server.data_plane_target):
        with secure(target, certificates) as channel:
            with pytest.raises(grpc.RpcError) as failure:
                config(channel, timeout=5) if target == mutual_server.grpc_target else \
                    rpc(channel, DECODER, "DecodeOnce")(message("DecodeRequest"), timeout=5)
            assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    with secure(mutual_server.grpc_target, certificates, client_certificate=True) as channel:
        assert config(channel).backend == "cpu"
    with secure(mutual_server.data_plane_target, certificates, client_certificate=True) as channel:
        # Past the handshake: an empty request is refused by the service, not the transport.
        with pytest.raises(grpc.RpcError) as refused:
            rpc(channel, DECODER, "DecodeOnce")(message("DecodeRequest"), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
