"""The precision of XTRA's largest products: the beta alignment's, the decoder's and the encoder's.

Those products hold most of a training step's arithmetic. In bfloat16 their inputs are rounded to
8 significant bits and the sums accumulate in float32 (oneDNN); on a CPU that multiplies bfloat16
natively (``avx512_bf16`` or AMX) that halves their cost, elsewhere it is emulated and slower.
Everything between the products (softmaxes, batch statistics, losses, the optimizer) stays float32.

- ``auto``: all three in bfloat16 where the CPU multiplies it natively, float32 elsewhere
  (bench/README.md, the step profile, compares the choices on quality).
- ``bfloat16``: all three, on any CPU.
- ``float32``: none.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PRECISIONS", "cpu_multiplies_bf16", "has_native_bf16", "linear", "matmul", "operand", "uses_bf16"]

#: The values of ``XTRAConfig.product_precision``.
PRECISIONS = ("auto", "float32", "bfloat16")

_PARTS = ("alignment", "decoder", "encoder")
_NATIVE_BF16 = re.compile(r"\b(avx512_bf16|amx_bf16)\b")


def has_native_bf16(cpuinfo: str) -> bool:
    """Whether ``/proc/cpuinfo``'s text lists a bfloat16 dot-product instruction set."""
    return _NATIVE_BF16.search(cpuinfo) is not None


@functools.cache
def cpu_multiplies_bf16() -> bool:
    """:func:`has_native_bf16` of this machine (False where ``/proc/cpuinfo`` cannot be read)."""
    try:
        return has_native_bf16(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False


def uses_bf16(precision: str, part: Literal["alignment", "decoder", "encoder"]) -> bool:
    """Whether ``precision`` (one of :data:`PRECISIONS`) rounds ``part``'s products on this machine."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown product precision {precision!r}; one of {PRECISIONS}")
    if precision == "auto":
        return part in _PARTS and cpu_multiplies_bf16()
    return precision == "bfloat16"


def operand(t: torch.Tensor, bf16: bool) -> torch.Tensor:
    """``t`` as a product's operand: rounded to bfloat16 with ``bf16``, as it is otherwise."""
    return t.to(torch.bfloat16) if bf16 else t


def matmul(a: torch.Tensor, b: torch.Tensor, bf16: bool) -> torch.Tensor:
    """``a @ b`` in float32; with ``bf16`` the inputs (and the result) are rounded to bfloat16."""
    return (operand(a, bf16) @ operand(b, bf16)).float()


def linear(x: torch.Tensor, layer: nn.Linear, bf16: bool) -> torch.Tensor:
    """``layer(x)``; with ``bf16`` the input and the weight are rounded to bfloat16, the bias is
    added in float32 to the widened product."""
    if not bf16:
        return cast(torch.Tensor, layer(x))
    out = F.linear(operand(x, True), operand(layer.weight, True)).float()
    return out if layer.bias is None else out + layer.bias
