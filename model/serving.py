"""The serving copy of XTRA: a frozen network that inference and topic words read while the
trainer updates the live one, and the re-seeded topics it has not learned yet.

The online model (:mod:`xtream.model.online`) publishes a copy after each training slice and after
every change of the network's shape; readers never wait for a gradient step.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from xtream.model.readout import blend_theta, cluster_memberships
from xtream.model.training import infer_theta
from xtream.model.vocabulary import Vocabulary
from xtream.model.xtra import XTRA

__all__ = ["ServingNetwork", "serving_copy"]

#: Share of a re-seeded slot's documents that XTRA's theta must put in the slot (a running mean)
#: before theta, not the cluster, gives those documents their topic.
FRESH_AGREEMENT = 0.8


def serving_copy(xtra: XTRA) -> XTRA:
    """A frozen copy of the live network; the fixed word-embedding buffers are shared, not copied."""
    shared = {id(xtra.word_embeddings(lang)): xtra.word_embeddings(lang) for lang in xtra.cfg.vocab_sizes}
    serving = copy.deepcopy(xtra, memo=shared)   # cfg included: a later new language stays out
    serving.eval().requires_grad_(False)
    return serving


class ServingNetwork:
    """The published network (``network``, None until the warm-up is trained) and theta from it.

    Attributes
    ----------
    fresh
        ``{slot: share}``: re-seeded topic slots XTRA has not learned yet, with the running share of
        their documents its theta already puts there; their documents get the cluster as topic.
    """

    def __init__(self) -> None:
        self.network: XTRA | None = None
        self.fresh: dict[int, float] = {}

    @property
    def languages(self) -> list[str]:
        return [] if self.network is None else sorted(self.network.cfg.vocab_sizes)

    def theta(self, tokens: Sequence[list[str]], embeddings: np.ndarray, langs: Sequence[str], clusters: np.ndarray,
              num_topics: int, vocabs: Mapping[str, Vocabulary], centers: np.ndarray | None,
              cluster_weight: float, cluster_temperature: float) -> np.ndarray:
        """(n, K) topic mixtures: the cluster one-hot, replaced for documents with words in a served
        language by XTRA's theta mixed with the softmax cluster memberships at ``cluster_weight``
        and ``cluster_temperature`` (a cluster of -1 is no topic)."""
        theta = np.zeros((len(tokens), num_topics), np.float32)
        known = clusters >= 0
        theta[np.flatnonzero(known), clusters[known]] = 1.0
        if self.network is None:
            return theta
        langs_arr = np.asarray(langs)
        for lang in set(langs_arr.tolist()) & set(self.network.cfg.vocab_sizes):
            rows = np.flatnonzero(langs_arr == lang)
            bow = vocabs[lang].transform([tokens[i] for i in rows.tolist()])
            has_words = np.asarray(bow.sum(axis=1)).ravel() > 0
            if has_words.any():
                rows = rows[has_words]
                xtra_theta = infer_theta(self.network, bow[has_words], lang, embeddings[rows])
                theta[rows] = _blend(xtra_theta, embeddings[rows], centers, cluster_weight, cluster_temperature)
        self._serve_fresh_topics(clusters, theta)
        return theta

    def _serve_fresh_topics(self, clusters: np.ndarray, theta: np.ndarray) -> None:
        """A re-seeded slot is a new topic XTRA has not learned yet (its encoder still sends those
        documents to the topics they resembled): until theta puts ``FRESH_AGREEMENT`` of the slot's
        documents there, they get the cluster as their topic, as every document does during the warm-up."""
        for k in list(self.fresh):
            rows = np.flatnonzero(clusters == k)
            if not len(rows):
                continue
            agree = float((theta[rows].argmax(axis=1) == k).mean())
            share = self.fresh[k] = self.fresh[k] + (1 - 0.99 ** len(rows)) * (agree - self.fresh[k])
            if share >= FRESH_AGREEMENT:
                del self.fresh[k]
                continue
            theta[rows] = 0.0
            theta[rows, k] = 1.0

    def topic_distribution(self, lang: str) -> np.ndarray:
        """(K, V_lang) topic-word distributions of the published network."""
        if self.network is None:
            raise ValueError("no network is published yet")
        with torch.no_grad():
            return self.network.topic_word(lang).numpy()


def _blend(theta: np.ndarray, embeddings: np.ndarray, centers: np.ndarray | None, weight: float,
           temperature: float) -> np.ndarray:
    """XTRA's theta mixed with the softmax cluster memberships.

    Topic k starts from cluster k, so the memberships are the embedding's own view of the same
    K topics; the mixture keeps what the embedding knows about a document that its bag of words
    alone does not say.
    """
    if weight <= 0 or centers is None:
        return theta
    member = cluster_memberships(embeddings, centers, temperature)
    return blend_theta(theta, member.astype(theta.dtype), weight)
