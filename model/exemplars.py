"""Representative documents of each topic: a small reservoir of the documents nearest its centre.

A person reads a topic faster from three of its documents than from fifteen words. The model keeps
no texts (the replay buffer holds bags of words), so this reservoir keeps, per language and topic,
the ``per_topic`` documents seen so far whose embeddings are closest (cosine) to the topic's cluster
centre, as ``(id, first characters of the text)``. Centres move, so every update re-scores the kept
documents against the current centres together with the new ones: a document whose topic drifted
away loses its place, and a re-seeded topic fills with documents of its new centre.

Memory is ``languages x K x per_topic`` embeddings and text prefixes, whatever the stream length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from xtream.model.vectors import unit_rows

__all__ = ["TopicExemplars"]


class TopicExemplars:
    """Per language and topic, the ``per_topic`` documents nearest the topic's centre.

    Parameters
    ----------
    num_topics
        K, the number of centres.
    per_topic
        Documents kept per topic and language.
    prefix_chars
        Characters of each text kept.

    Examples
    --------
    >>> ex = TopicExemplars(num_topics=2, per_topic=1)
    >>> centres = np.array([[1.0, 0.0], [0.0, 1.0]])
    >>> ex.learn_many(["a", "b", "c"], ["alpha", "beta", "gamma"], np.array([[1.0, 0.1], [0.9, 0.5], [0.1, 1.0]]),
    ...               ["en"] * 3, centres)
    >>> ex.documents("en", 0), ex.documents("en", 1)
    ([('a', 'alpha')], [('c', 'gamma')])
    """

    def __init__(self, num_topics: int, per_topic: int = 3, prefix_chars: int = 200) -> None:
        if num_topics < 1 or per_topic < 1 or prefix_chars < 1:
            raise ValueError("num_topics, per_topic and prefix_chars must be >= 1")
        self.num_topics = num_topics
        self.per_topic = per_topic
        self.prefix_chars = prefix_chars
        #: per language: ids, text prefixes, unit embeddings (n, d) and topic of each kept document
        self._kept: dict[str, tuple[list[str], list[str], np.ndarray, np.ndarray]] = {}

    def learn_many(self, ids: Sequence[str], texts: Sequence[str], embeddings: np.ndarray,
                   langs: Sequence[str], centres: np.ndarray) -> None:
        """Offer a batch of documents; every language's reservoir is re-scored against ``centres``."""
        if not (len(ids) == len(texts) == len(embeddings) == len(langs)):
            raise ValueError("ids, texts, embeddings and langs must have the same length")
        centres = unit_rows(np.asarray(centres, dtype=np.float32))
        if centres.shape[0] != self.num_topics:
            raise ValueError(f"expected {self.num_topics} centres, got {centres.shape[0]}")
        langs_arr = np.asarray(langs)
        emb = unit_rows(np.asarray(embeddings, dtype=np.float32))
        for lang in sorted(set(langs_arr.tolist()) | set(self._kept)):
            rows = np.flatnonzero(langs_arr == lang)
            empty: tuple[list[str], list[str], np.ndarray, np.ndarray] = (
                [], [], np.zeros((0, emb.shape[1]), np.float32), np.zeros(0, np.int64))
            kept_ids, kept_texts, kept_emb, _ = self._kept.get(lang, empty)
            all_ids = kept_ids + [str(ids[i]) for i in rows.tolist()]
            all_texts = kept_texts + [str(texts[i])[:self.prefix_chars] for i in rows.tolist()]
            all_emb = np.concatenate([kept_emb, emb[rows]]) if len(rows) else kept_emb
            # the latest copy of a document offered twice wins
            _, last = np.unique(np.asarray(all_ids[::-1], dtype=object), return_index=True)
            unique = np.sort(len(all_ids) - 1 - last)
            sims = all_emb[unique] @ centres.T
            topic = sims.argmax(axis=1)
            score = sims[np.arange(len(unique)), topic]
            order = np.lexsort((-score, topic))
            start = np.searchsorted(topic[order], topic[order], side="left")
            keep = unique[order[np.arange(len(order)) - start < self.per_topic]]
            self._kept[lang] = ([all_ids[i] for i in keep], [all_texts[i] for i in keep], all_emb[keep],
                                topic[np.searchsorted(unique, keep)] if len(keep) else np.zeros(0, np.int64))

    def documents(self, lang: str, topic: int) -> list[tuple[str, str]]:
        """``(id, text prefix)`` of the kept documents of one topic, nearest the centre first."""
        if lang not in self._kept:
            return []
        ids, texts, _, topics = self._kept[lang]
        return [(ids[i], texts[i]) for i in np.flatnonzero(topics == topic)]

    @property
    def languages(self) -> list[str]:
        return sorted(self._kept)

    def state_dict(self) -> dict[str, Any]:
        return {"num_topics": self.num_topics, "per_topic": self.per_topic, "prefix_chars": self.prefix_chars,
                "kept": {lang: {"ids": list(i), "texts": list(t), "emb": e.copy(), "topic": k.copy()}
                         for lang, (i, t, e, k) in self._kept.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.num_topics, self.per_topic = int(state["num_topics"]), int(state["per_topic"])
        self.prefix_chars = int(state["prefix_chars"])
        self._kept = {lang: (list(p["ids"]), list(p["texts"]), np.asarray(p["emb"], dtype=np.float32),
                             np.asarray(p["topic"], dtype=np.int64)) for lang, p in state["kept"].items()}
