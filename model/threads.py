"""Thread pools of the numeric libraries, pinned to a count (BLAS, OpenMP and torch's own)."""

from __future__ import annotations

import sys

__all__ = ["pin_threads"]


def pin_threads(n: int, torch: bool = True) -> None:
    """Limit BLAS/OpenMP pools (threadpoolctl) and torch's intra-op pool to ``n`` threads, for the
    rest of the process. With ``torch=False`` torch is pinned only if something imported it already
    (an embedder that does not use torch never loads it)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(n)
    if torch or "torch" in sys.modules:
        import torch as torch_module

        torch_module.set_num_threads(n)
