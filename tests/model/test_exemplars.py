"""Representative documents: the reservoir nearest each topic's centre (model.exemplars)."""

from __future__ import annotations

import numpy as np
import pytest

from xtream.model.exemplars import TopicExemplars


def _centres() -> np.ndarray:
    return np.eye(3, 4, dtype=np.float32)


def test_keeps_the_documents_nearest_each_centre_per_language():
    ex = TopicExemplars(num_topics=3, per_topic=2, prefix_chars=5)
    rng = np.random.default_rng(0)
    emb = np.repeat(_centres(), 4, axis=0) + 0.05 * rng.standard_normal((12, 4))
    emb[[0, 4, 8]] = _centres()   # the exact centres: nearest of all
    ids = [f"d{i}" for i in range(12)]
    ex.learn_many(ids, [f"text number {i}" for i in range(12)], emb, ["en", "ja"] * 6, _centres())
    for topic in range(3):
        rows = [i for i in range(12) if i // 4 == topic]
        for lang in ("en", "ja"):
            docs = ex.documents(lang, topic)
            mine = [i for i in rows if ["en", "ja"][i % 2] == lang]
            assert [d for d, _ in docs] == [f"d{i}" for i in sorted(mine, key=lambda i: -emb[i, topic] / np.linalg.norm(emb[i]))][:2]
            assert all(len(text) <= 5 for _, text in docs)


def test_moving_centres_rescore_kept_documents_and_duplicates_collapse():
    ex = TopicExemplars(num_topics=2, per_topic=3)
    centres = np.array([[1.0, 0.0], [0.0, 1.0]])
    ex.learn_many(["a", "b"], ["x", "y"], np.array([[1.0, 0.2], [0.6, 1.0]]), ["en", "en"], centres)
    assert [d for d, _ in ex.documents("en", 0)] == ["a"] and [d for d, _ in ex.documents("en", 1)] == ["b"]
    ex.learn_many(["a"], ["x again"], np.array([[1.0, 0.2]]), ["en"], centres[::-1])   # centres swap
    assert ex.documents("en", 1) == [("a", "x again")] and [d for d, _ in ex.documents("en", 0)] == ["b"]


def test_state_round_trip_and_bad_input():
    ex = TopicExemplars(num_topics=3)
    ex.learn_many(["a", "b"], ["x", "y"], np.eye(2, 4), ["en", "zh"], _centres())
    other = TopicExemplars(num_topics=1)
    other.load_state_dict(ex.state_dict())
    assert other.documents("en", 0) == ex.documents("en", 0) and other.languages == ["en", "zh"]
    with pytest.raises(ValueError):
        ex.learn_many(["a"], ["x", "y"], np.eye(1, 4), ["en"], _centres())
    with pytest.raises(ValueError):
        ex.learn_many(["a"], ["x"], np.eye(1, 4), ["en"], np.eye(2, 4))
