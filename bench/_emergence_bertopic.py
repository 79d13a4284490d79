"""BERTopic online on the ``bench.emergence`` stream, for comparison.

As BERTopic's documentation sets up online topic modelling that can find new topics: ``partial_fit``
on batches, ``IncrementalPCA`` to 5 dimensions in place of UMAP, a river ``DBSTREAM`` clustering
model wrapped to have ``partial_fit`` (it creates clusters as the stream brings them), the
``OnlineCountVectorizer`` and a BM25 c-TF-IDF. The documents' embeddings are the same cached USE
vectors the service gets. A document's topic is the one ``partial_fit`` gave it in its batch.
"""

from __future__ import annotations

import time

import numpy as np

__all__ = ["run_bertopic"]


class _River:
    """A river clustering model with the ``partial_fit``/``labels_`` BERTopic asks for (the wrapper
    of BERTopic's documentation)."""

    def __init__(self, model) -> None:
        self.model = model

    def partial_fit(self, embeddings: np.ndarray) -> _River:
        from river import stream

        for x, _ in stream.iter_array(embeddings):
            self.model.learn_one(x)
        self.labels_ = [self.model.predict_one(x) for x, _ in stream.iter_array(embeddings)]
        return self


def run_bertopic(texts: list[str], vectors: np.ndarray, batch: int = 1000,
                 clustering_threshold: float = 0.2) -> tuple[np.ndarray, float]:
    """(topic per document, seconds) of BERTopic online over the stream in batches of ``batch``.

    ``clustering_threshold`` is DBSTREAM's micro-cluster radius, in the units of the 5-dimensional
    projections; its own default (1.0) is wider than most distances between them (the radii tried
    and the projections' distances are in ``bench/README.md``)."""
    from bertopic import BERTopic
    from bertopic.vectorizers import ClassTfidfTransformer, OnlineCountVectorizer
    from river import cluster
    from sklearn.decomposition import IncrementalPCA

    model = BERTopic(umap_model=IncrementalPCA(n_components=5),
                     hdbscan_model=_River(cluster.DBSTREAM(clustering_threshold=clustering_threshold)),
                     vectorizer_model=OnlineCountVectorizer(stop_words="english", decay=0.01),
                     ctfidf_model=ClassTfidfTransformer(reduce_frequent_words=True, bm25_weighting=True))
    topics = np.full(len(texts), -1, dtype=np.int64)
    started = time.perf_counter()
    for i in range(0, len(texts), batch):
        model.partial_fit(texts[i:i + batch], vectors[i:i + batch])
        topics[i:i + batch] = model.topics_
    return topics, time.perf_counter() - started
