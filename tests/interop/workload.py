"""Raw grpcio calls and inputs shared by the interop tests: the contract's message classes and grpcio's
generic multicallables, nothing of flashmla_client's call layer."""

from __future__ import annotations

import grpc
import numpy as np

from flashmla_client._contract import DTYPE_BF16, DTYPE_FP32, FLASHMLA
from flashmla_client.bf16 import bf16_to_float32, random_bf16
from flashmla_client.reference import mla_decode_reference, relative_error
from flashmla_client.tensors import from_tensor, to_tensor

KV_CACHE = "flashmla.v1.KvCache"
DECODER = "flashmla.v1.Decoder"
TOLERANCE = 1e-2
# No message size limits on grpcio's side: the server's MaxMessageBytes is the one that counts.
CHANNEL_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


def message(name: str, **values):
    return FLASHMLA.message(f"flashmla.v1.{name}")(**values)


def rpc(channel, service: str, method: str):
    return FLASHMLA.method(channel, service, method)


def bf16_tensor(array: np.ndarray):
    return to_tensor(array, DTYPE_BF16)


class Cache:
    """Set-up and inspection through KvCache on the gRPC port."""

    def __init__(self, channel):
        self.channel = channel
        self.created: list[int] = []

    def call(self, method: str, request, **options):
        return rpc(self.channel, KV_CACHE, method)(request, **options)

    def create(self) -> int:
        sequence = self.call("CreateSequence", message("CreateSequenceRequest")).sequence_id
        self.created.append(sequence)
        return sequence

    def append(self, sequence_id: int, layer: int, rows: np.ndarray):
        chunk = message("AppendKvChunk", sequence_id=sequence_id, layer=layer, kv=bf16_tensor(rows))
        return self.call("AppendKv", iter([chunk]))

    def lengths(self, sequence_id: int) -> list[int]:
        return list(self.call("GetSequence", message("GetSequenceRequest", sequence_id=sequence_id)).layer_lengths)

    def read(self, sequence_id: int, layer: int) -> np.ndarray:
        chunks = self.call("ReadKv", message("ReadKvRequest", sequence_id=sequence_id, layer=layer))
        parts = [from_tensor(c.kv, DTYPE_BF16, "kv") for c in chunks]
        return np.concatenate(parts) if parts else np.empty((0, 576), np.uint16)

    def free(self, sequence_id: int) -> None:
        self.call("FreeSequence", message("FreeSequenceRequest", sequence_id=sequence_id))

    def free_created(self) -> None:
        """Frees what ``create`` made and is still there (a test's clean-up: the blocks are shared by the run)."""
        for sequence in self.created:
            try:
                self.free(sequence)
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.NOT_FOUND:
                    raise
        self.created.clear()

    def prefilled(self, rng, lengths: list[int], layer: int = 0) -> list[int]:
        """New sequences with ``lengths[i]`` random rows in ``layer``."""
        ids = []
        for length in lengths:
            sequence = self.create()
            if length:
                self.append(sequence, layer, random_bf16(rng, (length, 576)))
            ids.append(sequence)
        return ids


def decode_request(request_id: int, layer: int, sequence_ids, q: np.ndarray, kv: np.ndarray | None = None,
                   softmax_scale: float = 0.0):
    request = message("DecodeRequest", request_id=request_id, layer=layer, sequence_ids=list(sequence_ids),
                      s_q=q.shape[1], h_q=q.shape[2], q=bf16_tensor(q), softmax_scale=softmax_scale)
    if kv is not None:
        request.kv.CopyFrom(bf16_tensor(kv))
    return request


def assert_matches_reference(response, q: np.ndarray, layer_rows: list[np.ndarray], softmax_scale: float = 0.0):
    """``response`` carries out bf16 [b, s_q, h_q, 512] and lse fp32 [b, h_q, s_q] within TOLERANCE (relative)
    of the float64 reference over ``layer_rows[i]``, sequence i's whole layer after the step."""
    b, s_q, h_q, _ = q.shape
    assert not response.HasField("error"), response.error
    assert response.out.dtype == DTYPE_BF16 and list(response.out.shape) == [b, s_q, h_q, 512]
    assert response.lse.dtype == DTYPE_FP32 and list(response.lse.shape) == [b, h_q, s_q]
    out = from_tensor(response.out, DTYPE_BF16, "out")
    lse = from_tensor(response.lse, DTYPE_FP32, "lse")
    expected_out, expected_lse = mla_decode_reference(q, layer_rows, softmax_scale)
    assert relative_error(bf16_to_float32(out), expected_out) < TOLERANCE
    assert relative_error(lse, expected_lse) < TOLERANCE
    assert np.array_equal(np.isinf(lse), np.isinf(expected_lse))
