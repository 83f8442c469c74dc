"""The flashmla.v1 contract at run time: message classes and grpcio multicallables from a descriptor set.

An installed package carries the descriptor set that ``setup.py`` compiled from ``proto/``; in a source
checkout it is compiled on first import (and again whenever a ``.proto`` file is newer) into
``_generated/``, which git ignores.
"""

from __future__ import annotations

from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from . import _contract_build

DESCRIPTOR_SET = Path(__file__).with_name("_generated") / "flashmla_v1.binpb"


class Contract:
    """Message classes and method stubs of the services in one FileDescriptorSet, in a pool of their own."""

    def __init__(self, descriptor_set: bytes):
        files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
        self._pool = descriptor_pool.DescriptorPool()
        for file in files.file:
            self._pool.Add(file)
        self._factory = message_factory.MessageFactory(self._pool)
        self._classes: dict[str, type] = {}

    def message(self, full_name: str) -> type:
        """The class of message ``full_name`` (``flashmla.v1.DecodeRequest``)."""
        cls = self._classes.get(full_name)
        if cls is None:
            descriptor = self._pool.FindMessageTypeByName(full_name)
            get_class = getattr(message_factory, "GetMessageClass", None)  # protobuf >= 4.22
            cls = get_class(descriptor) if get_class else self._factory.GetPrototype(descriptor)
            self._classes[full_name] = cls
        return cls

    def method(self, channel: grpc.Channel, service: str, name: str):
        """A grpcio multicallable for ``/service/name`` of the kind (unary/stream each way) the contract says."""
        descriptor = self._pool.FindServiceByName(service).FindMethodByName(name)
        request = self.message(descriptor.input_type.full_name)
        response = self.message(descriptor.output_type.full_name)
        kind = {(False, False): channel.unary_unary, (False, True): channel.unary_stream,
                (True, False): channel.stream_unary, (True, True): channel.stream_stream}
        make = kind[(descriptor.client_streaming, descriptor.server_streaming)]
        return make(f"/{service}/{name}", request_serializer=request.SerializeToString,
                    response_deserializer=response.FromString)


def load_flashmla_contract() -> Contract:
    proto_root = _contract_build.repository_proto_root(Path(__file__).resolve().parent.parent)
    if proto_root is not None and _contract_build.is_stale(DESCRIPTOR_SET, proto_root):
        _contract_build.build_descriptor_set(proto_root, DESCRIPTOR_SET)
    if not DESCRIPTOR_SET.is_file():
        raise ImportError(f"flashmla_client: {DESCRIPTOR_SET} is missing and no proto/ was found to build it from "
                          "(install the package with pip, or set FLASHMLA_PROTO_DIR)")
    return Contract(DESCRIPTOR_SET.read_bytes())


FLASHMLA = load_flashmla_contract()

Tensor = FLASHMLA.message("flashmla.v1.Tensor")
DecodeRequest = FLASHMLA.message("flashmla.v1.DecodeRequest")
DecodeResponse = FLASHMLA.message("flashmla.v1.DecodeResponse")
AppendKvChunk = FLASHMLA.message("flashmla.v1.AppendKvChunk")

DTYPE_BF16 = 1
DTYPE_FP32 = 2
DTYPE_FP8_E4M3_SCALED = 3  # KV rows in FlashMLA's "FP8 with scale" format: bytes [n, 656] (tensor.proto)
