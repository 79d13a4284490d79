"""Turning the online model's state into a :class:`TopicSnapshot`, with drift against a recent past.

Drift of topic k in language l is the Jensen-Shannon divergence (base 2, so in [0, 1]) between its
word distribution now and in the snapshot in force ``window`` seconds of stream time earlier
(:class:`DriftBaseline`), over the words that lead the topic in either (:func:`top_word_divergence`):
a topic is what its leading words say, and mass shuffled among thousands of tail words of a
quiet topic is not a change anyone reading the topic would see. Measuring against consecutive
snapshots would make the figure depend on the snapshot cadence: the same change spread over ten
snapshots looks ten times smaller, and no alert threshold would fit both cadences. Vocabularies
change between snapshots, so the baseline distribution is re-indexed onto the current words first
(words new since then get 0).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from datetime import datetime, timezone

import numpy as np

from xtream.model.online import OnlineTopicModel
from xtream.model.readout import ranked_words, relevance, topic_labels
from xtream.stream.schemas import SnapshotTopic, TopicDocument, TopicSnapshot, TopicWords

__all__ = ["DriftBaseline", "build_snapshot", "js_divergence", "top_word_divergence"]

#: Leading words per topic (in either distribution) that drift is measured over.
DRIFT_WORDS = 30

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


def top_word_divergence(p: np.ndarray, q: np.ndarray, top_n: int = DRIFT_WORDS) -> np.ndarray:
    """Row-wise JS divergence of ``p`` and ``q`` restricted to each row's ``top_n`` leading words in
    either (renormalised): 0 when the leading words keep their weights, 1 when they are all new."""
    if p.shape[1] <= top_n:
        return js_divergence(p, q)
    rows = np.arange(p.shape[0])[:, None]
    mask = np.zeros(p.shape, dtype=bool)
    mask[rows, np.argpartition(-p, top_n, axis=1)[:, :top_n]] = True
    mask[rows, np.argpartition(-q, top_n, axis=1)[:, :top_n]] = True
    return js_divergence(np.where(mask, p, 0.0), np.where(mask, q, 0.0))


class DriftBaseline:
    """Word distributions of past snapshots, to diff each new snapshot against the one in force
    ``window_seconds`` earlier (the oldest kept one while the stream is younger than the window).

    Kept entries are spaced at least ``window_seconds / resolution`` apart, so memory stays at about
    ``resolution + 1`` snapshots' worth of distributions whatever the snapshot cadence.
    """

    def __init__(self, window_seconds: float, resolution: int = 8) -> None:
        if window_seconds < 0 or resolution < 1:
            raise ValueError("window_seconds must be >= 0 and resolution >= 1")
        self.window = float(window_seconds)
        self.spacing = self.window / resolution
        self._entries: deque[tuple[float, WordDists]] = deque()

    def __len__(self) -> int:
        return len(self._entries)

    def reference(self, at: float) -> WordDists | None:
        """The distributions in force ``window`` seconds before ``at``."""
        chosen = None
        for t, dists in self._entries:
            if t > at - self.window and chosen is not None:
                break
            chosen = dists
        return chosen

    def add(self, at: float, dists: WordDists) -> None:
        if self._entries and at < self._entries[-1][0]:
            at = self._entries[-1][0]        # stream time never runs backwards here
        if len(self._entries) >= 2 and self._entries[-1][0] - self._entries[-2][0] < self.spacing:
            self._entries.pop()              # too close to its predecessor: the newer one replaces it
        self._entries.append((at, dists))
        # Drop what no future reference can need: entries older than the newest one past the window.
        while len(self._entries) >= 2 and self._entries[1][0] <= at - self.window:
            self._entries.popleft()

    def state_dict(self) -> dict:
        return {"window": self.window, "entries": [
            (t, {lang: {"words": w, "dist": d} for lang, (w, d) in dists.items()}) for t, dists in self._entries]}

    def load_state_dict(self, state: dict) -> None:
        self._entries = deque(
            (float(t), {lang: (p["words"], p["dist"]) for lang, p in dists.items()}) for t, dists in state["entries"])


def _align(prev_words: list[str], prev: np.ndarray, words: list[str]) -> np.ndarray:
    index = {w: i for i, w in enumerate(prev_words)}
    idx = np.fromiter((index.get(w, -1) for w in words), dtype=np.int64, count=len(words))
    out = np.zeros((prev.shape[0], len(words)), dtype=np.float64)
    hit = idx >= 0
    out[:, hit] = prev[:, idx[hit]]
    return out


def build_snapshot(model: OnlineTopicModel, previous: WordDists | None, offsets: Mapping[str, int],
                   top_n: int = 15, now: datetime | None = None, stream_time: datetime | None = None,
                   topic_ids: list[int] | None = None, alive: np.ndarray | None = None,
                   new_slots: frozenset[int] = frozenset(),
                   word_relevance: float = 0.6) -> tuple[TopicSnapshot, WordDists]:
    """The snapshot of a model with topics and the word distributions to diff the next one against.

    Before XTRA is warm the topics' words are the clusters' (:meth:`OnlineTopicModel.topic_word_distribution`).
    ``new_slots`` hold a new topic (a new stable id): they have no past to drift from (drift 0).
    Each topic's ``top_n`` words are ranked by :func:`model.readout.relevance` with weight
    ``word_relevance`` (1 = by probability alone), their weights are their probabilities.
    """
    if not model.has_clusters:
        raise ValueError("no snapshot before the first topics are clustered")
    langs = model.languages
    k = model.cfg.num_topics
    dists: WordDists = {}
    words_by_lang, drift_by_lang, labels_by_lang = {}, {}, {}
    for lang in langs:
        vocab, dist = model.topic_word_distribution(lang)
        dist = dist.astype(np.float64)
        dists[lang] = (vocab, dist)
        words_by_lang[lang] = ranked_words(dist, vocab, top_n, score=relevance(dist, word_relevance))
        labels_by_lang[lang] = topic_labels(dist, vocab)
        if previous and lang in previous:
            drift_by_lang[lang] = top_word_divergence(dist, _align(*previous[lang], vocab))
    centers = model.cluster_centers
    topics = [
        SnapshotTopic(
            topic_id=t if topic_ids is None else topic_ids[t],
            slot=t,
            alive=True if alive is None else bool(alive[t]),
            words={lang: TopicWords(words=words_by_lang[lang][0][t],
                                    weights=[round(float(w), 6) for w in words_by_lang[lang][1][t]]) for lang in langs},
            prevalence=float(model.prevalence[t]),
            prevalence_by_lang={lang: float(p[t]) for lang, p in model.prevalence_by_lang.items()},
            size=float(model.cluster_sizes[t]),
            embedding=None if centers is None else [round(float(x), 5) for x in centers[t]],
            drift={lang: 0.0 if t in new_slots else float(d[t]) for lang, d in drift_by_lang.items()},
            labels={lang: labels_by_lang[lang][t] for lang in langs},
            documents={lang: [TopicDocument(id=i, text=text) for i, text in model.exemplars.documents(lang, t)]
                       for lang in model.exemplars.languages},
        )
        for t in range(k)
    ]
    snap = TopicSnapshot(model_version=model.version, created_at=now or datetime.now(timezone.utc),
                         stream_time=stream_time,
                         documents_seen=model.n_docs, offsets=dict(offsets), languages=langs, topics=topics)
    return snap, dists
