"""grpc.health.v1 and server reflection through grpcio on the gRPC port; the data-plane port serves neither."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2

from flashmla_client import _contract_build
from flashmla_client._contract import Contract

HEALTH = "grpc.health.v1.Health"
REFLECTION_SERVICES = ["grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"]
SERVING = 1


@pytest.fixture(scope="module")
def protocols(tmp_path_factory) -> Contract:
    output = tmp_path_factory.mktemp("protocols") / "protocols.binpb"
    _contract_build.build_descriptor_set(Path(__file__).with_name("proto"), output,
                                         ("grpc/health/v1/health.proto", "grpc/reflection/v1alpha/reflection.proto"))
    return Contract(output.read_bytes())


def health_check(protocols, channel, service: str):
    request = protocols.message("grpc.health.v1.HealthCheckRequest")(service=service)
    return protocols.method(channel, HEALTH, "Check")(request, timeout=10)


@pytest.mark.parametrize("service", ["", "flashmla.v1.Decoder", "flashmla.v1.KvCache"])
def test_health_check_says_serving_for_each_service(protocols, grpc_channel, service):
    assert health_check(protocols, grpc_channel, service).status == SERVING


def test_health_check_of_an_unknown_service_is_not_found(protocols, grpc_channel):
    with pytest.raises(grpc.RpcError) as failure:
        health_check(protocols, grpc_channel, "no.such.Service")
    assert failure.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_watch_sends_the_current_status_first(protocols, grpc_channel):
    request = protocols.message("grpc.health.v1.HealthCheckRequest")(service="flashmla.v1.Decoder")
    call = protocols.method(grpc_channel, HEALTH, "Watch")(request, timeout=10)
    assert next(call).status == SERVING
    call.cancel()


def test_health_on_the_data_plane_port_is_unimplemented(protocols, data_plane_channel):
    with pytest.raises(grpc.RpcError) as failure:
        health_check(protocols, data_plane_channel, "")
    assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED


def reflect(protocols, channel, service: str, **asked):
    """One request on a ServerReflectionInfo stream of ``service``, and its one response. v1 and v1alpha carry
    the same messages; only the method's path differs."""
    request = protocols.message("grpc.reflection.v1alpha.ServerReflectionRequest")(**asked)
    response = protocols.message("grpc.reflection.v1alpha.ServerReflectionResponse")
    call = channel.stream_stream(f"/{service}/ServerReflectionInfo", request_serializer=type(request).SerializeToString,
                                 response_deserializer=response.FromString)
    (answer,) = list(call(iter([request]), timeout=10))
    return answer


@pytest.mark.parametrize("service", REFLECTION_SERVICES)
def test_reflection_lists_the_services(protocols, grpc_channel, service):
    response = reflect(protocols, grpc_channel, service, list_services="")
    names = {s.name for s in response.list_services_response.service}
    assert {"flashmla.v1.KvCache", "flashmla.v1.Decoder", HEALTH} <= names


@pytest.mark.parametrize("service", REFLECTION_SERVICES)
def test_reflection_gives_the_file_of_a_symbol_as_the_contract_declares_it(protocols, grpc_channel, service):
    response = reflect(protocols, grpc_channel, service, file_containing_symbol="flashmla.v1.Decoder")
    files = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in response.file_descriptor_response.file_descriptor_proto]
    decoder = next(f for f in files if f.name == "flashmla/v1/decoder.proto")
    (service_proto,) = decoder.service
    assert service_proto.name == "Decoder"
    methods = {m.name: (m.client_streaming, m.server_streaming) for m in service_proto.method}
    assert methods == {"Decode": (True, True), "DecodeOnce": (False, False)}


@pytest.mark.parametrize("service", REFLECTION_SERVICES)
def test_reflection_of_an_unknown_symbol_is_an_error_response_of_not_found(protocols, grpc_channel, service):
    response = reflect(protocols, grpc_channel, service, file_containing_symbol="no.such.Symbol")
    assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
