"""Drift is measured against the snapshot in force a window of stream time earlier, so its size
does not depend on how often snapshots are taken."""

import numpy as np
import pytest

from xtream.consumers.snapshots import DriftBaseline, js_divergence


def dists(tag: float):
    return {"en": (["a", "b"], np.array([[tag, 1.0 - tag]]))}


def test_reference_is_the_snapshot_in_force_one_window_earlier():
    base = DriftBaseline(window_seconds=60, resolution=60)
    for t in range(0, 200, 10):
        base.add(float(t), dists(t / 1000))
    ref = base.reference(195.0)
    assert ref["en"][1][0, 0] == pytest.approx(130 / 1000)   # newest with t <= 195 - 60


def test_while_the_stream_is_younger_than_the_window_the_oldest_snapshot_is_the_reference():
    base = DriftBaseline(window_seconds=600)
    assert base.reference(0.0) is None
    base.add(0.0, dists(0.1))
    base.add(5.0, dists(0.2))
    assert base.reference(10.0)["en"][1][0, 0] == pytest.approx(0.1)


def test_memory_is_bounded_by_the_resolution_not_the_cadence():
    base = DriftBaseline(window_seconds=100, resolution=4)
    for t in np.arange(0, 1000, 0.5):
        base.add(float(t), dists(0.5))
    assert len(base) <= 4 + 2


def test_the_drift_of_a_change_does_not_depend_on_the_snapshot_cadence():
    """A topic moves to other words over 20 s; snapshots every 1 s or every 10 s see the same full drift
    (consecutive snapshots 1 s apart would each see only a twentieth of the move)."""
    def max_drift(every):
        base, worst = DriftBaseline(window_seconds=30), 0.0
        for t in np.arange(0, 200, every):
            share = float(np.clip((t - 100) / 20, 0, 1))
            d = {"en": (["a", "b"], np.array([[1.0 - share, share]]))}
            ref = base.reference(float(t))
            if ref is not None:
                worst = max(worst, float(js_divergence(d["en"][1], ref["en"][1]).max()))
            base.add(float(t), d)
        return worst
    assert max_drift(1.0) == pytest.approx(1.0) and max_drift(10.0) == pytest.approx(1.0)


def test_state_round_trips():
    base = DriftBaseline(window_seconds=60)
    base.add(1.0, dists(0.3))
    again = DriftBaseline(window_seconds=60)
    again.load_state_dict(base.state_dict())
    assert again.reference(100.0)["en"][1][0, 0] == pytest.approx(0.3)


def test_drift_is_measured_on_the_leading_words():
    """Mass moving among tail words of a topic whose leading words hold is no drift; the leading
    words replaced by others is full drift."""
    from xtream.consumers.snapshots import top_word_divergence

    rng = np.random.default_rng(0)
    v = 2000
    head = np.zeros(v)
    head[:10] = 0.05                                  # half the mass on ten leading words
    tail_a, tail_b = rng.dirichlet(np.ones(v - 10)), rng.dirichlet(np.ones(v - 10))
    p = head.copy()
    p[10:] = 0.5 * tail_a
    q = head.copy()
    q[10:] = 0.5 * tail_b
    assert float(js_divergence(p[None], q[None])[0]) > 0.1          # the full JS sees the tail shuffle
    assert float(top_word_divergence(p[None], q[None])[0]) < 0.05
    r = np.roll(p, 1000)                              # other leading words
    assert float(top_word_divergence(p[None], r[None])[0]) > 0.9
