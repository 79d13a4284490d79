"""A bounded replay buffer of processed documents for XTRA's periodic gradient steps.

Per language, half the slots hold the most recent documents (a ring) and half a uniform reservoir
sample of everything older (Vitter's algorithm R, vectorised per batch), so training sees both what
is happening now and what the stream used to be about. Sampling draws the same number of documents
from each language, so a chatty language cannot drown the cross-lingual alignment signal.

Each entry keeps its BoW (sparse row), sentence embedding and cluster id; when a vocabulary changes,
:meth:`remap_vocabulary` rewrites the stored BoW columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["ReplayBuffer"]


class _Slots:
    """Fixed-capacity storage of one language, all dense arrays so gathers are vectorised.

    A BoW row is kept as up to ``max_terms`` (word index, count) pairs padded with -1; a longer
    document keeps its most frequent words, which is what dominates its reconstruction loss anyway.
    """

    def __init__(self, capacity: int, dim: int, max_terms: int) -> None:
        self.emb = np.zeros((capacity, dim), dtype=np.float32)
        self.cluster = np.zeros(capacity, dtype=np.int64)
        self.terms = np.full((capacity, max_terms), -1, dtype=np.int64)
        self.counts = np.zeros((capacity, max_terms), dtype=np.float32)
        self.size = 0

    def put(self, slots: np.ndarray, bow: sp.csr_matrix, emb: np.ndarray, cluster: np.ndarray) -> None:
        self.emb[slots] = emb
        self.cluster[slots] = cluster
        terms, counts = _pad_rows(bow, self.terms.shape[1])
        self.terms[slots] = terms
        self.counts[slots] = counts

    def gather(self, idx: np.ndarray, width: int) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
        return _unpad_rows(self.terms[idx], self.counts[idx], width), self.emb[idx], self.cluster[idx]


def _pad_rows(bow: sp.csr_matrix, max_terms: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR rows -> (n, max_terms) index and count arrays, keeping each row's largest counts."""
    n = bow.shape[0]
    lengths = np.diff(bow.indptr)
    row_of = np.repeat(np.arange(n), lengths)
    # Sort each row's entries by descending count, then rank within the row.
    order = np.lexsort((-bow.data, row_of))
    rank = np.arange(len(order)) - np.repeat(bow.indptr[:-1], lengths)
    keep = rank < max_terms
    terms = np.full((n, max_terms), -1, dtype=np.int64)
    counts = np.zeros((n, max_terms), dtype=np.float32)
    terms[row_of[order][keep], rank[keep]] = bow.indices[order][keep]
    counts[row_of[order][keep], rank[keep]] = bow.data[order][keep]
    return terms, counts


def _unpad_rows(terms: np.ndarray, counts: np.ndarray, width: int) -> sp.csr_matrix:
    mask = terms >= 0
    indptr = np.concatenate([[0], np.cumsum(mask.sum(1))])
    return sp.csr_matrix((counts[mask], terms[mask], indptr), shape=(len(terms), width))


