"""Reading a topic model out for people and classifiers: theta blended with the clusters, topic
words by relevance, short labels.

XTRA's topics start from the k-means clusters (topic k is cluster k), so a document's cosine
similarity to the centres is a second, embedding-side view of its topic mixture.
:func:`blend_theta` mixes the two; :func:`relevance` re-ranks a topic's words between its own
probability and its lift over the corpus (Sievert & Shirley 2014), and :func:`topic_labels` names
each topic by its most distinctive words. All functions take and return arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["bag_of_words", "blend_theta", "cluster_memberships", "cluster_words", "ranked_words", "relevance",
           "topic_labels"]


def cluster_memberships(embeddings: np.ndarray, centres: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(cos(x, centre_k) / temperature)`` over the K centres: (n, K) rows summing to 1."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    x = np.asarray(embeddings, dtype=np.float32)
    c = np.asarray(centres, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    logits = (x @ c.T) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def blend_theta(theta: np.ndarray, memberships: np.ndarray, weight: float) -> np.ndarray:
    """``(1 - weight) * theta + weight * memberships``: still a distribution over the K topics.

    >>> blend_theta(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]), 0.25).tolist()
    [[0.75, 0.25]]
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    theta, memberships = np.asarray(theta), np.asarray(memberships)
    if theta.shape != memberships.shape:
        raise ValueError(f"theta {theta.shape} and memberships {memberships.shape} differ in shape")
    if weight == 0.0:
        return theta
    return ((1.0 - weight) * theta + weight * memberships).astype(theta.dtype, copy=False)


def relevance(topic_word: np.ndarray, weight: float, word_prob: np.ndarray | None = None) -> np.ndarray:
    """``weight * log p(w|k) + (1 - weight) * log(p(w|k) / p(w))`` for every topic and word (K, V).

    ``weight = 1`` ranks words by probability alone; lower weights favour words that are
    distinctive of the topic. ``word_prob`` is the corpus probability of each word; by default the
    topics' mean distribution.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    p = np.asarray(topic_word, dtype=np.float64)
    p = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-300)
    q = p.mean(axis=0) if word_prob is None else np.asarray(word_prob, dtype=np.float64)
    if q.shape != (p.shape[1],):
        raise ValueError(f"word_prob must have {p.shape[1]} entries, got {q.shape}")
    log_p = np.log(np.maximum(p, 1e-300))
    return weight * log_p + (1.0 - weight) * (log_p - np.log(np.maximum(q, 1e-300)))


def topic_labels(topic_word: np.ndarray, vocab: Sequence[str], n_words: int = 3, weight: float = 0.2,
                 candidates: int = 30) -> list[str]:
    """A short label per topic: its ``n_words`` most relevant words among its ``candidates`` most
    probable ones, joined by spaces (CJK words by a middle dot).

    Taking the label from the probable words keeps rare words that happen to be unique to a topic
    out of it; ranking them by :func:`relevance` keeps words that every topic shares out.
    """
    p = np.asarray(topic_word, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(vocab):
        raise ValueError(f"topic_word must be K x {len(vocab)}, got {p.shape}")
    if p.shape[1] == 0:
        return [""] * p.shape[0]
    top = np.argsort(-p, axis=1, kind="stable")[:, :min(candidates, p.shape[1])]
    score = np.take_along_axis(relevance(p, weight), top, axis=1)
    order = np.take_along_axis(top, np.argsort(-score, axis=1, kind="stable"), axis=1)[:, :n_words]
    labels = []
    for row in order:
        words = [vocab[i] for i in row]
        labels.append(("·" if all(_is_cjk(w) for w in words) else " ").join(words))
    return labels


def _is_cjk(word: str) -> bool:
    return any("\u3040" <= ch <= "\u30ff" or "\u3400" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af"
               for ch in word)


def cluster_words(bow: Any, clusters: np.ndarray, num_topics: int) -> np.ndarray:
    """(K, V) idf-weighted word distributions of each cluster's documents (uniform for an empty one)."""
    x = sp.csr_matrix(bow, dtype=np.float64)
    n = x.shape[0]
    onehot = sp.csr_matrix((np.ones(n), (np.asarray(clusters), np.arange(n))), shape=(num_topics, n))
    sums = np.asarray((onehot @ x).todense())
    df = np.asarray((x > 0).sum(axis=0)).ravel()
    dist = sums * (np.log((1.0 + n) / (1.0 + df)) + 1.0) + 1e-9
    return dist / dist.sum(axis=1, keepdims=True)


def bag_of_words(tokens: Sequence[list[str]]) -> tuple[list[str], sp.csr_matrix]:
    """``(words, (n, V) counts)`` over the documents' own words, sorted (no vocabulary needed)."""
    words = sorted({w for doc in tokens for w in doc})
    index = {w: i for i, w in enumerate(words)}
    rows = np.repeat(np.arange(len(tokens)), [len(doc) for doc in tokens])
    cols = np.fromiter((index[w] for doc in tokens for w in doc), dtype=np.int64, count=len(rows))
    return words, sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(tokens), len(words)))


def ranked_words(dist: np.ndarray, words: Sequence[str], top_n: int,
              score: np.ndarray | None = None) -> tuple[list[list[str]], np.ndarray]:
    """Each row's ``top_n`` words by ``score`` (default: ``dist`` itself; ties keep vocabulary
    order) and their ``dist`` values, (K, top_n)."""
    idx = np.argsort(-(dist if score is None else score), axis=1, kind="stable")[:, :top_n]
    return [[words[i] for i in row] for row in idx], np.take_along_axis(dist, idx, axis=1)
