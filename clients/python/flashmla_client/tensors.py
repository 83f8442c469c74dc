"""numpy arrays to and from ``flashmla.v1.Tensor`` (raw little-endian bytes, dtype, shape).

bf16 tensors are ``uint16`` arrays of their bits; fp32 tensors are ``float32`` arrays; fp8 KV rows
(``DTYPE_FP8_E4M3_SCALED``, 656 bytes a token) are ``uint8`` arrays ``[n, 656]``. Arrays read from
a response are read-only views over the response's bytes (no copy); copy one to keep or change it.
Torch tensors are accepted where an array is (``torch_tensors``; torch is imported only then).
"""

from __future__ import annotations

import numpy as np

from ._contract import DTYPE_BF16, DTYPE_FP32, DTYPE_FP8_E4M3_SCALED, Tensor

FP8_ROW_BYTES = 656
_NUMPY = {DTYPE_BF16: np.dtype("<u2"), DTYPE_FP32: np.dtype("<f4"), DTYPE_FP8_E4M3_SCALED: np.dtype("u1")}
_NAMES = {DTYPE_BF16: "bf16 (uint16 bits)", DTYPE_FP32: "fp32", DTYPE_FP8_E4M3_SCALED: "fp8 KV rows (uint8 [n, 656])"}


def as_bf16_bits(array, what: str) -> np.ndarray:
    """``array`` as a C-contiguous uint16 numpy array of bf16 bits (a torch bf16 tensor is viewed, not converted)."""
    if type(array).__module__.startswith("torch"):
        from .torch_tensors import bits_from_bf16_tensor

        return bits_from_bf16_tensor(array)
    array = np.asarray(array)
    if array.dtype != np.uint16:
        raise TypeError(f"{what} must hold bf16 bits as uint16 (float32_to_bf16 converts), got {array.dtype}")
    return np.ascontiguousarray(array)


def as_kv_rows(array, what: str) -> tuple[np.ndarray, int]:
    """KV rows to append and their wire dtype: bf16 bits ``[n, 576]`` (uint16, or a torch bf16 tensor), or rows
    already in the fp8 format, ``uint8 [n, 656]`` (an fp8 server stores them as they are; a bf16 one refuses them)."""
    if type(array).__module__.startswith("torch") or np.asarray(array).dtype != np.uint8:
        return as_bf16_bits(array, what), DTYPE_BF16
    rows = np.ascontiguousarray(array)
    if rows.ndim != 2 or rows.shape[1] != FP8_ROW_BYTES:
        raise ValueError(f"{what}: fp8 KV rows are uint8 [n, {FP8_ROW_BYTES}], got shape {rows.shape}")
    return rows, DTYPE_FP8_E4M3_SCALED


def to_tensor(array: np.ndarray, dtype: int) -> Tensor:
    """A Tensor message of ``array`` (its bytes are copied once, into the message)."""
    wire = np.ascontiguousarray(array, dtype=_NUMPY[dtype])
    return Tensor(dtype=dtype, shape=wire.shape, data=wire.tobytes())


def from_tensor(tensor: Tensor, dtype: int, what: str) -> np.ndarray:
    """A read-only view of ``tensor``'s bytes with its shape; ValueError when dtype or byte count are not right."""
    if tensor.dtype != dtype:
        sent = _NAMES.get(tensor.dtype, f"dtype {tensor.dtype}")
        raise ValueError(f"{what}: expected {_NAMES[dtype]}, the server sent {sent}")
    kind = _NUMPY[dtype]
    shape = tuple(tensor.shape)
    if int(np.prod(shape, dtype=np.int64)) * kind.itemsize != len(tensor.data):
        raise ValueError(f"{what}: shape {shape} does not match {len(tensor.data)} bytes")
    return np.frombuffer(tensor.data, dtype=kind).reshape(shape)