class ReplayBuffer:
    """Balanced (per language) and mixed (recent ring + old reservoir) memory of documents.

    Parameters
    ----------
    capacity_per_language
        Slots per language; half recent, half reservoir.
    dim
        Embedding dimension.
    max_terms
        Distinct words kept per document.
    seed
        Seeds reservoir replacement and sampling.
    """

    def __init__(self, capacity_per_language: int = 4096, dim: int = 512, max_terms: int = 256, seed: int = 0) -> None:
        if capacity_per_language < 2:
            raise ValueError("capacity_per_language must be >= 2")
        self.capacity_per_language = capacity_per_language
        self.dim = dim
        self.max_terms = max_terms
        self.seed = seed
        self._reset()

    def _reset(self) -> None:
        """Empty, with the RNG at its seed."""
        self._rng = np.random.default_rng(self.seed)
        self._recent: dict[str, _Slots] = {}
        self._old: dict[str, _Slots] = {}
        self._recent_next: dict[str, int] = {}
        self._seen: dict[str, int] = {}      # documents ever offered to the reservoir, per language
        self._vocab_sizes: dict[str, int] = {}

    @property
    def _half(self) -> int:
        return self.capacity_per_language // 2

    def __len__(self) -> int:
        return sum(self.sizes().values())

    def sizes(self) -> dict[str, int]:
        return {lang: self._recent[lang].size + self._old[lang].size for lang in self._recent}

    @property
    def languages(self) -> list[str]:
        return sorted(self._recent)

    def _ensure(self, lang: str) -> None:
        if lang not in self._recent:
            self._recent[lang] = _Slots(self._half, self.dim, self.max_terms)
            self._old[lang] = _Slots(self.capacity_per_language - self._half, self.dim, self.max_terms)
            self._recent_next[lang] = 0
            self._seen[lang] = 0
            self._vocab_sizes[lang] = 0

    def add_many(self, lang: str, bow: sp.csr_matrix, embeddings: np.ndarray, clusters: np.ndarray) -> None:
        """Add one language's documents; documents pushed out of the recent ring go to the reservoir."""
        bow = sp.csr_matrix(bow, dtype=np.float32)
        n = bow.shape[0]
        if n == 0:
            return
        self._ensure(lang)
        self._vocab_sizes[lang] = max(self._vocab_sizes[lang], bow.shape[1])
        embeddings, clusters = np.asarray(embeddings), np.asarray(clusters)
        half = self._half
        if n > half:   # only the newest `half` can be recent; the older ones go to the reservoir now
            cut = n - half
            self._to_reservoir(lang, bow[:cut], embeddings[:cut], clusters[:cut])
            bow, embeddings, clusters, n = bow[cut:], embeddings[cut:], clusters[cut:], half
        recent = self._recent[lang]
        slots = (self._recent_next[lang] + np.arange(n)) % half
        occupied = slots[slots < recent.size]
        if len(occupied):
            self._to_reservoir(lang, *recent.gather(occupied, self._vocab_sizes[lang]))
        recent.put(slots, bow, embeddings, clusters)
        recent.size = min(half, recent.size + n)
        self._recent_next[lang] = int((self._recent_next[lang] + n) % half)

    def _to_reservoir(self, lang: str, bow: sp.csr_matrix, emb: np.ndarray, clusters: np.ndarray) -> None:
        old = self._old[lang]
        cap = len(old.cluster)
        n = bow.shape[0]
        free = min(cap - old.size, n)
        if free > 0:
            old.put(np.arange(old.size, old.size + free), bow[:free], emb[:free], clusters[:free])
            old.size += free
        rest = n - free
        if rest > 0:
            # Algorithm R: the i-th item ever offered replaces a random slot with probability cap / i.
            i = self._seen[lang] + free + np.arange(1, rest + 1)
            j = (self._rng.random(rest) * i).astype(np.int64)
            take = np.flatnonzero(j < cap)
            if len(take):   # later duplicates of a slot win, as in the sequential algorithm
                old.put(j[take], bow[free:][take], emb[free:][take], clusters[free:][take])
        self._seen[lang] += n

    def _gather(self, lang: str, pick: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
        recent, old = self._recent[lang], self._old[lang]
        width = self._vocab_sizes[lang]
        a = recent.gather(pick[pick < recent.size], width)
        b = old.gather(pick[pick >= recent.size] - recent.size, width)
        return sp.vstack([a[0], b[0]]).tocsr(), np.concatenate([a[1], b[1]]), np.concatenate([a[2], b[2]])

    def sample(self, batch_size: int,
               languages: list[str] | None = None) -> dict[str, tuple[sp.csr_matrix, np.ndarray, np.ndarray]]:
        """``batch_size`` documents per language (fewer if it holds fewer): ``{lang: (bow, emb, cluster)}``."""
        out = {}
        for lang in languages or self.languages:
            total = self._recent[lang].size + self._old[lang].size
            if total:
                out[lang] = self._gather(lang, self._rng.choice(total, size=min(batch_size, total), replace=False))
        return out

    def all(self, lang: str) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
        """Everything held for ``lang`` (used to initialise XTRA after warm-up)."""
        return self._gather(lang, np.arange(self._recent[lang].size + self._old[lang].size))

    def remap_vocabulary(self, lang: str, old_to_new: np.ndarray, new_size: int) -> None:
        """Rewrite stored BoW columns after a vocabulary change (retired words are dropped)."""
        if lang not in self._recent:
            return
        mapping = np.append(np.asarray(old_to_new, dtype=np.int64), -1)   # index -1 (padding) stays -1
        for slots in (self._recent[lang], self._old[lang]):
            slots.terms = mapping[slots.terms]
            slots.counts[slots.terms < 0] = 0.0
        self._vocab_sizes[lang] = new_size

    def remap_clusters(self, mapping: np.ndarray) -> None:
        for slots in list(self._recent.values()) + list(self._old.values()):
            slots.cluster[: slots.size] = mapping[slots.cluster[: slots.size]]

    # -- persistence ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        languages: dict[str, Any] = {}
        state = {"capacity_per_language": self.capacity_per_language, "dim": self.dim, "max_terms": self.max_terms,
                 "seed": self.seed, "rng": self._rng.bit_generator.state, "languages": languages}
        for lang in self.languages:
            entry: dict[str, Any] = {"next": self._recent_next[lang], "seen": self._seen[lang],
                                     "vocab_size": self._vocab_sizes[lang]}
            for name, slots in (("recent", self._recent[lang]), ("old", self._old[lang])):
                n = slots.size
                entry[name] = {"terms": slots.terms[:n].copy(), "counts": slots.counts[:n].copy(),
                               "emb": slots.emb[:n].copy(), "cluster": slots.cluster[:n].copy()}
            languages[lang] = entry
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["capacity_per_language"]) < 2:
            raise ValueError("capacity_per_language must be >= 2")
        self.capacity_per_language, self.dim = int(state["capacity_per_language"]), int(state["dim"])
        self.max_terms, self.seed = int(state["max_terms"]), int(state["seed"])
        self._reset()
        self._rng.bit_generator.state = state["rng"]
        for lang, entry in state["languages"].items():
            self._ensure(lang)
            for name, slots in (("recent", self._recent[lang]), ("old", self._old[lang])):
                p = entry[name]
                n = len(p["cluster"])
                slots.terms[:n], slots.counts[:n] = np.asarray(p["terms"]), np.asarray(p["counts"])
                slots.emb[:n], slots.cluster[:n] = np.asarray(p["emb"]), np.asarray(p["cluster"])
                slots.size = n
            self._recent_next[lang] = int(entry["next"])
            self._seen[lang] = int(entry["seen"])
            self._vocab_sizes[lang] = int(entry["vocab_size"])
