"""MLA decode in float64 with numpy, written for clarity: the yardstick the tests hold the server to.

The same definition as the contract (``proto/flashmla/v1/decoder.proto``) and the server's
``MlaReference``: scores = q K^T * scale over the 576 columns, causal inside the step (query token i of
a sequence of length L sees positions 0 .. L-s_q+i), out = softmax(scores) V with V the first 512
columns of each KV row, lse the natural log of the softmax denominator of the scaled scores.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .bf16 import bf16_to_float32

HEAD_DIM_K = 576
HEAD_DIM_V = 512


def mla_decode_reference(q: np.ndarray, kv: Sequence[np.ndarray], softmax_scale: float = 0.0):
    """``q`` bf16 bits ``[b, s_q, h_q, 576]``; ``kv[i]`` bf16 bits ``[L_i, 576]``, the whole layer of sequence i
    after the step's append. Returns ``(out [b, s_q, h_q, 512], lse [b, h_q, s_q])`` in float64; a query
    token that sees no position gets out 0 and lse -inf. ``softmax_scale`` 0 means 1/sqrt(576)."""
    b, s_q, h_q, dk = q.shape
    if dk != HEAD_DIM_K or len(kv) != b:
        raise ValueError(f"q must be [b, s_q, h_q, {HEAD_DIM_K}] with one KV array per sequence")
    scale = softmax_scale or 1.0 / np.sqrt(HEAD_DIM_K)
    out = np.zeros((b, s_q, h_q, HEAD_DIM_V))
    lse = np.full((b, h_q, s_q), -np.inf)
    for i in range(b):
        keys = bf16_to_float32(kv[i]).astype(np.float64)
        length = keys.shape[0]
        scores = np.einsum("thc,jc->thj", bf16_to_float32(q[i]).astype(np.float64), keys) * scale
        for t in range(s_q):
            visible = max(0, length - s_q + t + 1)
            if visible == 0:
                continue
            row = scores[t, :, :visible]                       # [h_q, visible]
            peak = row.max(axis=1, keepdims=True)
            weights = np.exp(row - peak)
            total = weights.sum(axis=1)
            out[i, t] = (weights / total[:, None]) @ keys[:visible, :HEAD_DIM_V]
            lse[i, :, t] = peak[:, 0] + np.log(total)
    return out, lse


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """``||actual - expected|| / ||expected||`` over the finite values of ``expected`` (the plain norm of the
    difference when expected is 0)."""
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    finite = np.isfinite(expected)
    diff = np.linalg.norm(actual[finite] - expected[finite])
    norm = np.linalg.norm(expected[finite])
    return float(diff if norm == 0 else diff / norm)
