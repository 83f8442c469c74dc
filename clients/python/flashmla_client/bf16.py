"""bfloat16 as raw bits in ``uint16`` arrays (the wire form), to and from float32.

The conversion rounds to nearest even and keeps NaN quiet, as the server's ``Bf16`` and the GPU's
``cvt.rn.bf16.f32`` do, so values converted here are bit-identical to the ones the server makes.
"""

from __future__ import annotations

import numpy as np


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """float32 array of the same shape; every bf16 value is exact in float32."""
    bits = np.asarray(bits)
    if bits.dtype != np.uint16:
        raise TypeError(f"bf16 bits must be uint16, got {bits.dtype}")
    return (bits.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16(values: np.ndarray) -> np.ndarray:
    """uint16 bits of ``values`` (any real dtype, converted to float32 first) rounded to nearest even."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    rounded = ((bits + (0x7FFF + ((bits >> 16) & 1))) >> 16).astype(np.uint16)
    quiet = ((bits >> 16) | 0x0040).astype(np.uint16)
    return np.where(nan, quiet, rounded)


def random_bf16(rng: np.random.Generator, shape, scale: float = 1.0) -> np.ndarray:
    """Normally distributed values as bf16 bits: test and benchmark inputs."""
    return float32_to_bf16(rng.standard_normal(shape, dtype=np.float32) * np.float32(scale))
