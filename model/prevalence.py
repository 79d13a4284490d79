"""Running topic prevalence: how much of the stream each topic holds, overall and per language."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["TopicPrevalence"]


class TopicPrevalence:
    """Exponentially weighted mean of the documents' topic mixtures.

    Parameters
    ----------
    num_topics
        K, the length of every mixture.
    momentum
        Weight kept per document: a batch of n documents keeps ``momentum ** n`` of the old value.

    Attributes
    ----------
    overall
        (K,) running mean over all documents (uniform before the first).
    by_lang
        ``{lang: (K,)}`` the same per language, from each language's first document on.

    Examples
    --------
    >>> p = TopicPrevalence(2, momentum=0.5)
    >>> p.observe(np.array([[1.0, 0.0]]), ["en"])
    >>> p.overall.round(2).tolist(), p.by_lang["en"].round(2).tolist()
    ([0.75, 0.25], [0.75, 0.25])
    """

    def __init__(self, num_topics: int, momentum: float = 0.99) -> None:
        self.num_topics = num_topics
        self.momentum = momentum
        self.overall = np.full(num_topics, 1.0 / num_topics)
        self.by_lang: dict[str, np.ndarray] = {}

    def observe(self, theta: np.ndarray, langs: Sequence[str] | None = None) -> None:
        """Fold a batch's (n, K) topic mixtures in, overall and (given ``langs``) per language."""
        if not len(theta):
            return
        self.overall = self._fold(self.overall, theta)
        if langs is None:
            return
        langs_arr = np.asarray(langs)
        uniform = np.full(self.num_topics, 1.0 / self.num_topics)
        for lang in np.unique(langs_arr).tolist():
            self.by_lang[lang] = self._fold(self.by_lang.get(lang, uniform), theta[langs_arr == lang])

    def _fold(self, prev: np.ndarray, rows: np.ndarray) -> np.ndarray:
        m = self.momentum ** len(rows)
        return m * prev + (1 - m) * rows.mean(axis=0)

    def state_dict(self) -> dict[str, Any]:
        return {"prevalence": self.overall.copy(),
                "prevalence_by_lang": {k: v.copy() for k, v in self.by_lang.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.overall = np.asarray(state["prevalence"], dtype=np.float64)
        self.by_lang = {k: np.asarray(v, dtype=np.float64) for k, v in state.get("prevalence_by_lang", {}).items()}
