"""The online topic model: mini-batch k-means + growing vocabularies + replay buffer + XTRA steps.

This is the whole of the service's learning, with no I/O: the caller hands it tokenised documents
with their embeddings and languages, in batches, and decides when to train and when to snapshot.

Life cycle:

1. *Warm-up.* Documents are clustered and kept (tokens and all) until ``warmup_docs`` have arrived.
   Assignments then carry the cluster as the topic (model version 0).
2. *Initialisation.* Vocabularies are built from the warm-up documents and XTRA is initialised from
   the clusters (prior from cluster sizes, beta from cluster word distributions). The next
   :meth:`train` call runs ``warmup_steps`` steps on the buffer (on the trainer's thread, so the
   learner never stalls for them); until they are done, theta stays the cluster one-hot.
3. *Online.* Every batch updates k-means and vocab statistics and enters the buffer; the caller runs
   :meth:`train` in bounded slices; every ``vocab_refresh_every`` documents vocabularies may admit
   and retire words, and XTRA's per-word parameters and the buffer follow.

Cluster ids of training documents are recomputed from their embeddings at sampling time, so the
contrastive signal follows the centres as they move.

Threads: one thread may call :meth:`learn_many` / :meth:`predict_many` while another calls
:meth:`train`. A gradient step (tens of milliseconds) must not stall the learner, so the model
keeps two locks: a *data* lock over k-means, vocabularies and buffer (held by the learner per batch
and by the trainer only to draw a sample) and a *parameter* lock over the live network and its
optimizer (held by the trainer per step and by the learner only when the network's shape changes:
warm-up, a vocabulary refresh, a new language, a re-seeded topic). Inference and topic words read a
*serving* copy of the network that the trainer publishes after each :meth:`train` call, so they
never wait for a step. Lock order is always data, then parameters.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from xtream.errors import NUMERICAL_ERRORS, BatchRefused, ModelError, map_numerical_errors
from xtream.model.clustering import MiniBatchKMeans
from xtream.model.exemplars import TopicExemplars
from xtream.model.network_surgery import (
    WordEmbeddingQueue,
    admit_new_languages,
    initialise,
    refresh_vocabularies,
    restart_topics,
)
from xtream.model.online_config import OnlineConfig
from xtream.model.online_state import dump_state, load_state
from xtream.model.online_training import TrainedSlice, run_slice
from xtream.model.prevalence import TopicPrevalence
from xtream.model.readout import bag_of_words, cluster_words, ranked_words
from xtream.model.replay_buffer import ReplayBuffer
from xtream.model.serving import ServingNetwork, serving_copy
from xtream.model.training import XTRATrainer
from xtream.model.vocabulary import Vocabulary
from xtream.model.xtra import XTRA

__all__ = ["MaintenanceFailed", "OnlineConfig", "OnlineTopicModel", "TrainedSlice"]

logger = logging.getLogger(__name__)

WordEmbedder = Callable[[list[str]], np.ndarray]

class MaintenanceFailed(ModelError):
    """The batch was learned (counted, clustered, buffered), but the network work it made due
    (initialisation, a vocabulary refresh, a new language, a re-seeded topic) failed and is left for
    a later batch. Never learn that batch again: its documents are already counted."""


class OnlineTopicModel:
    """Streaming XTRA. ``learn_many`` / ``predict_many`` on tokenised, embedded batches."""

    def __init__(self, cfg: OnlineConfig, embedding_dim: int, embed_words: WordEmbedder | None = None) -> None:
        self.embedding_dim = embedding_dim
        self.embed_words = embed_words
        self._data_lock = threading.RLock()
        self._params_lock = threading.RLock()
        self._reset(cfg)

    def _reset(self, cfg: OnlineConfig) -> None:
        """Fresh learned state for ``cfg`` (construction, and before loading a state)."""
        self.cfg = cfg
        self.kmeans = MiniBatchKMeans(cfg.num_topics, decay=cfg.kmeans_decay, seed=cfg.seed,
                                      novelty_quantile=cfg.novelty_quantile, min_novel=cfg.min_novel,
                                      novelty_margin=cfg.novelty_margin)
        self.buffer = ReplayBuffer(cfg.buffer_per_language, self.embedding_dim, seed=cfg.seed)
        self.exemplars = TopicExemplars(cfg.num_topics, per_topic=cfg.exemplars_per_topic)
        self.vocabs: dict[str, Vocabulary] = {}
        self.xtra: XTRA | None = None         # the live network the trainer updates
        self._serving = ServingNetwork()
        self.trainer: XTRATrainer | None = None
        self._shape_generation = 0            # bumps whenever the network's per-word shapes change
        self._warmup_left = 0                 # warm-up steps still to run before the first publish
        self._words = None if self.embed_words is None else WordEmbeddingQueue(self.embed_words, self.embedding_dim)
        self.version = 0                 # bumps at every train slice that changed the model
        self.n_docs = 0                  # documents learned (the exactly-once count)
        self.docs_by_lang: dict[str, int] = {}
        self._prevalence = TopicPrevalence(cfg.num_topics, cfg.prevalence_momentum)
        #: tokens and embedding of each document whose language XTRA does not know yet
        self._pending: dict[str, list[tuple[list[str], np.ndarray]]] = {}
        self._since_refresh = 0
        self.last_losses: dict[str, float] = {}
        # torch draws (weight init, dropout, reparameterisation) come from this model's own stream
        self._torch_rng = torch.Generator().manual_seed(cfg.seed).get_state()

    @contextmanager
    def _own_torch_rng(self) -> Iterator[None]:
        """Run torch's global-RNG draws from ``self._torch_rng``; the caller's RNG is left as it was."""
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self._torch_rng)
            yield
            self._torch_rng = torch.get_rng_state()

    @property
    def is_initialised(self) -> bool:
        """XTRA exists and wants :meth:`train` calls (the warm-up steps may still be due)."""
        return self.xtra is not None

    @property
    def warmup_steps_left(self) -> int:
        """Warm-up steps still to run before the first network is published."""
        return self._warmup_left

    @property
    def is_warm(self) -> bool:
        """A trained network is published: theta, topic words and snapshots come from XTRA."""
        return self.serving is not None

    @property
    def serving(self) -> XTRA | None:
        """The last published copy of the network, which inference and topic words read."""
        return self._serving.network

    @property
    def has_clusters(self) -> bool:
        """The k-means centres exist (the first batch was clustered): topics have an identity."""
        return self.kmeans.is_initialised

    @property
    def cluster_centers(self) -> np.ndarray | None:
        """(K, d) k-means centres, None before the first batch."""
        return self.kmeans.centers

    @property
    def cluster_sizes(self) -> np.ndarray:
        """(K,) decayed document counts of the clusters."""
        return self.kmeans.counts

    @property
    def training_steps(self) -> int:
        """Gradient steps run so far (0 before XTRA exists)."""
        return 0 if self.trainer is None else self.trainer.steps

    @property
    def prevalence(self) -> np.ndarray:
        """(K,) running topic prevalence (:class:`~xtream.model.prevalence.TopicPrevalence`)."""
        return self._prevalence.overall

    @property
    def prevalence_by_lang(self) -> dict[str, np.ndarray]:
        """``{lang: (K,)}`` running topic prevalence per language."""
        return self._prevalence.by_lang

    def _vocab(self, lang: str) -> Vocabulary:
        if lang not in self.vocabs:
            self.vocabs[lang] = Vocabulary(max_size=self.cfg.vocab_max_size, min_df=self.cfg.vocab_min_df,
                                           max_df_ratio=self.cfg.vocab_max_df_ratio)
        return self.vocabs[lang]

    # -- learning ------------------------------------------------------------------------------
    def learn_many(self, tokens: Sequence[list[str]], embeddings: np.ndarray, langs: Sequence[str]) -> None:
        """Absorb a batch: k-means, vocabulary statistics, buffer; initialises XTRA when warm-up ends.

        All or nothing for the batch: a ``ValueError`` means nothing was learned (the input was
        refused before any state changed); :class:`MaintenanceFailed` means all of it was.
        """
        if len(tokens) == 0:
            return
        embeddings = np.asarray(embeddings)
        if embeddings.shape != (len(tokens), self.embedding_dim) or len(langs) != len(tokens):
            raise BatchRefused(f"a batch of {len(tokens)} documents needs {len(tokens)} languages and a "
                             f"({len(tokens)}, {self.embedding_dim}) embedding matrix, got {len(langs)} and "
                             f"{embeddings.shape}")
        if not np.isfinite(embeddings).all():
            raise BatchRefused("embeddings hold NaN or infinite values")
        with self._data_lock, map_numerical_errors("learning the batch failed"):
            self._learn_many(tokens, embeddings, langs)

    def remember_documents(self, documents: Sequence[tuple[str, str]], embeddings: np.ndarray,
                           langs: Sequence[str]) -> None:
        """Offer a learned batch's ``(id, text)`` pairs (a prefix of the text is enough) as the topics'
        representative documents (:attr:`exemplars`); pairs without text are left out."""
        if len(documents) != len(embeddings) or len(documents) != len(langs):
            raise BatchRefused(f"got {len(documents)} (id, text) pairs for {len(embeddings)} embeddings "
                             f"and {len(langs)} languages")
        rows = [i for i, (_, text) in enumerate(documents) if text]
        with self._data_lock, map_numerical_errors("remembering the batch's documents failed"):
            centers = self.kmeans.centers
            if rows and centers is not None:
                self.exemplars.learn_many([documents[i][0] for i in rows], [documents[i][1] for i in rows],
                                          np.asarray(embeddings)[rows], [langs[i] for i in rows], centers)

    def _learn_many(self, tokens: Sequence[list[str]], embeddings: np.ndarray, langs: Sequence[str]) -> None:
        langs_arr = np.asarray(langs)
        restarted = False
        failed: Exception | None = None
        self.kmeans.learn_many(embeddings)
        clusters = (self.kmeans.predict_many(embeddings) if self.kmeans.is_initialised
                    else np.zeros(len(tokens), np.int64))
        reseeded = sorted(self.kmeans.reseeded)
        self.kmeans.reseeded.clear()
        if self.xtra is not None:
            self._serving.fresh.update((k, 0.0) for k in reseeded)
        for lang in np.unique(langs_arr).tolist():
            rows = np.flatnonzero(langs_arr == lang)
            lang_tokens = [tokens[i] for i in rows.tolist()]
            self._vocab(lang).learn_many(lang_tokens)
            self.docs_by_lang[lang] = self.docs_by_lang.get(lang, 0) + len(rows)
            if self.xtra is not None and lang in self.xtra.cfg.vocab_sizes:
                bow = self.vocabs[lang].transform(lang_tokens)
                if reseeded:
                    try:
                        with self._params_lock:
                            restarted |= restart_topics(self.xtra.betas[lang], reseeded, bow, clusters[rows],
                                                        self.cfg.num_topics)
                    except NUMERICAL_ERRORS as exc:
                        failed = failed or exc
                self.buffer.add_many(lang, bow, embeddings[rows], clusters[rows])
            else:
                self._pending.setdefault(lang, []).extend(zip(lang_tokens, embeddings[rows]))
        self.n_docs += len(tokens)
        self._since_refresh += len(tokens)
        if self.xtra is None:
            due = self.n_docs >= self.cfg.warmup_docs and self.kmeans.is_initialised
        else:
            due = (self._since_refresh >= self.cfg.vocab_refresh_every
                   or any(len(held) >= self.cfg.min_docs_new_language for held in self._pending.values()))
        try:
            if failed is not None:
                raise failed
            if not due:   # the common case: no need to wait for a gradient step in progress
                if restarted:
                    with self._params_lock:
                        self._publish_serving()
                return
            with self._params_lock, self._own_torch_rng():
                if self.xtra is None:
                    initialise(self)
                else:
                    admit_new_languages(self)
                    if self._since_refresh >= self.cfg.vocab_refresh_every:
                        refresh_vocabularies(self)
                if self.xtra is not None:
                    self._publish_serving()
        except NUMERICAL_ERRORS as exc:
            raise MaintenanceFailed(f"the batch was learned; {exc!r} is retried with a later batch") from exc

    def train(self, steps: int, stop: Callable[[], bool] | None = None) -> TrainedSlice:
        """``steps`` gradient steps on buffer samples, then publish the network; returns the mean loss
        parts of the last slice that stepped and, as ``.steps``, the steps this call ran.

        The first calls also run what is left of the warm-up (``max(steps, warm-up left)`` steps);
        the network is published once the warm-up is complete. ``stop`` is asked before every step
        and ends the slice early when true (a time budget, a shutdown). Safe to call from a thread
        other than the learner's: see the module docstring.
        """
        if self.xtra is None:
            return TrainedSlice()
        with map_numerical_errors("a training slice failed"):
            if max(steps, self._warmup_left) <= 0:
                return TrainedSlice()
            done = run_slice(self, max(steps, self._warmup_left), stop)
        return TrainedSlice(self.last_losses, done)

    def _publish_serving(self) -> None:
        """Replace the serving copy (caller holds both locks); not before the warm-up is done."""
        if self.xtra is not None and not self._warmup_left:
            self._serving.network = serving_copy(self.xtra)

    def bump_version(self) -> int:
        """A new version for a state that changed without a training slice (clusters, vocabulary
        statistics, the warm-up's cluster words): whoever publishes it names it by this version."""
        with self._data_lock:
            self.version += 1
            return self.version

    # -- inference -----------------------------------------------------------------------------
    def predict_many(self, tokens: Sequence[list[str]], embeddings: np.ndarray,
                     langs: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(clusters (n,), theta (n, K))``. Before XTRA is warm, theta is the cluster one-hot."""
        with self._data_lock, map_numerical_errors("assigning the batch failed"):
            known = self.kmeans.is_initialised
            clusters = self.kmeans.predict_many(embeddings) if known else np.full(len(tokens), -1)
            return clusters, self._serving.theta(tokens, embeddings, langs, clusters, self.cfg.num_topics,
                                                 self.vocabs, self.kmeans.centers, self.cfg.theta_cluster_weight,
                                                 self.cfg.theta_cluster_temperature)

    def observe_topics(self, theta: np.ndarray, langs: Sequence[str] | None = None) -> None:
        """Fold a batch's topic mixtures into the running prevalence, overall and per language."""
        self._prevalence.observe(theta, langs)

    def topic_words(self, lang: str, top_n: int = 15) -> tuple[list[list[str]], np.ndarray]:
        """Top words per topic for ``lang`` and their probabilities (K, top_n)."""
        words, dist = self.topic_word_distribution(lang)
        return ranked_words(dist, words, top_n)

    def topic_word_distribution(self, lang: str) -> tuple[list[str], np.ndarray]:
        """``(words, (K, V) distributions)``: XTRA's once it is warm, the clusters' words before.

        Topics exist from the first clustered batch: until a trained network is published, topic
        k's words are cluster k's (idf-weighted word frequencies of its documents), over the
        vocabulary once XTRA is initialised and over the held documents' own words before that.
        """
        if self.serving is not None:
            return list(self.vocabs[lang].words), self.topic_distribution(lang)
        with self._data_lock:
            if self.xtra is not None and lang in self.xtra.cfg.vocab_sizes:
                bow, emb, _ = self.buffer.all(lang)
                return list(self.vocabs[lang].words), cluster_words(bow, self.kmeans.predict_many(emb),
                                                                    self.cfg.num_topics)
            held = self._pending.get(lang, [])
            if len(held) < 2 or not self.kmeans.is_initialised:
                raise ValueError(f"no topic words for {lang!r} yet")
            tokens = [t for t, _ in held]
            clusters = self.kmeans.predict_many(np.stack([e for _, e in held]))
        words, bow = bag_of_words(tokens)
        return words, cluster_words(bow, clusters, self.cfg.num_topics)

    def topic_distribution(self, lang: str) -> np.ndarray:
        """(K, V_lang) topic-word distributions of the published network."""
        return self._serving.topic_distribution(lang)

    def sizes(self) -> dict[str, dict[str, int]]:
        """``{"buffer": {lang: documents}, "vocabulary": {lang: words}}``, read consistently (for gauges)."""
        with self._data_lock:
            return {"buffer": self.buffer.sizes(), "vocabulary": {lang: len(v) for lang, v in self.vocabs.items()}}

    @property
    def languages(self) -> list[str]:
        """Languages the topics have words in (sorted): the published network's, or before it is
        published, those with clustered documents (see :meth:`topic_word_distribution`)."""
        if self.serving is not None:
            return self._serving.languages
        if not self.kmeans.is_initialised:
            return []
        with self._data_lock:
            if self.xtra is not None:
                return sorted(self.xtra.cfg.vocab_sizes)
            return sorted(lang for lang, held in self._pending.items() if len(held) >= 2)

    # -- persistence ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        with self._data_lock, self._params_lock:
            return dump_state(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with self._data_lock, self._params_lock:
            self.embedding_dim = int(state["embedding_dim"])
            self._reset(OnlineConfig(**state["cfg"]))
            load_state(self, state)
