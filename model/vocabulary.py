"""A per-language vocabulary that can grow while the stream runs.

A streaming topic model meets words it has never seen, so the vocabulary admits words once
they are frequent enough and retires words that stopped qualifying, but only when it needs the
space: every change moves the model's per-word parameters, so indices are kept stable as long as
possible and each :meth:`Vocabulary.refresh` reports a :class:`VocabularyChange` that says
exactly how old indices map to new ones.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from types import MappingProxyType
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["Vocabulary", "VocabularyChange"]

logger = logging.getLogger(__name__)

_STATE_KEYS = ("max_size", "min_df", "max_df_ratio", "prune_below", "frozen", "words", "terms",
               "df", "n_docs")


@dataclass(frozen=True, eq=False)
class VocabularyChange:
    """What one :meth:`Vocabulary.refresh` did, for remapping per-word parameters.

    Attributes
    ----------
    added
        Words appended at the end of the vocabulary, in index order.
    removed
        Words retired from the vocabulary.
    old_to_new
        ``int64`` array of the old vocabulary's length: the new index of each old word, or -1
        for a removed word.
    """

    added: list[str]
    removed: list[str]
    old_to_new: np.ndarray

    @property
    def changed(self) -> bool:
        """Whether any index moved or any word came or went."""
        return bool(self.added or self.removed)

    @property
    def new_size(self) -> int:
        return len(self.old_to_new) - len(self.removed) + len(self.added)

    @property
    def new_to_old(self) -> np.ndarray:
        """Old index of each new word, -1 for added words; ``params[..., new_to_old]`` remaps."""
        out = np.full(self.new_size, -1, dtype=np.int64)
        kept = self.old_to_new >= 0
        out[self.old_to_new[kept]] = np.flatnonzero(kept)
        return out


class Vocabulary:
    """The words of one language, each with a stable index.

    Document frequencies are tracked for every word seen (a word-to-slot dict over a ``float64``
    array, so that :meth:`decay` and :meth:`refresh` are vectorised). A word qualifies when its
    document frequency is at least ``min_df`` and at most ``max_df_ratio`` of the documents.

    Parameters
    ----------
    max_size
        Most words the vocabulary holds; ignored for a fixed vocabulary.
    min_df
        Smallest (possibly decayed) document frequency of an admitted word.
    max_df_ratio
        Largest share of documents a word may occur in; commoner words act as stop words.
    words
        A fixed vocabulary (e.g. a research one): the vocabulary is then ``frozen`` and
        :meth:`refresh` never changes it.
    prune_below
        :meth:`decay` may forget out-of-vocabulary words whose document frequency falls below
        this, which bounds memory on an endless stream.

    Examples
    --------
    >>> vocab = Vocabulary(min_df=2, max_df_ratio=0.9)
    >>> vocab.learn_many([["cat", "dog"], ["cat", "fish"], ["cat", "dog"]])
    >>> vocab.refresh().added
    ['dog']
    >>> vocab.transform([["dog", "dog", "cow"]]).toarray()
    array([[2.]], dtype=float32)
    """

    def __init__(
        self,
        max_size: int = 20000,
        min_df: float = 2,
        max_df_ratio: float = 0.5,
        words: Iterable[str] | None = None,
        *,
        prune_below: float = 0.1,
    ) -> None:
        if not isinstance(max_size, int) or max_size < 1:
            raise ValueError(f"max_size must be a positive int, got {max_size!r}")
        if not min_df > 0:
            raise ValueError(f"min_df must be positive, got {min_df!r}")
        if not 0 < max_df_ratio <= 1:
            raise ValueError(f"max_df_ratio must be in (0, 1], got {max_df_ratio!r}")
        if not prune_below >= 0:
            raise ValueError(f"prune_below must be non-negative, got {prune_below!r}")
        self.max_size = max_size
        self.min_df = min_df
        self.max_df_ratio = max_df_ratio
        self.prune_below = prune_below
        self.frozen = words is not None
        self._words = _unique_list(words if words is not None else [], "words")
        if self.frozen and not self._words:
            raise ValueError("a fixed vocabulary needs at least one word")
        self._set_terms(list(self._words), np.zeros(len(self._words)))
        self._index = {w: i for i, w in enumerate(self._words)}
        self._n_docs = 0.0

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **kwargs: Any) -> Vocabulary:
        """Load a fixed vocabulary stored as UTF-8, one word per line (blank lines skipped)."""
        with open(path, encoding="utf-8") as f:
            words = [line.strip() for line in f if line.strip()]
        return cls(words=words, **kwargs)

    @property
    def words(self) -> list[str]:
        """The words in index order (a copy)."""
        return list(self._words)

    @property
    def index(self) -> Mapping[str, int]:
        """Read-only view of word -> index."""
        return MappingProxyType(self._index)

    @property
    def n_docs(self) -> float:
        """Documents seen, decayed like the document frequencies."""
        return self._n_docs

    def document_frequency(self, word: str) -> float:
        slot = self._slot.get(word)
        return 0.0 if slot is None else float(self._df[slot])

    def __len__(self) -> int:
        return len(self._words)

    def __contains__(self, word: object) -> bool:
        return word in self._index

    def learn_many(self, token_lists: Sequence[Sequence[str]]) -> None:
        """Count each word once per document; a fixed vocabulary counts only its own words."""
        token_lists = _check_token_lists(token_lists)
        # dict.fromkeys, not set: first-seen order makes slots (and df ties) reproducible.
        counts = Counter(chain.from_iterable(dict.fromkeys(tokens) for tokens in token_lists))
        if self.frozen:
            counts = Counter({w: c for w, c in counts.items() if w in self._slot})
        new = [w for w in counts if w not in self._slot]
        if new:  # new words get the next slots; existing slots never move here
            self._slot.update((w, len(self._terms) + i) for i, w in enumerate(new))
            self._terms.extend(new)
            self._df: np.ndarray = np.concatenate([self._df, np.zeros(len(new))])
        slots = np.fromiter((self._slot[w] for w in counts), dtype=np.int64, count=len(counts))
        self._df[slots] += np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        self._n_docs += len(token_lists)

    def decay(self, factor: float) -> None:
        """Multiply every document frequency and the document count by ``factor``.

        Decay lets the vocabulary follow a drifting stream; out-of-vocabulary words that fall
        below ``prune_below`` may be forgotten (in bulk, once they are a quarter of the table).
        """
        if not 0 < factor <= 1:
            raise ValueError(f"factor must be in (0, 1], got {factor!r}")
        self._df *= factor
        self._n_docs *= factor
        keep = self._df >= self.prune_below
        keep[self._vocab_slots()] = True
        n_drop = len(keep) - int(keep.sum())
        if n_drop and n_drop >= max(1024, len(keep) // 4):
            kept = np.flatnonzero(keep)
            self._set_terms([self._terms[i] for i in kept], self._df[kept])
            logger.debug("forgot %d rare out-of-vocabulary words", n_drop)

    def refresh(self) -> VocabularyChange:
        """Admit qualifying words and, only when space is needed, retire non-qualifying ones.

        Newcomers are taken by decreasing document frequency and appended; the retired are
        chosen among words that no longer qualify, too-common words first, then the rarest.
        Surviving words keep their relative order, compacted over the retired slots.
        """
        old_size = len(self._words)
        if self.frozen or self._n_docs <= 0:
            return VocabularyChange([], [], np.arange(old_size, dtype=np.int64))
        df = self._df
        too_common = df > self.max_df_ratio * self._n_docs
        qualifies = (df >= self.min_df) & ~too_common
        vocab_slots = self._vocab_slots()
        in_vocab = np.zeros(len(df), dtype=bool)
        in_vocab[vocab_slots] = True
        candidates = np.flatnonzero(qualifies & ~in_vocab)
        candidates = candidates[np.argsort(-df[candidates], kind="stable")]

        free = self.max_size - old_size
        retire = np.empty(0, dtype=np.int64)
        if len(candidates) > free:
            stale = np.flatnonzero(~qualifies[vocab_slots])  # vocabulary positions
            order = np.lexsort((df[vocab_slots[stale]], ~too_common[vocab_slots[stale]]))
            retire = stale[order[: len(candidates) - max(free, 0)]]
        added_slots = candidates[: max(free, 0) + len(retire)]

        keep = np.ones(old_size, dtype=bool)
        keep[retire] = False
        old_to_new = np.where(keep, np.cumsum(keep) - 1, -1).astype(np.int64)
        added = [self._terms[i] for i in added_slots]
        removed = [self._words[i] for i in np.sort(retire)]
        if added or removed:
            self._words = [w for w, k in zip(self._words, keep.tolist()) if k] + added
            self._index = {w: i for i, w in enumerate(self._words)}
            logger.debug("vocabulary refresh: +%d -%d -> %d words", len(added), len(removed),
                         len(self._words))
        return VocabularyChange(added, removed, old_to_new)

    def transform(self, token_lists: Sequence[Sequence[str]]) -> sp.csr_matrix:
        """Bag-of-words counts, ``float32`` of shape ``(len(token_lists), len(self))``.

        Out-of-vocabulary tokens are dropped. The matrix is built in one COO-to-CSR step.
        """
        token_lists = _check_token_lists(token_lists)
        lengths = np.fromiter(map(len, token_lists), dtype=np.int64, count=len(token_lists))
        flat = chain.from_iterable(token_lists)
        get = self._index.get
        cols = np.fromiter((get(t, -1) for t in flat), dtype=np.int64, count=int(lengths.sum()))
        rows = np.repeat(np.arange(len(token_lists), dtype=np.int64), lengths)
        hit = cols >= 0
        data = np.ones(int(hit.sum()), dtype=np.float32)
        shape = (len(token_lists), len(self._words))
        matrix = sp.csr_matrix((data, (rows[hit], cols[hit])), shape=shape, dtype=np.float32)
        matrix.sum_duplicates()
        return matrix

    def state_dict(self) -> dict[str, Any]:
        """Configuration and learned state as plain values and one ``float64`` array."""
        return {
            "max_size": self.max_size,
            "min_df": float(self.min_df),
            "max_df_ratio": float(self.max_df_ratio),
            "prune_below": float(self.prune_below),
            "frozen": self.frozen,
            "words": list(self._words),
            "terms": list(self._terms),
            "df": self._df.copy(),
            "n_docs": float(self._n_docs),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace configuration and state with ``state``; validated before anything changes."""
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"vocabulary state is missing {missing}")
        fresh = Vocabulary(
            max_size=int(state["max_size"]), min_df=float(state["min_df"]),
            max_df_ratio=float(state["max_df_ratio"]), prune_below=float(state["prune_below"]),
        )
        words = _unique_list(state["words"], "words")
        terms = _unique_list(state["terms"], "terms")
        df = np.asarray(state["df"], dtype=np.float64).copy()
        if df.shape != (len(terms),):
            raise ValueError(f"df has shape {df.shape}, expected ({len(terms)},)")
        if not set(words) <= set(terms):
            raise ValueError("every vocabulary word must have a document frequency")
        frozen = bool(state["frozen"])
        if not frozen and len(words) > fresh.max_size:
            raise ValueError(f"{len(words)} words exceed max_size={fresh.max_size}")
        fresh.frozen = frozen
        fresh._words = words
        fresh._index = {w: i for i, w in enumerate(words)}
        fresh._set_terms(terms, df)
        fresh._n_docs = float(state["n_docs"])
        self.__dict__.update(fresh.__dict__)

    def _set_terms(self, terms: list[str], df: np.ndarray) -> None:
        self._terms = terms
        self._slot = {w: i for i, w in enumerate(terms)}
        self._df = df

    def _vocab_slots(self) -> np.ndarray:
        slot = self._slot
        return np.fromiter((slot[w] for w in self._words), dtype=np.int64, count=len(self._words))


def _unique_list(words: Iterable[str], name: str) -> list[str]:
    out = list(words)
    if not all(isinstance(w, str) and w for w in out):
        raise ValueError(f"{name} must be non-empty strings")
    if len(set(out)) != len(out):
        dupes = sorted(w for w, c in Counter(out).items() if c > 1)[:5]
        raise ValueError(f"{name} contain duplicates, e.g. {dupes}")
    return out


def _check_token_lists(token_lists: Iterable[Sequence[str]]) -> list[Sequence[str]]:
    # A str (or a list of str) would be silently iterated character by character.
    if isinstance(token_lists, str):
        raise ValueError("expected a sequence of token lists, one list of str per document")
    out = list(token_lists)
    if any(isinstance(t, str) for t in out):
        raise ValueError("expected a sequence of token lists, one list of str per document")
    return out
