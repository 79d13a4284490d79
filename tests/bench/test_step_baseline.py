"""bench._baseline: an earlier commit's training step, imported beside today's, with its own modules."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")

from bench._baseline import load_baseline


def test_a_baseline_commit_trains_with_its_own_optimizer_not_todays():
    package = load_baseline("f38e1bb")   # the lazy Adam's commit, before clipping moved into the update
    assert package.training.LazyAdam.__module__ == f"{package.__name__}.sparse_adam"
    assert not hasattr(package.sparse_adam, "clip_scale")
    assert package.training.XTRA.__module__ == f"{package.__name__}.xtra"


def test_a_commit_without_the_later_modules_still_loads():
    package = load_baseline("9d831f1")   # before sparse_adam.py and reconstruction.py existed
    assert not hasattr(package, "sparse_adam") and not hasattr(package, "reconstruction")
    assert package.training.XTRATrainer is not None
