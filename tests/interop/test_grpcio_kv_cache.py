"""flashmla.v1.KvCache through grpcio on the gRPC port: every RPC, its results and its error codes."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from server_process import SERVER_OPTIONS
from flashmla_client.bf16 import random_bf16
from workload import KV_CACHE, bf16_tensor, message, rpc


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as failure:
        call()
    return failure.value.code()


def test_get_config_reports_the_servers_fixed_shape(cache):
    config = cache.call("GetConfig", message("GetConfigRequest"))
    assert (config.num_layers, config.head_dim_k, config.head_dim_v, config.block_size) == (SERVER_OPTIONS["Layers"], 576, 512, 64)
    assert config.kv_dtype == 1 and config.backend == "cpu" and config.device
    assert config.total_blocks == SERVER_OPTIONS["TotalBlocks"]
    assert config.max_heads == SERVER_OPTIONS["MaxHeads"] and config.max_query_tokens == SERVER_OPTIONS["MaxQueryTokens"]
    assert config.max_message_bytes == SERVER_OPTIONS["MaxMessageBytes"]
    assert config.sequence_lease_seconds == 0


def test_create_sequence_gives_new_empty_sequences_with_distinct_ids(cache):
    first, second = cache.create(), cache.create()
    assert first != second
    info = cache.call("GetSequence", message("GetSequenceRequest", sequence_id=first))
    assert info.sequence_id == first and list(info.layer_lengths) == [0, 0] and info.blocks == 0


def test_append_kv_applies_every_chunk_in_order_and_read_kv_returns_the_same_bytes(cache, rng):
    sequence = cache.create()
    parts = [random_bf16(rng, (n, 576)) for n in (3, 64, 70)]
    chunks = [message("AppendKvChunk", sequence_id=sequence, layer=0, kv=bf16_tensor(p)) for p in parts]
    chunks.append(message("AppendKvChunk", sequence_id=sequence, layer=1, kv=bf16_tensor(parts[0])))
    reply = cache.call("AppendKv", iter(chunks))
    assert (reply.chunks, reply.rows) == (4, 140)
    info = cache.call("GetSequence", message("GetSequenceRequest", sequence_id=sequence))
    assert list(info.layer_lengths) == [137, 3] and info.blocks == 3
    assert np.array_equal(cache.read(sequence, 0), np.concatenate(parts))
    assert np.array_equal(cache.read(sequence, 1), parts[0])


def test_read_kv_streams_the_asked_rows_in_chunks_of_the_asked_size(cache, rng):
    sequence = cache.create()
    rows = random_bf16(rng, (100, 576))
    cache.append(sequence, 0, rows)
    request = message("ReadKvRequest", sequence_id=sequence, layer=0, start=10, count=45, rows_per_chunk=20)
    chunks = list(cache.call("ReadKv", request))
    assert [c.start for c in chunks] == [10, 30, 50]
    assert [list(c.kv.shape) for c in chunks] == [[20, 576], [20, 576], [5, 576]]
    assert all(c.sequence_id == sequence and c.layer == 0 and c.kv.dtype == 1 for c in chunks)
    data = np.frombuffer(b"".join(c.kv.data for c in chunks), dtype="<u2").reshape(45, 576)
    assert np.array_equal(data, rows[10:55])


def test_read_kv_outside_the_layer_is_invalid_argument(cache, rng):
    sequence = cache.prefilled(rng, [5])[0]
    request = message("ReadKvRequest", sequence_id=sequence, layer=0, start=3, count=5)
    assert code_of(lambda: list(cache.call("ReadKv", request))) == grpc.StatusCode.INVALID_ARGUMENT


def test_fork_shares_full_blocks_copies_the_partial_one_and_writes_copy_on_write(cache, rng):
    parent = cache.create()
    rows = random_bf16(rng, (100, 576))
    cache.append(parent, 0, rows)
    cache.append(parent, 1, rows)
    fork = cache.call("ForkSequence", message("ForkSequenceRequest", sequence_id=parent))
    assert fork.sequence_id != parent and (fork.shared_blocks, fork.copied_blocks) == (1, 1)
    assert cache.lengths(fork.sequence_id) == [100, 100]
    assert np.array_equal(cache.read(fork.sequence_id, 1), rows)
    extra = random_bf16(rng, (30, 576))
    cache.append(fork.sequence_id, 0, extra)
    assert np.array_equal(cache.read(fork.sequence_id, 0), np.concatenate([rows, extra]))
    assert np.array_equal(cache.read(parent, 0), rows) and cache.lengths(parent) == [100, 100]


def test_truncate_cuts_every_layer_and_releases_whole_blocks(cache, rng):
    sequence = cache.create()
    cache.append(sequence, 0, random_bf16(rng, (130, 576)))
    cache.append(sequence, 1, random_bf16(rng, (20, 576)))
    reply = cache.call("TruncateSequence", message("TruncateSequenceRequest", sequence_id=sequence, length=64))
    assert reply.released_blocks == 2
    assert cache.lengths(sequence) == [64, 20]


def test_truncate_past_the_longest_layer_is_invalid_argument_and_changes_nothing(cache, rng):
    sequence = cache.prefilled(rng, [10])[0]
    request = message("TruncateSequenceRequest", sequence_id=sequence, length=11)
    assert code_of(lambda: cache.call("TruncateSequence", request)) == grpc.StatusCode.INVALID_ARGUMENT
    assert cache.lengths(sequence) == [10, 0]


def test_free_releases_the_blocks_and_the_id_is_then_unknown(cache, rng):
    sequence = cache.prefilled(rng, [65])[0]
    reply = cache.call("FreeSequence", message("FreeSequenceRequest", sequence_id=sequence))
    assert reply.released_blocks == 2
    assert code_of(lambda: cache.lengths(sequence)) == grpc.StatusCode.NOT_FOUND
    assert code_of(lambda: cache.free(sequence)) == grpc.StatusCode.NOT_FOUND


def test_get_stats_counts_blocks_and_sequences(cache, rng):
    before = cache.call("GetStats", message("GetStatsRequest"))
    sequence = cache.prefilled(rng, [129])[0]
    after = cache.call("GetStats", message("GetStatsRequest"))
    assert after.total_blocks == SERVER_OPTIONS["TotalBlocks"]
    assert after.used_blocks + after.free_blocks == after.total_blocks
    assert after.used_blocks - before.used_blocks == 3
    assert after.sequences - before.sequences == 1
    cache.free(sequence)


@pytest.mark.parametrize("method, request_of", [
    ("GetSequence", lambda: message("GetSequenceRequest", sequence_id=987654321)),
    ("ForkSequence", lambda: message("ForkSequenceRequest", sequence_id=987654321)),
    ("TruncateSequence", lambda: message("TruncateSequenceRequest", sequence_id=987654321, length=0)),
    ("FreeSequence", lambda: message("FreeSequenceRequest", sequence_id=987654321)),
])
def test_an_unknown_sequence_is_not_found(cache, method, request_of):
    assert code_of(lambda: cache.call(method, request_of())) == grpc.StatusCode.NOT_FOUND


def test_read_kv_of_an_unknown_sequence_is_not_found(cache):
    request = message("ReadKvRequest", sequence_id=987654321, layer=0)
    assert code_of(lambda: list(cache.call("ReadKv", request))) == grpc.StatusCode.NOT_FOUND


def _chunk(sequence, layer=0, dtype=1, shape=(2, 576), data=None):
    tensor = message("Tensor", dtype=dtype, shape=list(shape))
    tensor.data = data if data is not None else bytes(2 * int(np.prod(shape)))
    return message("AppendKvChunk", sequence_id=sequence, layer=layer, kv=tensor)


@pytest.mark.parametrize("case, chunk_of", [
    ("fp32 rows", lambda s: _chunk(s, dtype=2, data=bytes(4 * 2 * 576))),
    ("unspecified dtype", lambda s: _chunk(s, dtype=0)),
    ("575 columns", lambda s: _chunk(s, shape=(2, 575))),
    ("one dimension", lambda s: _chunk(s, shape=(1152,))),
    ("bytes short of the shape", lambda s: _chunk(s, data=bytes(2 * 576 * 2 - 2))),
    ("layer out of range", lambda s: _chunk(s, layer=SERVER_OPTIONS["Layers"])),
    ("zero rows", lambda s: _chunk(s, shape=(0, 576))),
])
def test_a_malformed_chunk_is_invalid_argument_and_changes_nothing(cache, case, chunk_of):
    sequence = cache.create()
    assert code_of(lambda: cache.call("AppendKv", iter([chunk_of(sequence)]))) == grpc.StatusCode.INVALID_ARGUMENT, case
    assert cache.lengths(sequence) == [0, 0]


def test_an_upload_without_chunks_is_invalid_argument(cache):
    assert code_of(lambda: cache.call("AppendKv", iter([]))) == grpc.StatusCode.INVALID_ARGUMENT


def test_chunks_before_a_failing_chunk_stay_applied(cache, rng):
    sequence = cache.create()
    good = random_bf16(rng, (4, 576))
    chunks = [message("AppendKvChunk", sequence_id=sequence, layer=0, kv=bf16_tensor(good)), _chunk(sequence, shape=(2, 575))]
    assert code_of(lambda: cache.call("AppendKv", iter(chunks))) == grpc.StatusCode.INVALID_ARGUMENT
    assert cache.lengths(sequence) == [4, 0]
    assert np.array_equal(cache.read(sequence, 0), good)


def test_a_message_over_the_size_limit_is_resource_exhausted(cache):
    sequence = cache.create()
    rows = (SERVER_OPTIONS["MaxMessageBytes"] // 1152) + 64
    chunk = _chunk(sequence, shape=(rows, 576))
    assert code_of(lambda: cache.call("AppendKv", iter([chunk]))) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert cache.lengths(sequence) == [0, 0]


def test_an_append_past_the_free_blocks_is_resource_exhausted_and_changes_nothing(cache, rng):
    stats = cache.call("GetStats", message("GetStatsRequest"))
    sequence = cache.create()
    # In 64-row chunks that each fit a message: the chunk that needs one block more than are free fails.
    block = random_bf16(rng, (64, 576))
    chunks = [message("AppendKvChunk", sequence_id=sequence, layer=0, kv=bf16_tensor(block))
              for _ in range(stats.free_blocks + 1)]
    assert code_of(lambda: cache.call("AppendKv", iter(chunks))) == grpc.StatusCode.RESOURCE_EXHAUSTED
    after = cache.call("GetStats", message("GetStatsRequest"))
    assert after.free_blocks == 0 and after.rejected_no_space == stats.rejected_no_space + 1
    assert cache.lengths(sequence) == [64 * stats.free_blocks, 0]
    cache.free(sequence)
    assert cache.call("GetStats", message("GetStatsRequest")).free_blocks == stats.free_blocks


def test_kv_cache_on_the_data_plane_port_is_unimplemented(data_plane_channel):
    call = rpc(data_plane_channel, KV_CACHE, "GetConfig")
    assert code_of(lambda: call(message("GetConfigRequest"))) == grpc.StatusCode.UNIMPLEMENTED
