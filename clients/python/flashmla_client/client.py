"""``FlashMlaClient``: the KvCache calls on the gRPC port, the Decoder calls on the data-plane port.

Every method raises ``FlashMlaError`` (with the gRPC status code) when the call fails, takes an optional
``timeout`` in seconds (a gRPC deadline) and ``metadata`` (pairs; keys ending in ``-bin`` carry bytes),
and is safe to call from several threads.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, fields
from typing import Iterable, Sequence

import grpc
import numpy as np

from ._contract import DTYPE_BF16, DTYPE_FP8_E4M3_SCALED, FLASHMLA, AppendKvChunk
from .decode import DecodeOutput, DecodeStream, build_request, parse_response
from .errors import FlashMlaError
from .tensors import FP8_ROW_BYTES, as_kv_rows, from_tensor, to_tensor

KV_CACHE = "flashmla.v1.KvCache"
DECODER = "flashmla.v1.Decoder"


def _from_message(cls, message):
    """The dataclass ``cls`` with the same-named fields of ``message`` (repeated fields as lists)."""
    values = {}
    for field in fields(cls):
        value = getattr(message, field.name)
        values[field.name] = value if isinstance(value, (int, float, str)) else list(value)
    return cls(**values)


@dataclass(frozen=True)
class ServiceConfig:
    """The server's fixed shape (``flashmla.v1.ServiceConfig``)."""

    num_layers: int
    head_dim_k: int
    head_dim_v: int
    block_size: int
    total_blocks: int
    max_sequence_length: int
    max_heads: int
    max_query_tokens: int
    max_batch_sequences: int
    max_message_bytes: int
    backend: str
    device: str
    sequence_lease_seconds: float
    kv_dtype: int            # DTYPE_BF16 (1) or DTYPE_FP8_E4M3_SCALED (3): how the pools store rows
    kv_bytes_per_token: int  # 1152 (bf16) or 656 (fp8)
    token_capacity: int      # tokens a layer's pool holds (total_blocks * 64)


@dataclass(frozen=True)
class SequenceInfo:
    sequence_id: int
    layer_lengths: list
    blocks: int


@dataclass(frozen=True)
class CacheStats:
    total_blocks: int
    free_blocks: int
    used_blocks: int
    sequences: int
    reclaimed_sequences: int
    decode_requests: int
    decode_batches: int
    rejected_no_space: int


@dataclass(frozen=True)
class ForkResult:
    sequence_id: int
    shared_blocks: int
    copied_blocks: int


@dataclass(frozen=True)
class KvUpload:
    """Rows to append to one layer of one sequence: bf16 bits ``[n, 576]``, or rows already in the fp8 format,
    ``uint8 [n, 656]``, for a server with ``KvDtype=fp8`` (stored as they are)."""

    sequence_id: int
    layer: int
    rows: object


def _target(address: str) -> str:
    # grpcio takes host:port; accept the http:// form the C# client and the CLI use.
    return address.removeprefix("http://")


