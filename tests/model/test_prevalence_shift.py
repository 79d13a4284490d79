"""Page-Hinkley (river) per topic on windowed topic shares: a quiet stream raises nothing, a topic
whose share jumps is reported within a few windows, a reset slot starts over."""

import numpy as np
import pytest

from xtream.model.prevalence_shift import PrevalenceShift

K = 20


def quiet_batch(rng, n=100, weights=None):
    p = weights if weights is not None else rng.dirichlet(np.full(K, 20.0))
    return rng.choice(K, size=n, p=p)


def test_a_quiet_stream_raises_no_jump():
    rng = np.random.default_rng(0)
    shift = PrevalenceShift(K)
    p = rng.dirichlet(np.full(K, 5.0))   # unequal topic sizes, stable over time
    for _ in range(2000):                # 200,000 documents in batches of varying size
        shift.learn_many(quiet_batch(rng, n=int(rng.integers(1, 200)), weights=p))
    assert shift.windows > 700
    assert shift.take_jumps() == []


def test_a_story_taking_a_fifth_of_the_stream_is_a_jump_within_a_few_windows():
    rng = np.random.default_rng(1)
    shift = PrevalenceShift(K)
    p = rng.dirichlet(np.full(K, 5.0))
    for _ in range(300):
        shift.learn_many(quiet_batch(rng, weights=p))
    assert shift.take_jumps() == []
    story = p * 0.8
    story[7] += 0.2
    start = shift.windows
    while shift.windows - start < 20:
        shift.learn_many(quiet_batch(rng, weights=story))
        jumps = shift.take_jumps()
        if jumps:
            break
    assert 7 in jumps and shift.windows - start <= 5


def test_reset_forgets_a_slot():
    shift = PrevalenceShift(4, window_docs=10, min_instances=2, threshold=1.0, delta=0.1)
    for _ in range(5):
        shift.learn_many(np.array([0, 1, 2, 3] * 2 + [0, 1]))
    shift.learn_many(np.full(10, 2))
    shift.reset([2])
    assert 2 not in shift.take_jumps()
    with pytest.raises(ValueError):
        PrevalenceShift(0)


def test_a_restored_detector_fires_when_the_original_does():
    """Checkpointed with the model: the detectors' series replay into the same state, so a jump
    halfway through its evidence is reported at the same window by both."""
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.full(K, 5.0))
    original = PrevalenceShift(K)
    for _ in range(300):
        original.learn_many(quiet_batch(rng, weights=p))
    story = p * 0.8
    story[4] += 0.2
    for _ in range(3):   # part of the evidence before the checkpoint
        original.learn_many(quiet_batch(rng, weights=story))
    restored = PrevalenceShift(K, threshold=1.0)
    restored.load_state_dict(original.state_dict())
    fired = {}
    for i in range(40):
        batch = quiet_batch(rng, weights=story)
        for name, shift in (("original", original), ("restored", restored)):
            shift.learn_many(batch)
            if 4 in shift.take_jumps():
                fired.setdefault(name, i)
    assert "original" in fired and fired == {"original": fired["original"], "restored": fired["original"]}
