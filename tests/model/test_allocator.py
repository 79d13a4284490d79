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


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is a glibc call")
def test_release_hands_the_retained_blocks_of_a_one_off_peak_back():
    """With the thresholds set, 256 MiB of freed 4 MiB blocks stay resident; a release returns them."""
    import numpy as np

    from xtream.model.allocator import release_freed_memory

    def rss_mib() -> float:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024

    assert retain_freed_memory() is True
    blocks = [np.ones(2**19) for _ in range(64)]   # 64 x 4 MiB, below the mmap threshold: heap blocks
    peak = rss_mib()
    del blocks
    retained = rss_mib()
    assert retained > peak - 64          # kept resident: the point of retain_freed_memory
    assert release_freed_memory() is True
    assert rss_mib() < retained - 192    # handed back
