"""flashmla_client against a server with ``KvDtype=fp8`` (issue 17): the config says the dtype, bf16 rows are
quantized into FlashMLA's "FP8 with scale" rows (tensor.proto), rows already in that format are stored as they
are and read back with their dtype, and a decode attends over the dequantized rows."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from server_process import SERVER_OPTIONS, LocalServer
from flashmla_client import (FlashMlaClient, FlashMlaError, KvUpload, bf16_to_float32, float32_to_bf16,
                             mla_decode_reference, random_bf16)
from flashmla_client.reference import relative_error

DTYPE_FP8_E4M3_SCALED = 3


@pytest.fixture(scope="module")
def fp8_server():
    started = LocalServer({**SERVER_OPTIONS, "KvDtype": "fp8"})
    yield started
    started.stop()


def e4m3_values() -> np.ndarray:
    """float32 value of each of the 256 e4m3fn codes (tensor.proto's definition; 0x7F and 0xFF are NaN)."""
    codes = np.arange(256)
    exponent, mantissa = (codes >> 3) & 0xF, codes & 7
    magnitude = np.where(exponent == 0, mantissa * 2.0 ** -9, (1 + mantissa / 8) * 2.0 ** (exponent - 7))
    magnitude[(codes & 0x7F) == 0x7F] = np.nan
    return np.where(codes & 0x80, -magnitude, magnitude).astype(np.float32)


def dequantized(stored: np.ndarray) -> np.ndarray:
    """bf16 bits [n, 576] of fp8 rows [n, 656]: bf16(e4m3(code) * scale), the rope values as they are."""
    scales = stored[:, 512:528].copy().view("<f4")                         # [n, 4]
    latent = e4m3_values()[stored[:, :512]] * np.repeat(scales, 128, axis=1)
    return np.concatenate([float32_to_bf16(latent), stored[:, 528:].copy().view("<u2")], axis=1)


def test_the_config_says_fp8_at_656_bytes_a_token(fp8_server):
    with FlashMlaClient(fp8_server.grpc_target) as client:
        config = client.get_config()
    assert (config.kv_dtype, config.kv_bytes_per_token) == (DTYPE_FP8_E4M3_SCALED, 656)
    assert config.token_capacity == SERVER_OPTIONS["TotalBlocks"] * 64


def test_bf16_rows_are_quantized_fp8_rows_kept_and_a_decode_sees_the_dequantized_rows(fp8_server, rng):
    with FlashMlaClient(fp8_server.grpc_target, decode_port=fp8_server.data_plane_port) as client:
        sequence = client.create_sequence()
        bf16 = random_bf16(rng, (70, 576))
        raw = client_side_fp8_rows(rng, 10)
        assert client.append_kv([KvUpload(sequence, 0, bf16), KvUpload(sequence, 0, raw)]) == (2, 80)

        stored = client.read_stored_kv(sequence, 0, rows_per_chunk=32)
        assert stored.dtype == np.uint8 and stored.shape == (80, 656)
        assert np.array_equal(stored[70:], raw)
        amax = np.abs(bf16_to_float32(bf16[:, :512])).reshape(70, 4, 128).max(axis=2)
        assert np.array_equal(stored[:70, 512:528].copy().view("<f4"), (amax / np.float32(448)).astype(np.float32))
        assert np.array_equal(stored[:70, 528:].copy().view("<u2"), bf16[:, 512:])
        with pytest.raises(ValueError, match="fp8"):
            client.read_kv(sequence, 0)

        q = random_bf16(rng, (1, 1, 16, 576))
        output = client.decode(0, [sequence], q)
        expected_out, expected_lse = mla_decode_reference(q, [dequantized(stored)])
        assert relative_error(output.out_float32(), expected_out) < 1e-2
        assert relative_error(output.lse, expected_lse) < 1e-2


def test_a_bf16_server_refuses_fp8_rows_and_nothing_lands(server, rng):
    with FlashMlaClient(server.grpc_target) as client:
        sequence = client.create_sequence()
        with pytest.raises(FlashMlaError) as refused:
            client.append_kv(KvUpload(sequence, 0, client_side_fp8_rows(rng, 2)))
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert client.get_sequence(sequence).layer_lengths == [0, 0]
        client.free_sequence(sequence)


def client_side_fp8_rows(rng, n: int) -> np.ndarray:
    """fp8 rows a prefill node might send: random finite codes, positive scales, bf16 rope values."""
    rows = np.empty((n, 656), np.uint8)
    codes = rng.integers(0, 0x7F, size=(n, 512)) | (rng.integers(0, 2, size=(n, 512)) << 7)
    rows[:, :512] = codes
    rows[:, 512:528] = (rng.random((n, 4), dtype=np.float32) * np.float32(0.01) + np.float32(1e-3)).view(np.uint8)
    rows[:, 528:] = random_bf16(rng, (n, 64)).view(np.uint8)
    return rows
