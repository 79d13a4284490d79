"""The topic models a user gets for free from the embeddings xtream already computes.

Three baselines share xtream's embeddings, splits and classifier, so that a topic model has to
beat them to earn its cost:

``raw_embeddings``  theta = the sentence embedding itself (512-d): the ceiling of what any
                    document representation derived from these embeddings can keep.
``kmeans_soft``     theta = cosine similarity to each of K joint k-means centres (K-d): the
                    "no topic model" floor.
``kmeans_ctfidf``   the same clusters as topics, their words by per-language class-based TF-IDF
                    (BERTopic's c-TF-IDF): the topic model one builds from k-means and a BoW.

Every function takes arrays and returns arrays; the benchmark scores them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import scipy.sparse as sp

__all__ = ["cluster_centres", "ctfidf", "soft_memberships"]


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def cluster_centres(embeddings: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray],
                    n_clusters: int) -> np.ndarray:
    """Unit-norm mean of the normalised embeddings of each cluster, over all languages: (K, d).

    A cluster without documents gets a zero row (its similarity to every document is 0).
    """
    x = np.concatenate([_unit(embeddings[lang]) for lang in embeddings])
    y = np.concatenate([np.asarray(labels[lang], dtype=np.int64) for lang in embeddings])
    if len(x) != len(y):
        raise ValueError(f"{len(x)} embeddings but {len(y)} labels")
    if y.size and (y.min() < 0 or y.max() >= n_clusters):
        raise ValueError(f"labels must lie in [0, {n_clusters})")
    sums = np.zeros((n_clusters, x.shape[1]), np.float64)
    np.add.at(sums, y, x)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def soft_memberships(embeddings: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Cosine similarity of each document to each centre: (n, K)."""
    return _unit(embeddings) @ np.asarray(centres, dtype=np.float32).T


def ctfidf(bow: sp.spmatrix | sp.sparray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """Class-based TF-IDF of one language's BoW grouped by cluster: (K, V).

    ``W[c, w] = tf[c, w] * log(1 + A / f[w])`` with ``tf`` the L1-normalised word counts of class
    ``c``, ``A`` the mean word count per class and ``f[w]`` the count of ``w`` over all classes
    (the weighting of BERTopic's ``ClassTfidfTransformer``). A word absent from the language
    scores 0 everywhere.
    """
    bow = sp.csr_matrix(bow, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if bow.shape[0] != len(labels):
        raise ValueError(f"{bow.shape[0]} documents but {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= n_clusters):
        raise ValueError(f"labels must lie in [0, {n_clusters})")
    member = sp.csr_matrix((np.ones(len(labels)), (labels, np.arange(len(labels)))),
                           shape=(n_clusters, len(labels)))
    counts = np.asarray((member @ bow).todense())                       # (K, V)
    per_word = counts.sum(axis=0)
    avg_words = counts.sum() / n_clusters
    idf = np.log1p(avg_words / np.where(per_word > 0, per_word, np.inf))
    tf = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1e-12)
    return tf * idf
