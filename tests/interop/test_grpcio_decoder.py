"""flashmla.v1.Decoder through grpcio on both ports (gRPC and data plane): results against the float64
reference, the append, shapes, streams with several requests in flight, and error codes."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest

from server_process import SERVER_OPTIONS
from flashmla_client.bf16 import random_bf16
from workload import DECODER, assert_matches_reference, decode_request, message, rpc


def decode_once(channel, request, **options):
    return rpc(channel, DECODER, "DecodeOnce")(request, **options)


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as failure:
        call()
    return failure.value.code()


def test_decode_once_appends_the_new_rows_and_matches_the_reference(decode_channel, cache, rng):
    lengths = [70, 1, 200]
    sequences = cache.prefilled(rng, lengths)
    before = [cache.read(s, 0) for s in sequences]
    q = random_bf16(rng, (3, 1, 16, 576))
    kv = random_bf16(rng, (3, 1, 576))
    response = decode_once(decode_channel, decode_request(42, 0, sequences, q, kv))
    assert response.request_id == 42
    layers = [np.concatenate([rows, kv[i]]) for i, rows in enumerate(before)]
    assert_matches_reference(response, q, layers)
    assert [cache.lengths(s) for s in sequences] == [[n + 1, 0] for n in lengths]
    assert all(np.array_equal(cache.read(s, 0), layers[i]) for i, s in enumerate(sequences))


def test_several_query_tokens_are_causal_inside_the_step(decode_channel, cache, rng):
    sequences = cache.prefilled(rng, [5, 64], layer=1)
    before = [cache.read(s, 1) for s in sequences]
    q = random_bf16(rng, (2, 4, 8, 576))
    kv = random_bf16(rng, (2, 4, 576))
    response = decode_once(decode_channel, decode_request(1, 1, sequences, q, kv))
    assert_matches_reference(response, q, [np.concatenate([rows, kv[i]]) for i, rows in enumerate(before)])


def test_without_new_rows_the_last_cached_tokens_are_the_queries_and_nothing_is_appended(decode_channel, cache, rng):
    sequences = cache.prefilled(rng, [33, 130])
    rows = [cache.read(s, 0) for s in sequences]
    q = random_bf16(rng, (2, 2, 4, 576))
    response = decode_once(decode_channel, decode_request(7, 0, sequences, q))
    assert_matches_reference(response, q, rows)
    assert [cache.lengths(s) for s in sequences] == [[33, 0], [130, 0]]


def test_an_explicit_softmax_scale_is_used_and_zero_means_one_over_sqrt_576(decode_channel, cache, rng):
    sequence = cache.prefilled(rng, [50])
    rows = [cache.read(sequence[0], 0)]
    q = random_bf16(rng, (1, 1, 2, 576))
    scaled = decode_once(decode_channel, decode_request(1, 0, sequence, q, softmax_scale=0.2))
    assert_matches_reference(scaled, q, rows, softmax_scale=0.2)
    default = decode_once(decode_channel, decode_request(2, 0, sequence, q, softmax_scale=0.0))
    assert_matches_reference(default, q, rows, softmax_scale=1 / 24)
    assert scaled.lse.data != default.lse.data


def test_without_new_rows_an_s_q_past_the_layer_length_is_invalid_argument_and_changes_nothing(decode_channel, cache, rng):
    sequence = cache.prefilled(rng, [1])
    q = random_bf16(rng, (1, 3, 2, 576))  # length 1, s_q 3: tokens 0 and 1 would see no position
    assert code_of(lambda: decode_once(decode_channel, decode_request(1, 0, sequence, q))) == grpc.StatusCode.INVALID_ARGUMENT
    assert cache.lengths(sequence[0]) == [1, 0]


def test_with_new_rows_an_s_q_past_the_layer_length_is_causal_and_every_token_sees_a_position(decode_channel, cache, rng):
    sequence = cache.prefilled(rng, [1])
    q, new_rows = random_bf16(rng, (1, 3, 2, 576)), random_bf16(rng, (1, 3, 576))
    response = decode_once(decode_channel, decode_request(1, 0, sequence, q, new_rows))
    assert_matches_reference(response, q, [cache.read(sequence[0], 0)])  # token i sees 1 + i + 1 positions
    assert np.isfinite(np.frombuffer(response.lse.data, dtype="<f4")).all()
    assert cache.lengths(sequence[0]) == [4, 0]


def test_timings_say_how_the_request_was_batched(decode_channel, cache, rng):
    sequences = cache.prefilled(rng, [10, 10])
    response = decode_once(decode_channel, decode_request(1, 0, sequences, random_bf16(rng, (2, 1, 4, 576))))
    t = response.timings
    assert t.batch_requests >= 1 and t.batch_sequences >= 2 and t.compute_us > 0 and t.queue_us >= 0
    assert t.kernel_us == 0  # the CPU backend does not measure device time


def _q(b, s_q=1, h_q=4):
    return np.zeros((b, s_q, h_q, 576), np.uint16)


@pytest.mark.parametrize("case, change", [
    ("no sequences", lambda r, s: r.ClearField("sequence_ids")),
    ("a sequence twice", lambda r, s: r.sequence_ids.append(s[0])),
    ("s_q 0", lambda r, s: setattr(r, "s_q", 0)),
    ("h_q 0", lambda r, s: setattr(r, "h_q", 0)),
    ("h_q past max_heads", lambda r, s: (setattr(r, "h_q", SERVER_OPTIONS["MaxHeads"] + 1),
                                         r.q.CopyFrom(decode_request(0, 0, s, _q(2, 1, SERVER_OPTIONS["MaxHeads"] + 1)).q))),
    ("s_q past max_query_tokens", lambda r, s: (setattr(r, "s_q", SERVER_OPTIONS["MaxQueryTokens"] + 1),
                                                r.q.CopyFrom(decode_request(0, 0, s, _q(2, SERVER_OPTIONS["MaxQueryTokens"] + 1)).q))),
    ("layer out of range", lambda r, s: setattr(r, "layer", SERVER_OPTIONS["Layers"])),
    ("q of another h_q", lambda r, s: setattr(r, "h_q", 8)),
    ("q in fp32", lambda r, s: setattr(r.q, "dtype", 2)),
    ("q bytes short", lambda r, s: setattr(r.q, "data", r.q.data[:-2])),
    ("kv of another s_q", lambda r, s: r.kv.CopyFrom(decode_request(0, 0, s, _q(2), np.zeros((2, 2, 576), np.uint16)).kv)),
    ("negative softmax_scale", lambda r, s: setattr(r, "softmax_scale", -1.0)),
    ("NaN softmax_scale", lambda r, s: setattr(r, "softmax_scale", float("nan"))),
])
def test_a_malformed_request_is_invalid_argument_and_changes_nothing(decode_channel, cache, rng, case, change):
    sequences = cache.prefilled(rng, [3, 3])
    request = decode_request(1, 0, sequences, _q(2), np.zeros((2, 1, 576), np.uint16))
    change(request, sequences)
    assert code_of(lambda: decode_once(decode_channel, request)) == grpc.StatusCode.INVALID_ARGUMENT, case
    assert [cache.lengths(s) for s in sequences] == [[3, 0], [3, 0]]


def test_an_unknown_sequence_is_not_found_and_the_others_are_unchanged(decode_channel, cache, rng):
    sequences = cache.prefilled(rng, [3])
    request = decode_request(1, 0, [sequences[0], 987654321], _q(2), np.zeros((2, 1, 576), np.uint16))
    assert code_of(lambda: decode_once(decode_channel, request)) == grpc.StatusCode.NOT_FOUND
    assert cache.lengths(sequences[0]) == [3, 0]


def test_a_request_over_the_message_limit_is_resource_exhausted(decode_channel, cache, rng):
    sequences = cache.prefilled(rng, [1])
    heads = SERVER_OPTIONS["MaxMessageBytes"] // (576 * 2) + 1  # h_q past max_heads too; the size is checked first
    request = decode_request(1, 0, sequences, np.zeros((1, 1, heads, 576), np.uint16))
    assert code_of(lambda: decode_once(decode_channel, request)) == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_stream_answers_every_request_in_flight_by_its_id(decode_channel, cache, rng):
    # Requests of both layers and several shapes, all sent before the first answer is read: the server may
    # answer them in any order, and each answer is checked against the request its id names.
    sequences = cache.prefilled(rng, [40, 90, 7]) + cache.prefilled(rng, [12, 300], layer=1)
    cases = {}
    for request_id, (layer, chosen, s_q, h_q) in enumerate([
            (0, [0, 1, 2], 1, 16), (1, [3, 4], 2, 8), (0, [1], 1, 128), (1, [4], 1, 1),
            (0, [0, 2], 3, 4), (1, [3], 1, 64), (0, [2, 1, 0], 1, 2), (1, [4, 3], 1, 32)], start=100):
        ids = [sequences[i] for i in chosen]
        cases[request_id] = (layer, ids, random_bf16(rng, (len(ids), s_q, h_q, 576)))
    layers = {s: [cache.read(s, layer) for layer in (0, 1)] for s in sequences}
    requests = [decode_request(rid, layer, ids, q) for rid, (layer, ids, q) in cases.items()]
    answers = {}
    for response in rpc(decode_channel, DECODER, "Decode")(iter(requests)):
        assert response.request_id not in answers
        answers[response.request_id] = response
    assert sorted(answers) == sorted(cases)
    for rid, (layer, ids, q) in cases.items():
        assert_matches_reference(answers[rid], q, [layers[s][layer] for s in ids])


def test_a_stream_keeps_requests_in_flight_while_it_reads_answers(decode_channel, cache, rng):
    # The requests go out from a generator that waits until 4 are unanswered, the way a pipelining host works.
    sequences = cache.prefilled(rng, [64, 64])
    rows = [cache.read(s, 0) for s in sequences]
    outstanding = threading.Semaphore(4)
    queries = {rid: random_bf16(rng, (2, 1, 8, 576)) for rid in range(1, 25)}
    peak, sent, answered = [0], [0], [0]

    def requests():
        for rid, q in queries.items():
            outstanding.acquire()
            sent[0] += 1
            peak[0] = max(peak[0], sent[0] - answered[0])
            yield decode_request(rid, 0, sequences, q)

    seen = set()
    for response in rpc(decode_channel, DECODER, "Decode")(requests()):
        answered[0] += 1
        outstanding.release()
        assert_matches_reference(response, queries[response.request_id], rows)
        seen.add(response.request_id)
    assert seen == set(queries) and peak[0] == 4


def test_a_failed_request_in_a_stream_gets_its_error_and_the_stream_goes_on(decode_channel, cache, rng):
    sequences = cache.prefilled(rng, [20])
    rows = [cache.read(sequences[0], 0)]
    good_q = random_bf16(rng, (1, 1, 4, 576))
    requests = [decode_request(1, 0, sequences, good_q),
                decode_request(2, 0, [987654321], _q(1)),
                decode_request(3, SERVER_OPTIONS["Layers"], sequences, _q(1)),
                decode_request(4, 0, sequences, good_q)]
    answers = {r.request_id: r for r in rpc(decode_channel, DECODER, "Decode")(iter(requests))}
    assert sorted(answers) == [1, 2, 3, 4]
    assert answers[2].error.code == grpc.StatusCode.NOT_FOUND.value[0] and answers[2].error.message
    assert answers[3].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    for failed in (answers[2], answers[3]):
        assert not failed.HasField("out") and not failed.HasField("lse")
    assert_matches_reference(answers[1], good_q, rows)
    assert_matches_reference(answers[4], good_q, rows)


def test_an_empty_stream_ends_with_ok_and_no_answers(decode_channel):
    call = rpc(decode_channel, DECODER, "Decode")(iter([]))
    assert list(call) == [] and call.code() == grpc.StatusCode.OK