def _reraise(method):
    @functools.wraps(method)
    def call(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except grpc.RpcError as error:
            raise FlashMlaError.from_rpc_error(error) from None
    return call


class FlashMlaClient:
    """A connection to one server.

    ``address`` is the gRPC port (``host:50051``); decode calls go to ``decode_address`` when given, else to
    ``decode_port`` on the same host (the data-plane port, 50052 by default on the server), else to
    ``address``. ``connections`` > 1 opens that many TCP connections for decode calls and spreads streams
    and calls over them round-robin. ``compression`` (``grpc.Compression.Gzip``) compresses requests.
    ``token`` is the bearer token of a server with a token file: every call, on both ports, carries
    ``authorization: Bearer <token>``, and sees the sequences of that token's tenant only.
    """

    def __init__(self, address: str = "localhost:50051", *, decode_address: str | None = None,
                 decode_port: int | None = None, connections: int = 1,
                 compression: grpc.Compression | None = None, max_message_bytes: int = -1,
                 token: str | None = None):
        if connections < 1:
            raise ValueError("connections must be at least 1")
        if token is not None and (not token or any(c <= " " or c > "~" for c in token)):
            raise ValueError("a bearer token is printable ASCII without spaces")
        self._auth = (("authorization", f"Bearer {token}"),) if token is not None else ()
        target = _target(address)
        if decode_address is None and decode_port is not None:
            decode_address = f"{target.rsplit(':', 1)[0]}:{decode_port}"
        options = [("grpc.max_send_message_length", max_message_bytes),
                   ("grpc.max_receive_message_length", max_message_bytes)]
        self._compression = compression
        self._channel = grpc.insecure_channel(target, options=options)
        decode_target = _target(decode_address) if decode_address else None
        if decode_target is None and connections == 1:
            self._decode_channels = [self._channel]
        else:
            # grpcio shares one connection among channels to one target unless each has its own subchannel pool.
            own = options + [("grpc.use_local_subchannel_pool", 1)] if connections > 1 else options
            self._decode_channels = [grpc.insecure_channel(decode_target or target, options=own) for _ in range(connections)]
        self._round_robin = itertools.count()
        kv = functools.partial(FLASHMLA.method, self._channel, KV_CACHE)
        self._get_config = kv("GetConfig")
        self._create = kv("CreateSequence")
        self._append = kv("AppendKv")
        self._fork = kv("ForkSequence")
        self._truncate = kv("TruncateSequence")
        self._free = kv("FreeSequence")
        self._get_sequence = kv("GetSequence")
        self._read_kv = kv("ReadKv")
        self._get_stats = kv("GetStats")
        self._decode_once = [FLASHMLA.method(c, DECODER, "DecodeOnce") for c in self._decode_channels]
        self._decode = [FLASHMLA.method(c, DECODER, "Decode") for c in self._decode_channels]

    def _message(self, name: str, **values):
        return FLASHMLA.message(f"flashmla.v1.{name}")(**values)

    def _call_options(self, timeout, metadata):
        if self._auth:
            metadata = self._auth + tuple(metadata or ())
        return {"timeout": timeout, "metadata": metadata, "compression": self._compression}

    # KvCache -------------------------------------------------------------------------------------------

    @_reraise
    def get_config(self, *, timeout=None, metadata=None) -> ServiceConfig:
        return _from_message(ServiceConfig, self._get_config(self._message("GetConfigRequest"), **self._call_options(timeout, metadata)))

    @_reraise
    def create_sequence(self, *, timeout=None, metadata=None) -> int:
        """A new, empty sequence; returns its id."""
        return self._create(self._message("CreateSequenceRequest"), **self._call_options(timeout, metadata)).sequence_id

    @_reraise
    def append_kv(self, uploads: Iterable[KvUpload] | KvUpload, *, timeout=None, metadata=None) -> tuple[int, int]:
        """Appends each upload's rows at the end of its layer, in order, on one stream; returns (chunks, rows).
        Chunks before a failing one stay applied."""
        if isinstance(uploads, KvUpload):
            uploads = [uploads]
        refused = []

        def chunks():
            for upload in uploads:
                try:
                    rows, dtype = as_kv_rows(upload.rows, "rows")
                except (TypeError, ValueError) as error:
                    refused.append(error)
                    raise
                yield AppendKvChunk(sequence_id=upload.sequence_id, layer=upload.layer, kv=to_tensor(rows, dtype))

        try:
            reply = self._append(chunks(), **self._call_options(timeout, metadata))
        except grpc.RpcError:
            if refused:  # grpcio cancels a call whose request iterator raised; the caller wants the reason
                raise refused[0] from None
            raise
        return reply.chunks, reply.rows

    @_reraise
    def fork_sequence(self, sequence_id: int, *, timeout=None, metadata=None) -> ForkResult:
        reply = self._fork(self._message("ForkSequenceRequest", sequence_id=sequence_id), **self._call_options(timeout, metadata))
        return _from_message(ForkResult, reply)

    @_reraise
    def truncate_sequence(self, sequence_id: int, length: int, *, timeout=None, metadata=None) -> int:
        """Cuts every layer to at most ``length`` tokens; returns the blocks released."""
        request = self._message("TruncateSequenceRequest", sequence_id=sequence_id, length=length)
        return self._truncate(request, **self._call_options(timeout, metadata)).released_blocks

    @_reraise
    def free_sequence(self, sequence_id: int, *, timeout=None, metadata=None) -> int:
        """Releases the sequence; returns the blocks it referenced."""
        request = self._message("FreeSequenceRequest", sequence_id=sequence_id)
        return self._free(request, **self._call_options(timeout, metadata)).released_blocks

    @_reraise
    def get_sequence(self, sequence_id: int, *, timeout=None, metadata=None) -> SequenceInfo:
        request = self._message("GetSequenceRequest", sequence_id=sequence_id)
        return _from_message(SequenceInfo, self._get_sequence(request, **self._call_options(timeout, metadata)))

    @_reraise
    def read_kv(self, sequence_id: int, layer: int, start: int = 0, count: int = 0, rows_per_chunk: int = 0,
                *, timeout=None, metadata=None) -> np.ndarray:
        """Rows ``start .. start+count-1`` of one layer (``count`` 0: to the end) of a bf16 cache as bf16 bits
        ``[n, 576]``; an fp8 cache's rows raise ValueError (read them with ``read_stored_kv``)."""
        return self._read_rows(sequence_id, layer, start, count, rows_per_chunk, DTYPE_BF16, timeout, metadata)

    @_reraise
    def read_stored_kv(self, sequence_id: int, layer: int, start: int = 0, count: int = 0, rows_per_chunk: int = 0,
                       *, timeout=None, metadata=None) -> np.ndarray:
        """The rows as the cache stores them (its ``kv_dtype``): bf16 bits ``[n, 576]``, or fp8 rows ``uint8 [n, 656]``."""
        dtype = self.get_config(timeout=timeout, metadata=metadata).kv_dtype
        return self._read_rows(sequence_id, layer, start, count, rows_per_chunk, dtype, timeout, metadata)

    def _read_rows(self, sequence_id, layer, start, count, rows_per_chunk, dtype, timeout, metadata) -> np.ndarray:
        request = self._message("ReadKvRequest", sequence_id=sequence_id, layer=layer, start=start, count=count,
                                rows_per_chunk=rows_per_chunk)
        parts = [from_tensor(chunk.kv, dtype, "kv") for chunk in self._read_kv(request, **self._call_options(timeout, metadata))]
        if parts:
            return np.concatenate(parts)
        return np.empty((0, FP8_ROW_BYTES), dtype=np.uint8) if dtype == DTYPE_FP8_E4M3_SCALED else np.empty((0, 576), dtype=np.uint16)

    @_reraise
    def get_stats(self, *, timeout=None, metadata=None) -> CacheStats:
        return _from_message(CacheStats, self._get_stats(self._message("GetStatsRequest"), **self._call_options(timeout, metadata)))

    # Decoder -------------------------------------------------------------------------------------------

    def _next_decode_index(self) -> int:
        return next(self._round_robin) % len(self._decode_channels)

    @_reraise
    def decode(self, layer: int, sequence_ids: Sequence[int], q, kv=None, softmax_scale: float = 0.0,
               *, timeout=None, metadata=None) -> DecodeOutput:
        """One ``DecodeOnce`` call: ``q`` bf16 bits ``[b, s_q, h_q, 576]``, ``kv`` bf16 bits ``[b, s_q, 576]`` or
        None; ``softmax_scale`` 0 means 1/sqrt(576)."""
        request = build_request(0, layer, sequence_ids, q, kv, softmax_scale)
        call = self._decode_once[self._next_decode_index()]
        return parse_response(call(request, **self._call_options(timeout, metadata)))

    def open_decode_stream(self, max_in_flight: int = 8, *, timeout=None, metadata=None) -> DecodeStream:
        """A ``Decode`` stream with up to ``max_in_flight`` requests outstanding (use it as a context manager)."""
        call = self._decode[self._next_decode_index()]
        return DecodeStream(call, max_in_flight=max_in_flight, **self._call_options(timeout, metadata))

    # ---------------------------------------------------------------------------------------------------

    def close(self) -> None:
        for channel in {id(c): c for c in [self._channel, *self._decode_channels]}.values():
            channel.close()

    def __enter__(self) -> "FlashMlaClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


