"""Small vector helpers shared by the model's estimators."""

from __future__ import annotations

import numpy as np

__all__ = ["unit_rows"]


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``x`` with each row (last axis) scaled to unit L2 norm; an all-zero row stays zero.

    Examples
    --------
    >>> unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
    [[0.6, 0.8], [0.0, 0.0]]
    """
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
