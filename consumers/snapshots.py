"""Turning the online model's state into a :class:`TopicSnapshot`, with drift against the last one.

Drift of topic k in language l is the Jensen-Shannon divergence (base 2, so in [0, 1]) between its
word distribution now and at the previous snapshot. Vocabularies change between snapshots, so the
previous distribution is re-indexed onto the current words first (words new since then get 0).
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np

from model.online import OnlineTopicModel
from stream.schemas import SnapshotTopic, TopicSnapshot, TopicWords

__all__ = ["build_snapshot", "js_divergence"]

WordDists = dict[str, tuple[list[str], np.ndarray]]


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise Jensen-Shannon divergence, base 2, of two (K, V) row-stochastic matrices."""
    p = p / np.maximum(p.sum(1, keepdims=True), 1e-12)
    q = q / np.maximum(q.sum(1, keepdims=True), 1e-12)
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_pm = np.where(p > 0, p * np.log2(p / m), 0.0).sum(1)
        kl_qm = np.where(q > 0, q * np.log2(q / m), 0.0).sum(1)
    return np.clip(0.5 * (kl_pm + kl_qm), 0.0, 1.0)


def _align(prev_words: list[str], prev: np.ndarray, words: list[str]) -> np.ndarray:
    index = {w: i for i, w in enumerate(prev_words)}
    idx = np.fromiter((index.get(w, -1) for w in words), dtype=np.int64, count=len(words))
    out = np.zeros((prev.shape[0], len(words)), dtype=np.float64)
    hit = idx >= 0
    out[:, hit] = prev[:, idx[hit]]
    return out


def build_snapshot(model: OnlineTopicModel, previous: WordDists | None, offsets: dict[str, int],
                   top_n: int = 15, now: datetime | None = None, stream_time: datetime | None = None,
                   topic_ids: list[int] | None = None, alive: np.ndarray | None = None) -> tuple[TopicSnapshot, WordDists]:
    """The snapshot of a warm model and the word distributions to diff the next one against."""
    if not model.is_warm:
        raise ValueError("no snapshot before the model is warm")
    langs = sorted(model.xtra.cfg.vocab_sizes)
    k = model.cfg.num_topics
    dists: WordDists = {}
    words_by_lang, drift_by_lang = {}, {}
    for lang in langs:
        dist = model.topic_distribution(lang).astype(np.float64)
        vocab = list(model.vocabs[lang].words)
        dists[lang] = (vocab, dist)
        idx = np.argsort(-dist, axis=1)[:, :top_n]
        words_by_lang[lang] = ([[vocab[i] for i in row] for row in idx], np.take_along_axis(dist, idx, 1))
        if previous and lang in previous:
            drift_by_lang[lang] = js_divergence(dist, _align(*previous[lang], vocab))
    centers = model.kmeans.centers
    topics = [
        SnapshotTopic(
            topic_id=t if topic_ids is None else topic_ids[t],
            slot=t,
            alive=True if alive is None else bool(alive[t]),
            words={lang: TopicWords(words=words_by_lang[lang][0][t],
                                    weights=[round(float(w), 6) for w in words_by_lang[lang][1][t]]) for lang in langs},
            prevalence=float(model.prevalence[t]),
            prevalence_by_lang={lang: float(p[t]) for lang, p in model.prevalence_by_lang.items()},
            size=float(model.kmeans.counts[t]),
            embedding=None if centers is None else [round(float(x), 5) for x in centers[t]],
            drift={lang: float(d[t]) for lang, d in drift_by_lang.items()},
        )
        for t in range(k)
    ]
    snap = TopicSnapshot(model_version=model.version, created_at=now or datetime.now(timezone.utc),
                         stream_time=stream_time,
                         documents_seen=model.n_docs, offsets=dict(offsets), languages=langs, topics=topics)
    return snap, dists
