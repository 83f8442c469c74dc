import numpy as np

from flashmla_client import float32_to_bf16, mla_decode_reference, random_bf16
from flashmla_client.bf16 import bf16_to_float32
from flashmla_client.reference import relative_error


def test_one_visible_row_gives_its_value_columns_and_its_score_as_lse():
    rng = np.random.default_rng(1)
    q = random_bf16(rng, (1, 1, 2, 576))
    kv = random_bf16(rng, (1, 576))
    out, lse = mla_decode_reference(q, [kv])
    k = bf16_to_float32(kv).astype(np.float64)[0]
    assert np.allclose(out[0, 0], np.broadcast_to(k[:512], (2, 512)))
    expected = bf16_to_float32(q).astype(np.float64)[0, 0] @ k / 24.0
    assert np.allclose(lse[0, :, 0], expected)


def test_equal_scores_average_the_values_and_lse_is_log_of_the_count_plus_the_score():
    q = np.zeros((1, 1, 1, 576), np.uint16)
    kv = float32_to_bf16(np.arange(3 * 576, dtype=np.float32).reshape(3, 576) / 100)
    out, lse = mla_decode_reference(q, [kv])
    assert np.allclose(out[0, 0, 0], bf16_to_float32(kv).astype(np.float64)[:, :512].mean(axis=0))
    assert np.isclose(lse[0, 0, 0], np.log(3))


def test_query_token_i_sees_positions_up_to_length_minus_s_q_plus_i():
    rng = np.random.default_rng(2)
    q = random_bf16(rng, (1, 2, 1, 576))
    kv = random_bf16(rng, (4, 576))
    out, lse = mla_decode_reference(q, [kv])
    first, _ = mla_decode_reference(q[:, :1], [kv[:3]])
    second, _ = mla_decode_reference(q[:, 1:], [kv])
    assert np.allclose(out[0, 0], first[0, 0]) and np.allclose(out[0, 1], second[0, 0])


def test_the_softmax_scale_multiplies_the_scores():
    rng = np.random.default_rng(3)
    q = random_bf16(rng, (1, 1, 1, 576))
    kv = random_bf16(rng, (1, 576))
    _, lse_default = mla_decode_reference(q, [kv])
    _, lse_scaled = mla_decode_reference(q, [kv], softmax_scale=1.0)
    assert np.isclose(lse_scaled[0, 0, 0], lse_default[0, 0, 0] * 24.0)


def test_relative_error_ignores_the_infinities_of_the_expected_values():
    expected = np.array([1.0, -np.inf, 2.0])
    assert relative_error(np.array([1.0, -np.inf, 2.0]), expected) == 0
    assert np.isclose(relative_error(np.array([1.1, -np.inf, 2.0]), expected), 0.1 / np.sqrt(5))
