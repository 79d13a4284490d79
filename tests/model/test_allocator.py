"""The training process keeps large freed blocks in the heap (glibc) instead of page-faulting them in every step."""

from __future__ import annotations

import platform

import pytest
import torch

from xtream.model.allocator import retain_freed_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt thresholds are a glibc setting")
def test_glibc_accepts_the_thresholds_and_allocation_still_works():
    assert retain_freed_memory() is True
    assert retain_freed_memory() is True   # idempotent: every program entry point may call it
    grads = [torch.zeros(5000, 1000) for _ in range(3)]
    del grads
    again = torch.zeros(5000, 1000)
    assert again.sum().item() == 0.0
