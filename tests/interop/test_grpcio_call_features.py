"""What every gRPC client may do to a call, done by grpcio on both ports: ASCII and binary (-bin) metadata,
deadlines, cancellation, and compressed requests. After each, the same channel must still serve."""

from __future__ import annotations

import queue
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest

from flashmla_client.bf16 import random_bf16
from workload import DECODER, KV_CACHE, assert_matches_reference, decode_request, message, rpc

# grpcio Huffman-codes the base64 of -bin values (HPACK, RFC 7541 Appendix B).
METADATA = {
    "ascii": [("x-request-tag", "interop-1"), ("x-tenant", "a" * 200)],
    "binary": [("x-trace-bin", bytes(range(256))), ("x-span-bin", b"\x00\xff" * 40)],
    "ascii-and-binary": [("x-request-tag", "interop-2"), ("x-trace-bin", b"\x01\x02\x03")],
}


@pytest.fixture
def small_step(cache, rng):
    """A sequence of 30 rows and a query over it: (sequence ids, q, layer rows)."""
    sequences = cache.prefilled(rng, [30])
    return sequences, random_bf16(rng, (1, 1, 4, 576)), [cache.read(sequences[0], 0)]


@pytest.fixture
def heavy_request(cache, rng):
    """A request the CPU backend needs a few hundred milliseconds for (4 x 2048 tokens, h_q 128), no append."""
    sequences = cache.prefilled(rng, [2048] * 4)
    return decode_request(9, 0, sequences, random_bf16(rng, (4, 1, 128, 576)))


def assert_still_serves(channel, small_step):
    sequences, q, rows = small_step
    assert_matches_reference(rpc(channel, DECODER, "DecodeOnce")(decode_request(5, 0, sequences, q)), q, rows)


@pytest.mark.parametrize("kind", METADATA)
def test_decode_once_with_metadata_is_served(decode_channel, small_step, kind):
    sequences, q, rows = small_step
    response = rpc(decode_channel, DECODER, "DecodeOnce")(decode_request(1, 0, sequences, q), metadata=METADATA[kind])
    assert_matches_reference(response, q, rows)


@pytest.mark.parametrize("kind", METADATA)
def test_a_decode_stream_with_metadata_is_served(decode_channel, small_step, kind):
    sequences, q, rows = small_step
    call = rpc(decode_channel, DECODER, "Decode")(iter([decode_request(i, 0, sequences, q) for i in (1, 2)]),
                                                  metadata=METADATA[kind])
    answers = list(call)
    assert sorted(a.request_id for a in answers) == [1, 2]
    for answer in answers:
        assert_matches_reference(answer, q, rows)


@pytest.mark.parametrize("kind", METADATA)
def test_kv_cache_calls_with_metadata_are_served(grpc_channel, kind):
    config = rpc(grpc_channel, KV_CACHE, "GetConfig")(message("GetConfigRequest"), metadata=METADATA[kind])
    assert config.head_dim_k == 576
    created = rpc(grpc_channel, KV_CACHE, "CreateSequence")(message("CreateSequenceRequest"), metadata=METADATA[kind])
    freed = rpc(grpc_channel, KV_CACHE, "FreeSequence")(message("FreeSequenceRequest", sequence_id=created.sequence_id),
                                                        metadata=METADATA[kind])
    assert freed.released_blocks == 0


# The limit on a call's header list (64 KiB, both ports). grpcio sends past a peer's SETTINGS_MAX_HEADER_LIST_SIZE,
# so the server must refuse the one call, not the connection the channel's other calls share.
OVERSIZED_METADATA = {
    "one-large-value": [("x-large", "a" * 100_000)],
    "many-fields": [(f"x-field-{i}", "v" * 50) for i in range(2000)],
    "large-binary": [("x-large-bin", bytes(range(256)) * 400)],
}


