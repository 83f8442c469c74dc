"""flashmla_client against the real server: cache calls on the gRPC port, decode calls on the data-plane port
(and on the gRPC port), errors as FlashMlaError, the pipelined stream, torch helpers, and the examples."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grpc
import numpy as np
import pytest

from server_process import REPO, SERVER_OPTIONS
from flashmla_client import FlashMlaClient, FlashMlaError, KvUpload, mla_decode_reference, random_bf16
from flashmla_client.reference import relative_error

PACKAGE = REPO / "clients" / "python"
TOLERANCE = 1e-2


@pytest.fixture(params=["data-plane-port", "grpc-port"])
def client(request, server):
    decode_port = server.data_plane_port if request.param == "data-plane-port" else None
    with FlashMlaClient(server.grpc_target, decode_port=decode_port) as made:
        yield made


@pytest.fixture
def sequences(client):
    """Sequences the test makes with ``sequences.new()``; freed after it."""
    made = []

    class Made:
        def new(self) -> int:
            made.append(client.create_sequence())
            return made[-1]

    yield Made()
    for sequence in made:
        try:
            client.free_sequence(sequence)
        except FlashMlaError as error:
            assert error.code == grpc.StatusCode.NOT_FOUND


def assert_close_to_reference(output, q, rows, softmax_scale=0.0):
    expected_out, expected_lse = mla_decode_reference(q, rows, softmax_scale)
    assert output.out.dtype == np.uint16 and output.out.shape == expected_out.shape
    assert output.lse.dtype == np.float32 and output.lse.shape == expected_lse.shape
    assert relative_error(output.out_float32(), expected_out) < TOLERANCE
    assert relative_error(output.lse, expected_lse) < TOLERANCE


def test_the_cache_calls_round_trip_rows_and_report_lengths(client, sequences, rng):
    config = client.get_config()
    assert config.backend == "cpu" and config.num_layers == SERVER_OPTIONS["Layers"] and config.head_dim_k == 576
    sequence = sequences.new()
    rows = random_bf16(rng, (130, 576))
    assert client.append_kv([KvUpload(sequence, 0, rows[:100]), KvUpload(sequence, 0, rows[100:]),
                             KvUpload(sequence, 1, rows[:5])]) == (3, 135)
    info = client.get_sequence(sequence)
    assert info.sequence_id == sequence and info.layer_lengths == [130, 5] and info.blocks == 3
    assert np.array_equal(client.read_kv(sequence, 0, rows_per_chunk=7), rows)
    assert np.array_equal(client.read_kv(sequence, 0, start=64, count=3), rows[64:67])
    fork = client.fork_sequence(sequence)
    assert fork.shared_blocks == 0 and fork.copied_blocks == 3  # layer 1 holds 5 tokens: no block is full in both
    assert client.truncate_sequence(fork.sequence_id, 64) == 2
    assert client.get_sequence(fork.sequence_id).layer_lengths == [64, 5]
    assert client.free_sequence(fork.sequence_id) == 1
    stats = client.get_stats()
    assert stats.total_blocks == SERVER_OPTIONS["TotalBlocks"] and stats.used_blocks + stats.free_blocks == stats.total_blocks


def test_decode_appends_and_matches_the_reference(client, sequences, rng):
    ids = [sequences.new() for _ in range(3)]
    prompt = [random_bf16(rng, (n, 576)) for n in (10, 64, 129)]
    client.append_kv([KvUpload(s, 1, p) for s, p in zip(ids, prompt)])
    q, kv = random_bf16(rng, (3, 2, 8, 576)), random_bf16(rng, (3, 2, 576))
    output = client.decode(1, ids, q, kv)
    assert_close_to_reference(output, q, [np.concatenate([p, kv[i]]) for i, p in enumerate(prompt)])
    assert [client.get_sequence(s).layer_lengths[1] for s in ids] == [12, 66, 131]
    assert output.payload_bytes == 3 * 2 * 8 * 512 * 2 + 3 * 8 * 2 * 4


def test_a_decode_stream_pipelines_requests_and_matches_each_to_its_answer(client, sequences, rng):
    ids = [sequences.new() for _ in range(4)]
    client.append_kv([KvUpload(s, layer, random_bf16(rng, (50 + 20 * i, 576))) for i, s in enumerate(ids) for layer in (0, 1)])
    rows = {(s, layer): client.read_kv(s, layer) for s in ids for layer in (0, 1)}
    work = [(layer, ids[i:i + 2], random_bf16(rng, (2, 1, h, 576))) for layer in (0, 1) for i in (0, 2) for h in (1, 16, 64)]
    with client.open_decode_stream(max_in_flight=4) as stream:
        futures = [stream.submit(layer, chosen, q) for layer, chosen, q in work]
        outputs = [f.result(30) for f in futures]
    assert len({o.request_id for o in outputs}) == len(work)
    for (layer, chosen, q), output in zip(work, outputs):
        assert_close_to_reference(output, q, [rows[(s, layer)] for s in chosen])


def test_failures_are_flashmla_errors_with_the_grpc_code(client, sequences, rng):
    with pytest.raises(FlashMlaError) as unknown:
        client.get_sequence(987654321)
    assert unknown.value.code == grpc.StatusCode.NOT_FOUND and "987654321" in unknown.value.details
    sequence = sequences.new()
    client.append_kv(KvUpload(sequence, 0, random_bf16(rng, (4, 576))))
    with pytest.raises(FlashMlaError) as bad_layer:
        client.decode(SERVER_OPTIONS["Layers"], [sequence], random_bf16(rng, (1, 1, 2, 576)))
    assert bad_layer.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with client.open_decode_stream() as stream:
        failed = stream.submit(0, [987654321], random_bf16(rng, (1, 1, 2, 576)))
        fine = stream.submit(0, [sequence], random_bf16(rng, (1, 1, 2, 576)))
        with pytest.raises(FlashMlaError) as in_stream:
            failed.result(30)
        assert in_stream.value.code == grpc.StatusCode.NOT_FOUND
        assert fine.result(30).out.shape == (1, 1, 2, 512)
    assert client.get_sequence(sequence).layer_lengths == [4, 0]


def test_rows_that_are_not_bf16_bits_are_refused_with_type_error_and_nothing_lands(client, sequences):
    sequence = sequences.new()
    with pytest.raises(TypeError):
        client.append_kv(KvUpload(sequence, 0, np.zeros((3, 576), np.float32)))
    assert client.get_sequence(sequence).layer_lengths == [0, 0]


def test_a_call_past_its_deadline_raises_deadline_exceeded(client, sequences, rng):
    ids = [sequences.new() for _ in range(4)]
    client.append_kv([KvUpload(s, 0, random_bf16(rng, (2048, 576))) for s in ids])
    with pytest.raises(FlashMlaError) as late:
        client.decode(0, ids, random_bf16(rng, (4, 1, 128, 576)), timeout=0.02)
    assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_decode_calls_spread_over_several_connections(server, rng):
    with FlashMlaClient(server.grpc_target, decode_port=server.data_plane_port, connections=2) as spread:
        sequence = spread.create_sequence()
        spread.append_kv(KvUpload(sequence, 0, random_bf16(rng, (20, 576))))
        rows = [spread.read_kv(sequence, 0)]
        streams = [spread.open_decode_stream(max_in_flight=2) for _ in range(2)]
        q = random_bf16(rng, (1, 1, 4, 576))
        futures = [s.submit(0, [sequence], q) for s in streams for _ in range(2)]
        for future in futures:
            assert_close_to_reference(future.result(30), q, rows)
        for stream in streams:
            stream.close()
        spread.free_sequence(sequence)


def test_torch_helpers_convert_bf16_both_ways(client, sequences, rng):
    torch = pytest.importorskip("torch")
    from flashmla_client.torch_tensors import bf16_tensor_from_bits, bits_from_bf16_tensor, decode_output_to_torch

    sequence = sequences.new()
    client.append_kv(KvUpload(sequence, 0, random_bf16(rng, (30, 576))))
    q_bits = random_bf16(rng, (1, 1, 4, 576))
    q = bf16_tensor_from_bits(q_bits)
    assert q.dtype == torch.bfloat16 and np.array_equal(bits_from_bf16_tensor(q), q_bits)
    output = client.decode(0, [sequence], q)  # a torch bf16 tensor is taken as q directly
    out, lse = decode_output_to_torch(output)
    assert out.dtype == torch.bfloat16 and tuple(out.shape) == (1, 1, 4, 512)
    assert np.array_equal(out.float().numpy(), output.out_float32())
    assert lse.dtype == torch.float32 and np.array_equal(lse.numpy(), output.lse)


def run_example(*args):
    env = {**os.environ, "PYTHONPATH": str(PACKAGE)}
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, env=env, timeout=120)


def test_the_decode_loop_example_runs_its_eight_steps(server):
    run = run_example(PACKAGE / "examples" / "decode_loop.py", server.grpc_target, server.data_plane_port)
    assert run.returncode == 0, run.stderr
    assert run.stdout.count("out (1, 1, 16, 512) lse (1, 16, 1)") == 8
    assert f"lengths {[108] * SERVER_OPTIONS['Layers']}" in run.stdout


def test_the_model_host_example_pipelines_and_checks_its_last_output(server):
    run = run_example(PACKAGE / "examples" / "model_host.py", "--address", server.grpc_target,
                      "--decode-port", server.data_plane_port, "--steps", "2", "--context", "64", "--check")
    assert run.returncode == 0, run.stderr + run.stdout
    assert "pipelined:" in run.stdout and "relative error" in run.stdout


def test_the_benchmark_prints_a_row_per_shape(server):
    run = run_example(PACKAGE / "bench.py", "--address", server.grpc_target, "--decode-port", server.data_plane_port,
                      "--batch", "2", "--heads", "4,8", "--context", "64", "--decode", "dataplane", "--seconds", "0.3",
                      "--warmup", "0.1")
    assert run.returncode == 0, run.stderr + run.stdout
    rows = [line for line in run.stdout.splitlines() if line.startswith("| 2 |")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[4] == "data plane" and float(cells[5]) > 0 and float(cells[6]) > 0  # steps/s, up GB/s


def test_torch_outputs_can_land_in_pinned_memory(client, sequences, rng):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("page-locked memory needs a CUDA-enabled torch and a GPU")
    from flashmla_client.torch_tensors import decode_output_to_torch

    sequence = sequences.new()
    client.append_kv(KvUpload(sequence, 0, random_bf16(rng, (30, 576))))
    output = client.decode(0, [sequence], random_bf16(rng, (1, 1, 4, 576)))
    out, lse = decode_output_to_torch(output, pin_memory=True)
    assert out.is_pinned() and lse.is_pinned()
    assert np.array_equal(out.float().numpy(), output.out_float32())
