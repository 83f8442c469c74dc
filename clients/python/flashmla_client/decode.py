"""Decode requests and responses, and the pipelined ``Decode`` stream.

A ``DecodeStream`` keeps several requests in flight on one bidirectional call. The server answers them
in whatever order their batches finish; every response carries its request's id, and the stream
resolves the future kept under that id, so callers never depend on the order.
"""

from __future__ import annotations

import itertools
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Sequence

import grpc
import numpy as np

from ._contract import DTYPE_BF16, DTYPE_FP32, DecodeRequest
from .bf16 import bf16_to_float32
from .errors import FlashMlaError
from .tensors import as_bf16_bits, from_tensor, to_tensor


@dataclass(frozen=True)
class DecodeTimings:
    """Where a request's time went on the server, microseconds (``flashmla.v1.DecodeTimings``)."""

    queue_us: float
    compute_us: float
    batch_sequences: int
    batch_requests: int
    kernel_us: float
    upload_us: float
    download_us: float


@dataclass(frozen=True)
class DecodeOutput:
    """One request's result: ``out`` bf16 bits ``[b, s_q, h_q, 512]``, ``lse`` float32 ``[b, h_q, s_q]``
    (natural log of the softmax denominator of the scaled scores). Both are read-only views of the
    response."""

    request_id: int
    out: np.ndarray
    lse: np.ndarray
    timings: DecodeTimings

    def out_float32(self) -> np.ndarray:
        return bf16_to_float32(self.out)

    @property
    def payload_bytes(self) -> int:
        return self.out.nbytes + self.lse.nbytes


def build_request(request_id: int, layer: int, sequence_ids: Sequence[int], q, kv=None,
                  softmax_scale: float = 0.0) -> DecodeRequest:
    """A ``DecodeRequest``: ``q`` bf16 bits ``[b, s_q, h_q, 576]`` gives s_q and h_q; ``kv`` bf16 bits
    ``[b, s_q, 576]`` (the new tokens' rows, appended before attending) or None."""
    q = as_bf16_bits(q, "q")
    if q.ndim != 4:
        raise ValueError(f"q must be [b, s_q, h_q, 576], got shape {q.shape}")
    request = DecodeRequest(request_id=request_id, layer=layer, sequence_ids=list(sequence_ids),
                            s_q=q.shape[1], h_q=q.shape[2], softmax_scale=softmax_scale)
    request.q.CopyFrom(to_tensor(q, DTYPE_BF16))
    if kv is not None:
        request.kv.CopyFrom(to_tensor(as_bf16_bits(kv, "kv"), DTYPE_BF16))
    return request


def parse_response(response) -> DecodeOutput:
    """The output of a successful response; FlashMlaError (the request's code) for a failed one."""
    if response.HasField("error"):
        raise FlashMlaError.from_status(response.error)
    t = response.timings
    return DecodeOutput(
        request_id=response.request_id,
        out=from_tensor(response.out, DTYPE_BF16, "out"),
        lse=from_tensor(response.lse, DTYPE_FP32, "lse"),
        timings=DecodeTimings(t.queue_us, t.compute_us, t.batch_sequences, t.batch_requests,
                              t.kernel_us, t.upload_us, t.download_us))


_END = object()


class DecodeStream:
    """One ``Decoder.Decode`` call with up to ``max_in_flight`` requests outstanding.

    ``submit`` sends a request and returns a ``concurrent.futures.Future`` of its ``DecodeOutput``; it
    blocks while ``max_in_flight`` requests are unanswered. A failed request fails its future with a
    ``FlashMlaError`` and the stream goes on; a fault of the stream itself (deadline, cancellation,
    shutdown) fails every outstanding future with the call's code. Futures complete on the stream's
    reader thread. ``close`` ends the request side and waits for the outstanding answers.
    """

    def __init__(self, multicallable, *, max_in_flight: int = 8, timeout: float | None = None,
                 metadata=None, compression: grpc.Compression | None = None):
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._pending: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(max_in_flight)
        self._ids = itertools.count(1)
        self._closed = False
        self._failure: FlashMlaError | None = None
        self._call = multicallable(iter(self._requests.get, _END), timeout=timeout, metadata=metadata,
                                   compression=compression)
        self._reader = threading.Thread(target=self._read, name="flashmla-decode-stream", daemon=True)
        self._reader.start()

    def submit(self, layer: int, sequence_ids: Sequence[int], q, kv=None, softmax_scale: float = 0.0,
               request_id: int | None = None) -> "Future[DecodeOutput]":
        """Sends one request (see ``build_request``) and returns the future of its output."""
        self._slots.acquire()
        try:
            rid = next(self._ids) if request_id is None else request_id
            request = build_request(rid, layer, sequence_ids, q, kv, softmax_scale)
            future: Future = Future()
            with self._lock:
                if self._closed:
                    raise RuntimeError("the decode stream is closed")
                if self._failure is not None:
                    raise self._failure
                if rid in self._pending:
                    raise ValueError(f"request id {rid} is already in flight on this stream")
                self._pending[rid] = future
            self._requests.put(request)
            return future
        except BaseException:
            self._slots.release()
            raise

    def decode(self, layer: int, sequence_ids: Sequence[int], q, kv=None, softmax_scale: float = 0.0,
               timeout: float | None = None) -> DecodeOutput:
        """``submit`` and wait for the output."""
        return self.submit(layer, sequence_ids, q, kv, softmax_scale).result(timeout)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._pending)

    def _read(self) -> None:
        try:
            for response in self._call:
                with self._lock:
                    future = self._pending.pop(response.request_id, None)
                if future is None:
                    continue  # not ours to answer (an id the server made up would be a server fault)
                self._slots.release()
                try:
                    future.set_result(parse_response(response))
                except (FlashMlaError, ValueError) as error:
                    future.set_exception(error)
            self._fail_pending(FlashMlaError(grpc.StatusCode.INTERNAL, "the server ended the decode stream"))
        except grpc.RpcError as error:
            self._fail_pending(FlashMlaError.from_rpc_error(error))

    def _fail_pending(self, failure: FlashMlaError) -> None:
        with self._lock:
            self._failure = failure
            pending, self._pending = self._pending, {}
        for future in pending.values():
            self._slots.release()
            future.set_exception(failure)

    def close(self, timeout: float | None = None) -> None:
        """Half-closes the call (no more requests) and waits until every outstanding request is answered."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._requests.put(_END)
        self._reader.join(timeout)

    def cancel(self) -> None:
        """Cancels the call: outstanding futures fail with CANCELLED."""
        with self._lock:
            self._closed = True
        self._call.cancel()
        self._requests.put(_END)
        self._reader.join()

    def __enter__(self) -> "DecodeStream":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.cancel()
