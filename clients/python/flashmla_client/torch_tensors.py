"""Optional torch helpers: bf16 bits to and from ``torch.bfloat16`` CPU tensors, pinned host memory.

torch is imported when one of these is called, never by the rest of the package. Pinned (page-locked)
memory needs a CUDA-enabled torch; a host that moves the outputs to its GPU next should ask for it,
so the copy to the device can run asynchronously.
"""

from __future__ import annotations

import numpy as np


def _torch():
    import torch

    return torch


def bits_from_bf16_tensor(tensor) -> np.ndarray:
    """The bits of a ``torch.bfloat16`` tensor as a uint16 numpy array: a view when it is a contiguous
    CPU tensor, else a copy (a CUDA tensor is copied to the host)."""
    torch = _torch()
    if tensor.dtype != torch.bfloat16:
        raise TypeError(f"expected a torch.bfloat16 tensor, got {tensor.dtype}")
    host = tensor.detach().to("cpu").contiguous()
    return host.view(torch.int16).numpy().view(np.uint16)


def bf16_tensor_from_bits(bits: np.ndarray, pin_memory: bool = False):
    """A new ``torch.bfloat16`` CPU tensor holding ``bits`` (uint16), in pinned memory if asked."""
    torch = _torch()
    bits = np.asarray(bits)
    if bits.dtype != np.uint16:
        raise TypeError(f"bf16 bits must be uint16, got {bits.dtype}")
    tensor = torch.empty(bits.shape, dtype=torch.bfloat16, pin_memory=pin_memory)
    tensor.view(torch.int16).numpy()[...] = bits.view(np.int16)
    return tensor


def float32_tensor_from_array(array: np.ndarray, pin_memory: bool = False):
    """A new ``torch.float32`` CPU tensor holding ``array``, in pinned memory if asked."""
    torch = _torch()
    array = np.asarray(array, dtype=np.float32)
    tensor = torch.empty(array.shape, dtype=torch.float32, pin_memory=pin_memory)
    tensor.numpy()[...] = array
    return tensor


def decode_output_to_torch(output, pin_memory: bool = False):
    """``(out, lse)`` of a ``DecodeOutput`` as torch CPU tensors (bf16 ``[b, s_q, h_q, 512]``, float32
    ``[b, h_q, s_q]``), copied once out of the response."""
    return bf16_tensor_from_bits(output.out, pin_memory), float32_tensor_from_array(output.lse, pin_memory)
