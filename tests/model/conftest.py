"""Fixtures shared by the model specifications: a tiny planted-topic multilingual stream.

Torch runs single-threaded in these tests: the models under test are tiny, and on a small shared
host intra-op threads made each of their matrix products hundreds of times slower, not faster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

LANGUAGES = ("en", "de", "ja")


@dataclass
class Stream:
    """Documents in arrival order: tokens, unit embeddings, language and planted topic of each."""

    tokens: list[list[str]]
    embeddings: np.ndarray
    langs: list[str]
    topics: np.ndarray

    def __len__(self) -> int:
        return len(self.tokens)

    def batches(self, size: int):
        for s in range(0, len(self), size):
            yield self.tokens[s:s + size], self.embeddings[s:s + size], self.langs[s:s + size]


def make_stream(n: int, seed: int = 0, langs: tuple[str, ...] = LANGUAGES, n_topics: int = 4, dim: int = 16,
                words_per_topic: int = 8, doc_len: int = 10, noise: float = 0.3) -> Stream:
    """``n`` documents: embedding = planted topic direction + noise; tokens from the topic's word list
    in the document's language (``"{lang}_t{topic}_w{j}"``). Topic directions are fixed across seeds."""
    rng = np.random.default_rng(seed)
    directions = np.linalg.qr(np.random.default_rng(1234).normal(size=(dim, n_topics)))[0].T
    topics = rng.integers(n_topics, size=n)
    lang = np.asarray(langs)[rng.integers(len(langs), size=n)]
    emb = directions[topics] + noise * rng.normal(size=(n, dim)) / np.sqrt(dim)
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    words = rng.integers(words_per_topic, size=(n, doc_len))
    tokens = [[f"{lg}_t{t}_w{w}" for w in row] for lg, t, row in zip(lang.tolist(), topics.tolist(), words.tolist())]
    return Stream(tokens, emb, lang.tolist(), topics)


@pytest.fixture(autouse=True)
def _single_threaded_torch():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def planted_stream():
    """The :func:`make_stream` factory."""
    return make_stream