def failed_requests(server, code: str, method: str) -> float:
    """flashmla_requests_failed_total{code, method} from the server's metrics port."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("flashmla_requests_failed_total{") and f'code="{code}"' in line and f'method="{method}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("kind", OVERSIZED_METADATA)
def test_metadata_over_the_header_limit_is_resource_exhausted_and_the_connection_serves_on(decode_channel, cache, small_step, kind):
    sequences, q, rows = small_step
    # A stream open on the channel's connection before the oversized call, and used after it.
    requests = queue.Queue()
    stream = rpc(decode_channel, DECODER, "Decode")(iter(requests.get, None), timeout=60)
    requests.put(decode_request(1, 0, sequences, q))
    assert_matches_reference(next(stream), q, rows)
    with pytest.raises(grpc.RpcError) as failure:
        rpc(decode_channel, DECODER, "DecodeOnce")(decode_request(2, 0, sequences, q, np.zeros((1, 1, 576), np.uint16)),
                                                   metadata=OVERSIZED_METADATA[kind], timeout=30)
    assert failure.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "header list" in failure.value.details() and "65536" in failure.value.details()
    assert cache.lengths(sequences[0]) == [30, 0]  # its new row was not appended
    requests.put(decode_request(3, 0, sequences, q))
    answer = next(stream)
    assert answer.request_id == 3
    assert_matches_reference(answer, q, rows)
    requests.put(None)
    assert list(stream) == []


def test_a_call_refused_for_its_metadata_is_counted_as_a_failed_request(server, decode_channel, small_step):
    sequences, q, _ = small_step
    method = "/flashmla.v1.Decoder/DecodeOnce"
    before = failed_requests(server, "ResourceExhausted", method)
    with pytest.raises(grpc.RpcError):
        rpc(decode_channel, DECODER, "DecodeOnce")(decode_request(1, 0, sequences, q), metadata=OVERSIZED_METADATA["one-large-value"])
    # The exporter caches a scrape for a moment: wait for the count.
    until = time.monotonic() + 10
    while failed_requests(server, "ResourceExhausted", method) == before and time.monotonic() < until:
        time.sleep(0.1)
    assert failed_requests(server, "ResourceExhausted", method) == before + 1


def test_metadata_just_under_the_header_limit_is_served(decode_channel, small_step):
    sequences, q, rows = small_step
    response = rpc(decode_channel, DECODER, "DecodeOnce")(decode_request(1, 0, sequences, q), metadata=[("x-large", "a" * 60_000)])
    assert_matches_reference(response, q, rows)


def test_decode_once_past_its_deadline_is_deadline_exceeded(decode_channel, heavy_request, small_step):
    with pytest.raises(grpc.RpcError) as failure:
        rpc(decode_channel, DECODER, "DecodeOnce")(heavy_request, timeout=0.02)
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert_still_serves(decode_channel, small_step)


def test_a_decode_stream_past_its_deadline_is_deadline_exceeded(decode_channel, heavy_request, small_step):
    call = rpc(decode_channel, DECODER, "Decode")(iter([heavy_request] * 3), timeout=0.05)
    with pytest.raises(grpc.RpcError) as failure:
        list(call)
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert_still_serves(decode_channel, small_step)


def test_a_deadline_long_enough_is_met(decode_channel, small_step):
    sequences, q, rows = small_step
    response = rpc(decode_channel, DECODER, "DecodeOnce")(decode_request(1, 0, sequences, q), timeout=30)
    assert_matches_reference(response, q, rows)


def test_a_cancelled_decode_once_ends_cancelled(decode_channel, heavy_request, small_step):
    future = rpc(decode_channel, DECODER, "DecodeOnce").future(heavy_request)
    assert future.cancel()
    assert future.cancelled()
    assert_still_serves(decode_channel, small_step)


class OpenStream:
    """A Decode call whose request side sends ``requests`` and then stays open (as a host's stream does between
    steps) until the test cancels it."""

    def __init__(self, channel, requests):
        self.sent = threading.Event()
        self._hold = threading.Event()

        def generate():
            yield from requests
            self.sent.set()
            self._hold.wait(30)

        self.call = rpc(channel, DECODER, "Decode")(generate())

    def cancel_and_expect_cancelled(self):
        self.call.cancel()
        self._hold.set()
        with pytest.raises(grpc.RpcError) as failure:
            list(self.call)
        assert failure.value.code() == grpc.StatusCode.CANCELLED


def test_a_decode_stream_cancelled_with_requests_in_flight_ends_cancelled(decode_channel, heavy_request, small_step):
    stream = OpenStream(decode_channel, [heavy_request, heavy_request])
    assert stream.sent.wait(10)
    stream.cancel_and_expect_cancelled()
    assert_still_serves(decode_channel, small_step)


def test_a_decode_stream_cancelled_after_an_answer_keeps_that_answer(decode_channel, small_step, heavy_request):
    sequences, q, rows = small_step
    stream = OpenStream(decode_channel, [decode_request(1, 0, sequences, q), heavy_request])
    first = next(stream.call)
    assert first.request_id == 1
    assert_matches_reference(first, q, rows)
    stream.cancel_and_expect_cancelled()
    assert_still_serves(decode_channel, small_step)


def test_a_gzip_compressed_decode_once_is_served(decode_channel, small_step):
    sequences, q, rows = small_step
    response = rpc(decode_channel, DECODER, "DecodeOnce")(decode_request(1, 0, sequences, q),
                                                          compression=grpc.Compression.Gzip)
    assert_matches_reference(response, q, rows)


def test_a_gzip_compressed_decode_stream_is_served(decode_channel, cache, rng):
    sequences = cache.prefilled(rng, [100, 3])
    before = [cache.read(s, 0) for s in sequences]
    q = random_bf16(rng, (2, 1, 16, 576))
    kv = random_bf16(rng, (2, 1, 576))
    call = rpc(decode_channel, DECODER, "Decode")(iter([decode_request(1, 0, sequences, q, kv)]),
                                                  compression=grpc.Compression.Gzip)
    (answer,) = list(call)
    assert_matches_reference(answer, q, [np.concatenate([r, kv[i]]) for i, r in enumerate(before)])
    assert [cache.lengths(s) for s in sequences] == [[101, 0], [4, 0]]


def test_a_gzip_compressed_upload_is_applied(grpc_channel, cache, rng):
    sequence = cache.create()
    rows = random_bf16(rng, (300, 576))
    chunk = message("AppendKvChunk", sequence_id=sequence, layer=1, kv=message("Tensor", dtype=1, shape=[300, 576], data=rows.tobytes()))
    reply = rpc(grpc_channel, KV_CACHE, "AppendKv")(iter([chunk]), compression=grpc.Compression.Gzip)
    assert (reply.chunks, reply.rows) == (1, 300)
    assert np.array_equal(cache.read(sequence, 1), rows)


def test_a_deflate_compressed_request_is_unimplemented_and_changes_nothing(decode_channel, cache, small_step):
    # gRPC: a server answers a grpc-encoding it does not support with UNIMPLEMENTED; this one takes identity and gzip.
    sequences, q, _ = small_step
    request = decode_request(1, 0, sequences, q, np.zeros((1, 1, 576), np.uint16))
    with pytest.raises(grpc.RpcError) as failure:
        rpc(decode_channel, DECODER, "DecodeOnce")(request, compression=grpc.Compression.Deflate)
    assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "gzip" in failure.value.details()
    assert cache.lengths(sequences[0]) == [30, 0]


def test_a_deflate_compressed_upload_is_unimplemented(grpc_channel, cache):
    sequence = cache.create()
    chunk = message("AppendKvChunk", sequence_id=sequence, layer=0, kv=message("Tensor", dtype=1, shape=[1, 576], data=bytes(1152)))
    with pytest.raises(grpc.RpcError) as failure:
        rpc(grpc_channel, KV_CACHE, "AppendKv")(iter([chunk]), compression=grpc.Compression.Deflate)
    assert failure.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert cache.lengths(sequence) == [0, 0]
