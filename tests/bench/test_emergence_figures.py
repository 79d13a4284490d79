"""The figures bench.emergence reports against the news-monitoring targets, on planted slot sequences."""

import numpy as np

from bench.emergence import RECENT, SHARE, first_story_topic, precision_recall


def test_lag_counts_new_class_documents_until_one_slot_is_mostly_the_new_class():
    quiet = 100
    is_new = np.zeros(quiet + 400, dtype=bool)
    is_new[quiet::2] = True                        # half of the story phase is the new class
    slots = np.zeros(len(is_new), dtype=int)
    slots[is_new] = 7                              # ... and all of it goes to slot 7
    lag, slot = first_story_topic(slots, is_new, quiet)
    assert slot == 7
    assert lag == RECENT      # the window of slot 7 is full of the new class at its RECENT-th document
    assert first_story_topic(np.zeros(len(is_new), dtype=int), is_new, quiet) == (None, None)


def test_precision_and_recall_pick_the_precise_slot_holding_most_of_the_last_new_class_documents():
    is_new = np.array([False] * 50 + [True, False] * 100)
    slots = np.zeros(len(is_new), dtype=int)
    new = np.flatnonzero(is_new)
    slots[new[::4]] = 3                            # a quarter of the new class in slot 3 (pure)
    slots[new[np.arange(len(new)) % 4 != 0]] = 5   # three quarters in slot 5, which also takes ...
    slots[np.flatnonzero(~is_new)[-20:]] = 5       # ... 20 other documents inside the span
    best, precision, recall = precision_recall(slots, is_new, last=len(new))
    assert best == 5
    assert recall == 0.75
    assert precision == 75 / 95 >= SHARE
    # A slot under SHARE precision never beats one above it, however much it holds.
    slots[np.flatnonzero(~is_new)[-100:]] = 5
    best, precision, _ = precision_recall(slots, is_new, last=len(new))
    assert (best, precision) == (3, 1.0)
