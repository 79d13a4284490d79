"""Snapshots carry readable topics: words by relevance, labels and representative documents."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from xtream.consumers.snapshots import build_snapshot
from xtream.model.exemplars import TopicExemplars
from xtream.stream.schemas import TopicSnapshot


def _model() -> SimpleNamespace:
    vocab = ["the", "goal", "match", "vote", "party"]
    # "the" is the most probable word of both topics
    dist = np.array([[0.5, 0.3, 0.15, 0.03, 0.02], [0.5, 0.02, 0.03, 0.3, 0.15]])
    exemplars = TopicExemplars(num_topics=2, per_topic=3)
    centres = np.eye(2, 3)
    exemplars.learn_many(["s1", "p1", "s2"], ["Cup final tonight", "Vote count starts", "Late goal wins it"],
                         np.array([[1.0, 0.1, 0], [0.1, 1.0, 0], [0.9, 0.2, 0]]), ["en"] * 3, centres)
    return SimpleNamespace(
        is_warm=True, languages=["en"], cfg=SimpleNamespace(num_topics=2), version=3, n_docs=3,
        topic_distribution=lambda lang: dist, vocabs={"en": SimpleNamespace(words=vocab)},
        topic_word_distribution=lambda lang: (vocab, dist),
        cluster_centers=centres, cluster_sizes=np.array([2.0, 1.0]), has_clusters=True,
        prevalence=np.array([0.6, 0.4]), prevalence_by_lang={"en": np.array([0.6, 0.4])}, exemplars=exemplars)


def test_snapshot_topics_have_labels_documents_and_words_by_relevance():
    snap, _ = build_snapshot(_model(), None, {}, top_n=2)
    sport, politics = snap.topics
    # 2-3 most distinctive words: the word both topics share comes last, if at all
    assert sport.labels["en"].split()[:2] == ["goal", "match"] and politics.labels["en"].split()[:2] == ["vote", "party"]
    assert [(d.id, d.text) for d in sport.documents["en"]] == [("s1", "Cup final tonight"), ("s2", "Late goal wins it")]
    assert [d.id for d in politics.documents["en"]] == ["p1"]
    distinct, _ = build_snapshot(_model(), None, {}, top_n=2, word_relevance=0.2)
    assert distinct.topics[0].words["en"].words == ["goal", "match"]   # the shared word is out
    assert distinct.topics[0].words["en"].weights == [0.3, 0.15]       # weights stay probabilities
    by_probability, _ = build_snapshot(_model(), None, {}, top_n=2, word_relevance=1.0)
    assert by_probability.topics[0].words["en"].words == ["the", "goal"]
    assert TopicSnapshot.model_validate_json(snap.to_json_bytes()) == snap
