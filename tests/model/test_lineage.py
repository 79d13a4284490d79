"""Stable topic ids and lineage events between snapshots."""

from __future__ import annotations

import numpy as np

from xtream.model.lineage import TopicTracker


def basis(k: int, d: int = 16) -> np.ndarray:
    return np.eye(d)[:k]


def words(k: int, tag: str = "w") -> list[tuple[str, ...]]:
    return [tuple(f"{tag}{i}-{j}" for j in range(5)) for i in range(k)]


def test_first_snapshot_gives_ids_and_births_to_alive_topics():
    tracker = TopicTracker()
    ids, events = tracker.update(basis(3), np.array([True, True, False]), words(3))
    assert ids == [0, 1, 2]
    assert sorted((e.kind, e.topic_id) for e in events) == [("born", 0), ("born", 1)]


def test_ids_stay_stable_when_topics_move_a_little_and_slots_permute():
    rng = np.random.default_rng(0)
    tracker = TopicTracker()
    vecs = basis(4)
    ids0, _ = tracker.update(vecs, np.ones(4, bool), words(4))
    for _ in range(10):
        vecs = vecs + rng.normal(scale=0.05, size=vecs.shape)
        perm = rng.permutation(4)
        ids, events = tracker.update(vecs[perm], np.ones(4, bool), [words(4)[i] for i in perm])
        assert ids == [ids0[i] for i in perm]
        assert events == []


def test_a_reseeded_slot_is_a_new_topic_and_the_old_one_dies():
    tracker = TopicTracker()
    tracker.update(basis(3), np.ones(3, bool), words(3))
    vecs = basis(4)[[0, 1, 3]]   # slot 2 now holds a different theme
    ids, events = tracker.update(vecs, np.ones(3, bool), words(3)[:2] + [tuple("new" + str(j) for j in range(5))])
    assert ids[:2] == [0, 1] and ids[2] == 3
    assert {(e.kind, e.topic_id) for e in events} == {("died", 2), ("born", 3)}


def test_death_only_after_the_horizon():
    tracker = TopicTracker(death_horizon=3)
    tracker.update(basis(2), np.ones(2, bool), words(2))
    kinds = []
    for _ in range(4):
        _, events = tracker.update(basis(2), np.array([True, False]), words(2))
        kinds.append([(e.kind, e.topic_id) for e in events])
    assert kinds == [[], [], [("died", 1)], []]


def test_two_similar_topics_collapsing_into_one_slot_is_a_merge():
    tracker = TopicTracker(match_threshold=0.85, related_threshold=0.5)
    a = np.array([1.0, 0.0, 0.0])
    b = np.array([0.6, 0.8, 0.0])
    c = np.array([0.0, 0.0, 1.0])
    tracker.update(np.stack([a, b]), np.ones(2, bool), words(2))
    ids, events = tracker.update(np.stack([a + b, c]), np.ones(2, bool), words(2))
    survivor, gone = ids[0], 1 - ids[0]
    assert survivor in (0, 1)
    assert ("merged_into", gone, survivor) in {(e.kind, e.topic_id, e.related_topic_id) for e in events}
    assert ("born", ids[1], None) in {(e.kind, e.topic_id, e.related_topic_id) for e in events}


def test_a_topic_spawning_a_close_neighbour_is_a_split():
    tracker = TopicTracker(match_threshold=0.9, related_threshold=0.5)
    a, b = basis(2)
    tracker.update(np.stack([a, b * 0 + basis(3)[2]]), np.array([True, False]), words(2))
    ids, events = tracker.update(np.stack([a, a + 0.9 * b]), np.ones(2, bool), words(2))
    assert ids[0] == 0
    assert ("split_from", ids[1], 0) in {(e.kind, e.topic_id, e.related_topic_id) for e in events}


def test_renamed_when_top_words_change_by_more_than_half():
    tracker = TopicTracker()
    tracker.update(basis(1), np.ones(1, bool), [("a", "b", "c", "d")])
    _, events = tracker.update(basis(1), np.ones(1, bool), [("a", "x", "y", "z")])
    assert [(e.kind, e.previous_words, e.words) for e in events] == [("renamed", ("a", "b", "c", "d"), ("a", "x", "y", "z"))]


def test_state_round_trip_continues_identically():
    t1 = TopicTracker()
    t1.update(basis(3), np.ones(3, bool), words(3))
    t2 = TopicTracker()
    t2.load_state_dict(t1.state_dict())
    step = (basis(4)[[0, 3, 2]], np.array([True, True, False]), words(3))
    assert t1.update(*step) == t2.update(*step)


def test_a_topic_back_after_dying_is_revived_not_born():
    tracker = TopicTracker(death_horizon=1)
    vecs = np.eye(3)
    words = [("a",), ("b",), ("c",)]
    tracker.update(vecs, np.array([True, True, True]), words)
    _, events = tracker.update(vecs, np.array([True, False, True]), words)
    assert [(e.kind, e.topic_id) for e in events] == [("died", 1)]
    _, events = tracker.update(vecs, np.array([True, True, True]), words)
    assert [(e.kind, e.topic_id) for e in events] == [("revived", 1)]


def test_a_topic_crossing_the_life_line_late_grew_a_new_one_is_born():
    """Born means a new theme: an id that lived below the line for longer than ``birth_horizon``
    snapshots and then crosses it grew; a slot that took another theme is born, even a snapshot late."""
    tracker = TopicTracker(birth_horizon=2)
    vecs = np.eye(4)[:3]
    tracker.update(vecs, np.array([True, True, False]), words(3))
    for _ in range(3):
        tracker.update(vecs, np.array([True, True, False]), words(3))
    _, events = tracker.update(vecs, np.array([True, True, True]), words(3))
    assert [(e.kind, e.topic_id) for e in events] == [("grew", 2)]
    reseeded = np.eye(4)[[0, 1, 3]]   # slot 2 takes a new theme, alive one snapshot later
    ids, events = tracker.update(reseeded, np.array([True, True, False]), words(3))
    assert ids[2] == 3
    _, events = tracker.update(reseeded, np.array([True, True, True]), words(3))
    assert [(e.kind, e.topic_id) for e in events] == [("born", 3)]


def test_a_topic_is_settled_only_after_birth_horizon_snapshots_alive_in_a_row():
    tracker = TopicTracker(birth_horizon=2)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2, 8))
    words = [("a", "b"), ("c", "d")]
    settled = []
    for alive in ([True, False], [True, True], [True, True], [True, True], [True, True]):
        ids, _ = tracker.update(vectors, np.array(alive), words)
        settled.append(sorted(tracker.settled_ids()))
    first, second = ids
    assert settled == [[], [], [first], [first, second], [first, second]]
    state = tracker.state_dict()
    again = TopicTracker()
    again.load_state_dict(state)
    assert again.settled_ids() == tracker.settled_ids()
