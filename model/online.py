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

import copy
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from xtream.errors import BatchRefused, ModelError, NumericalError

from xtream.model.clustering import MiniBatchKMeans
from xtream.model.exemplars import TopicExemplars
from xtream.model.readout import blend_theta, cluster_memberships
from xtream.model.replay_buffer import ReplayBuffer
from xtream.model.training import LanguageCorpus, XTRATrainer, build_xtra, corpus_batch, infer_theta
from xtream.model.vocabulary import Vocabulary
from xtream.model.xtra import XTRA, XTRAConfig, init_beta_from_clusters

__all__ = ["MaintenanceFailed", "OnlineConfig", "OnlineTopicModel"]

logger = logging.getLogger(__name__)

WordEmbedder = Callable[[list[str]], np.ndarray]

#: What torch and numpy raise when a computation fails; mapped to :class:`NumericalError` at the
#: model's entry points (:func:`_numerical`).
_NUMERICAL = (RuntimeError, ValueError, FloatingPointError)


@contextmanager
def _numerical(what: str) -> Iterator[None]:
    """Re-raise a torch or numpy failure inside the block as :class:`NumericalError`; errors
    already in the tree pass through."""
    try:
        yield
    except ModelError:
        raise
    except _NUMERICAL as exc:
        raise NumericalError(f"{what}: {exc!r}") from exc


class MaintenanceFailed(ModelError):
    """The batch was learned (counted, clustered, buffered), but the network work it made due
    (initialisation, a vocabulary refresh, a new language, a re-seeded topic) failed and is left for
    a later batch. Never learn that batch again: its documents are already counted."""


@dataclass
class OnlineConfig:
    num_topics: int = 50
    warmup_docs: int = 2000
    warmup_steps: int = 200
    batch_size: int = 128
    buffer_per_language: int = 4096
    vocab_max_size: int = 5000
    vocab_min_df: float = 3
    vocab_max_df_ratio: float = 0.3
    vocab_refresh_every: int = 5000
    kmeans_decay: float = 1.0
    novelty_quantile: float | None = None
    min_novel: int = 8
    novelty_margin: float = 0.1
    prevalence_momentum: float = 0.99
    lr: float = 0.002
    lr_step: int = 5000
    lambda_cluster: float = 5.0
    lambda_beta: float = 7.0
    lambda_nce: float = 80.0
    min_docs_new_language: int = 32
    exemplars_per_topic: int = 3
    theta_cluster_weight: float = 0.5
    theta_cluster_temperature: float = 0.1
    seed: int = 0


def _cluster_words(bow, clusters: np.ndarray, num_topics: int) -> np.ndarray:
    """(K, V) idf-weighted word distributions of each cluster's documents (uniform for an empty one)."""
    x = sp.csr_matrix(bow, dtype=np.float64)
    n = x.shape[0]
    onehot = sp.csr_matrix((np.ones(n), (np.asarray(clusters), np.arange(n))), shape=(num_topics, n))
    sums = np.asarray((onehot @ x).todense())
    df = np.asarray((x > 0).sum(axis=0)).ravel()
    dist = sums * (np.log((1.0 + n) / (1.0 + df)) + 1.0) + 1e-9
    return dist / dist.sum(axis=1, keepdims=True)


class OnlineTopicModel:
    """Streaming XTRA. ``learn_many`` / ``predict_many`` on tokenised, embedded batches."""

    def __init__(self, cfg: OnlineConfig, embedding_dim: int, embed_words: WordEmbedder | None = None) -> None:
        self.cfg = cfg
        self.embedding_dim = embedding_dim
        self.embed_words = embed_words
        self.kmeans = MiniBatchKMeans(cfg.num_topics, decay=cfg.kmeans_decay, seed=cfg.seed,
                                      novelty_quantile=cfg.novelty_quantile, min_novel=cfg.min_novel,
                                      novelty_margin=cfg.novelty_margin)
        self.buffer = ReplayBuffer(cfg.buffer_per_language, embedding_dim, seed=cfg.seed)
        self.exemplars = TopicExemplars(cfg.num_topics, per_topic=cfg.exemplars_per_topic)
        self.vocabs: dict[str, Vocabulary] = {}
        self.xtra: XTRA | None = None         # the live network the trainer updates
        self.serving: XTRA | None = None      # its last published copy: inference and topic words
        self.trainer: XTRATrainer | None = None
        self._data_lock = threading.RLock()
        self._params_lock = threading.RLock()
        self._shape_generation = 0            # bumps whenever the network's per-word shapes change
        self._warmup_left = 0                 # warm-up steps still to run before the first publish
        self._words_to_embed: dict[str, set[str]] = {}   # vocabulary words whose embedding row is still zero
        self.version = 0                 # bumps at every train slice that changed the model
        self.n_docs = 0                  # documents learned (the exactly-once count)
        self.docs_by_lang: dict[str, int] = {}
        self.prevalence = np.full(cfg.num_topics, 1.0 / cfg.num_topics)
        self.prevalence_by_lang: dict[str, np.ndarray] = {}
        self._pending: dict[str, list[tuple[list[str], np.ndarray]]] = {}   # tokens+embedding before XTRA knows the lang
        self._since_refresh = 0
        #: Re-seeded topic slots that XTRA has not learned yet, with the share of their documents
        #: its theta already puts there (a running estimate): their documents get the cluster as topic.
        self._fresh: dict[int, float] = {}
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
        with self._data_lock, _numerical("learning the batch failed"):
            self._learn_many(tokens, embeddings, langs)

    def remember_documents(self, documents: Sequence[tuple[str, str]], embeddings: np.ndarray,
                           langs: Sequence[str]) -> None:
        """Offer a learned batch's ``(id, text)`` pairs (a prefix of the text is enough) as the topics'
        representative documents (:attr:`exemplars`); pairs without text are left out."""
        if len(documents) != len(embeddings) or len(documents) != len(langs):
            raise BatchRefused(f"got {len(documents)} (id, text) pairs for {len(embeddings)} embeddings "
                             f"and {len(langs)} languages")
        rows = [i for i, (_, text) in enumerate(documents) if text]
        with self._data_lock, _numerical("remembering the batch's documents failed"):
            if rows and self.kmeans.is_initialised:
                self.exemplars.learn_many([documents[i][0] for i in rows], [documents[i][1] for i in rows],
                                          np.asarray(embeddings)[rows], [langs[i] for i in rows], self.kmeans.centers)

    def _learn_many(self, tokens: Sequence[list[str]], embeddings: np.ndarray, langs: Sequence[str]) -> None:
        langs_arr = np.asarray(langs)
        restarted = False
        failed: Exception | None = None
        self.kmeans.learn_many(embeddings)
        clusters = self.kmeans.predict_many(embeddings) if self.kmeans.is_initialised else np.zeros(len(tokens), np.int64)
        reseeded = sorted(self.kmeans.reseeded)
        self.kmeans.reseeded.clear()
        if self.xtra is not None:
            self._fresh.update((k, 0.0) for k in reseeded)
        for lang in np.unique(langs_arr).tolist():
            rows = np.flatnonzero(langs_arr == lang)
            lang_tokens = [tokens[i] for i in rows]
            self._vocab(lang).learn_many(lang_tokens)
            self.docs_by_lang[lang] = self.docs_by_lang.get(lang, 0) + len(rows)
            if self.xtra is not None and lang in self.xtra.cfg.vocab_sizes:
                bow = self.vocabs[lang].transform(lang_tokens)
                if reseeded:
                    try:
                        with self._params_lock:
                            restarted |= self._restart_topics(lang, reseeded, bow, clusters[rows])
                    except _NUMERICAL as exc:
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
                    self._initialise()
                else:
                    self._admit_new_languages()
                    if self._since_refresh >= self.cfg.vocab_refresh_every:
                        self._refresh_vocabularies()
                if self.xtra is not None:
                    self._publish_serving()
        except _NUMERICAL as exc:
            raise MaintenanceFailed(f"the batch was learned; {exc!r} is retried with a later batch") from exc

    def _restart_topics(self, lang: str, slots: list[int], bow, clusters: np.ndarray) -> bool:
        """A re-seeded cluster is a new topic: restart its beta row from its documents' words.

        This is XTRA's own initialisation (cluster word distributions, idf-weighted, z-scored)
        applied to one topic, rescaled to the current spread of beta. Without it the topic would
        keep its old words until enough gradient steps had moved them.
        """
        present = [k for k in slots if (clusters == k).sum() >= 2]
        if not present:
            return False
        fresh = init_beta_from_clusters(bow, clusters, self.cfg.num_topics)
        with torch.no_grad():
            beta = self.xtra.betas[lang]
            columns = beta.mean(dim=0)   # keep each word's shared offset (invisible to the loss)
            std = (beta - columns).std(dim=1).mean().item()
            for k in present:
                beta[k] = torch.from_numpy(fresh[k] * std) + columns
        return True

    def _initialise(self) -> None:
        """End of warm-up: vocabularies, buffer and XTRA from the held documents (or, if that fails,
        no change but the vocabularies' refresh, so a later batch can try again)."""
        buffer_before = self.buffer.state_dict()
        try:
            self._initialise_from_pending()
        except BaseException:
            self.buffer.load_state_dict(buffer_before)
            self.xtra = self.trainer = None
            raise

    def _initialise_from_pending(self) -> None:
        corpora = {}
        for lang, held in self._pending.items():
            if len(held) < 2:
                continue
            self.vocabs[lang].refresh()
            if len(self.vocabs[lang]) == 0:   # too few documents for any word to qualify: wait
                continue
            toks = [t for t, _ in held]
            emb = np.stack([e for _, e in held])
            bow = self.vocabs[lang].transform(toks)
            clusters = self.kmeans.predict_many(emb)
            self.buffer.add_many(lang, bow, emb, clusters)
            corpora[lang] = LanguageCorpus(*self.buffer.all(lang))
        if not corpora:
            return
        corpora = {lang: LanguageCorpus(c.bow, c.embeddings, self.kmeans.predict_many(c.embeddings))
                   for lang, c in corpora.items()}
        self.xtra = build_xtra(corpora, num_topics=self.cfg.num_topics,
                               word_embeddings=self._word_embeddings(corpora),
                               lambda_cluster=self.cfg.lambda_cluster, lambda_beta=self.cfg.lambda_beta,
                               lambda_nce=self.cfg.lambda_nce)
        self.trainer = XTRATrainer(self.xtra, lr=self.cfg.lr, lr_step=self.cfg.lr_step,
                                   batch_size=self.cfg.batch_size, seed=self.cfg.seed)
        for lang in corpora:
            del self._pending[lang]
        self._since_refresh = 0
        self._shape_generation += 1
        self._warmup_left = self.cfg.warmup_steps
        logger.info("XTRA initialised after %d documents: languages=%s vocab=%s; %d warm-up steps due",
                    self.n_docs, sorted(corpora), {lang: len(self.vocabs[lang]) for lang in corpora},
                    self._warmup_left)

    def _word_embeddings(self, langs) -> dict[str, np.ndarray] | None:
        if self.embed_words is None:
            return None
        return {lang: self._unembedded(lang, self.vocabs[lang].words) for lang in langs}

    def _unembedded(self, lang: str, words: list[str]) -> np.ndarray:
        """Zero rows for ``words``, queued for :meth:`_embed_queued_words` (the trainer's thread).

        Embedding a fresh vocabulary (thousands of words) takes seconds; done here it would stall
        the learner. Only the beta alignment reads these rows, and every train call fills the
        queue before its first step.
        """
        self._words_to_embed.setdefault(lang, set()).update(words)
        return np.zeros((len(words), self.embedding_dim), np.float32)

    def _embed_queued_words(self) -> None:
        if self.embed_words is None:
            return
        with self._data_lock:
            todo = {lang: sorted(words) for lang, words in self._words_to_embed.items() if words}
        if not todo:
            return
        vectors = {lang: np.asarray(self.embed_words(words), dtype=np.float32).reshape(len(words), -1)
                   for lang, words in todo.items()}   # the slow part, outside both locks
        for lang, v in vectors.items():
            if v.shape[1] != self.embedding_dim:
                raise ValueError(f"embed_words gave {v.shape[1]}-d vectors for {lang!r}; "
                                 f"word embeddings must have the document embeddings' {self.embedding_dim} dimensions")
        with self._data_lock, self._params_lock:
            for lang, words in todo.items():
                index = self.vocabs[lang].index   # words may have been retired meanwhile
                found = [(index[w], i) for i, w in enumerate(words) if w in index]
                if found and lang in self.xtra.cfg.vocab_sizes:
                    rows, src = map(list, zip(*found))
                    self.xtra.word_embeddings(lang)[torch.as_tensor(rows)] = torch.from_numpy(vectors[lang][src])
                self._words_to_embed[lang].difference_update(words)

    def _admit_new_languages(self) -> None:
        for lang in [l for l, held in self._pending.items() if len(held) >= self.cfg.min_docs_new_language]:
            held = self._pending.pop(lang)
            vocab = self.vocabs[lang]
            vocab.refresh()
            if len(vocab) == 0:
                self._pending[lang] = held
                continue
            emb = np.stack([e for _, e in held])
            bow = vocab.transform([t for t, _ in held])
            clusters = self.kmeans.predict_many(emb)
            self.xtra.add_language(lang, len(vocab), beta=init_beta_from_clusters(bow, clusters, self.cfg.num_topics),
                                   word_embeddings=self._unembedded(lang, vocab.words) if self.embed_words else None)
            self.buffer.add_many(lang, bow, emb, clusters)
            self.trainer.reset_optimizer()
            self._shape_generation += 1
            logger.info("new language %s joined the model with %d words", lang, len(vocab))

    def refresh_vocabularies(self) -> dict[str, tuple[int, int]]:
        """Admit/retire words in every language XTRA knows; returns {lang: (added, removed)}."""
        with self._data_lock, self._params_lock:
            changes = self._refresh_vocabularies()
            if changes:
                self._publish_serving()
            return changes

    def _refresh_vocabularies(self) -> dict[str, tuple[int, int]]:
        changes = {}
        for lang in list(self.xtra.cfg.vocab_sizes):
            change = self.vocabs[lang].refresh()
            if not change.changed:
                continue
            words = self.vocabs[lang].words
            new_emb = None
            if self.embed_words is not None:
                new_emb = np.zeros((len(words), self.xtra.cfg.word_embedding_dim), np.float32)
                kept = change.new_to_old >= 0
                new_emb[kept] = self.xtra.word_embeddings(lang).numpy()[change.new_to_old[kept]]
                new_emb[~kept] = self._unembedded(lang, change.added)
            self.xtra.remap_vocabulary(lang, change.old_to_new, len(words), new_emb)
            self.buffer.remap_vocabulary(lang, change.old_to_new, len(words))
            changes[lang] = (len(change.added), len(change.removed))
        if changes:
            self.trainer.reset_optimizer()
            self._shape_generation += 1
            logger.info("vocabulary refresh: %s", changes)
        self._since_refresh = 0
        return changes

    def train(self, steps: int, stop: Callable[[], bool] | None = None) -> dict[str, float]:
        """``steps`` gradient steps on buffer samples, then publish the network; returns the mean loss parts.

        The first calls also run what is left of the warm-up (``max(steps, warm-up left)`` steps);
        the network is published once the warm-up is complete. ``stop`` is asked before every step
        and ends the slice early when true (a time budget, a shutdown). Safe to call from a thread
        other than the learner's: see the module docstring.
        """
        if self.xtra is None:
            return {}
        with _numerical("a training slice failed"):
            self._embed_queued_words()
            if max(steps, self._warmup_left) <= 0:
                return {}
            done, sums = self._steps(max(steps, self._warmup_left), stop=stop)
        with self._params_lock:
            generation = self._shape_generation
            serving = self._serving_copy() if done and not self._warmup_left else None
        with self._data_lock:
            self._finish_slice(done, sums, generation, serving)
        return self.last_losses

    def _steps(self, steps: int, stop: Callable[[], bool] | None = None) -> tuple[int, dict[str, float]]:
        sums: dict[str, float] = {}
        done = 0
        for _ in range(steps):
            if stop is not None and stop():
                break
            with self._data_lock:
                generation = self._shape_generation
                batch = self._sample_batch()
            if not batch:
                break
            with self._params_lock:
                if generation != self._shape_generation:
                    continue   # the vocabulary changed after the draw: its columns no longer match
                with self._own_torch_rng():
                    parts = self.trainer.step(batch)
                self._warmup_left = max(0, self._warmup_left - 1)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            done += 1
        return done, sums

    def _sample_batch(self) -> dict[str, dict[str, torch.Tensor]]:
        sample = self.buffer.sample(self.cfg.batch_size, languages=list(self.xtra.cfg.vocab_sizes))
        batch = {}
        for lang, (bow, emb, _) in sample.items():
            if bow.shape[0] < 2:
                continue
            corpus = LanguageCorpus(bow, emb, self.kmeans.predict_many(emb))
            batch[lang] = corpus_batch(corpus, np.arange(len(corpus)))
        return batch

    def _finish_slice(self, done: int, sums: dict[str, float], generation: int, serving: XTRA | None) -> None:
        """Publish a slice that stepped (a new version), once the warm-up is over."""
        if not done:
            return
        self.last_losses = {k: v / done for k, v in sums.items()}
        if self._warmup_left:
            return
        if serving is None or generation != self._shape_generation:
            with self._params_lock:   # re-shaped meanwhile: copy the network as it is now
                self._publish_serving()
        else:
            self.serving = serving
        self.version += 1

    def _serving_copy(self) -> XTRA:
        """A frozen copy of the live network; the fixed word-embedding buffers are shared, not copied."""
        shared = {id(self.xtra.word_embeddings(lang)): self.xtra.word_embeddings(lang)
                  for lang in self.xtra.cfg.vocab_sizes}
        serving = copy.deepcopy(self.xtra, memo=shared)   # cfg included: a later new language stays out
        serving.eval().requires_grad_(False)
        return serving

    def _publish_serving(self) -> None:
        """Replace the serving copy (caller holds both locks); not before the warm-up is done."""
        if self.xtra is not None and not self._warmup_left:
            self.serving = self._serving_copy()

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
        with self._data_lock, _numerical("assigning the batch failed"):
            return self._predict_many(tokens, embeddings, langs)

    def _predict_many(self, tokens: Sequence[list[str]], embeddings: np.ndarray,
                      langs: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        n, k = len(tokens), self.cfg.num_topics
        clusters = self.kmeans.predict_many(embeddings) if self.kmeans.is_initialised else np.full(n, -1)
        theta = np.zeros((n, k), np.float32)
        known = clusters >= 0
        theta[np.flatnonzero(known), clusters[known]] = 1.0
        if self.serving is not None:
            langs_arr = np.asarray(langs)
            for lang in set(langs_arr.tolist()) & set(self.serving.cfg.vocab_sizes):
                rows = np.flatnonzero(langs_arr == lang)
                bow = self.vocabs[lang].transform([tokens[i] for i in rows])
                has_words = np.asarray(bow.sum(axis=1)).ravel() > 0
                if has_words.any():
                    rows = rows[has_words]
                    theta[rows] = self._blend(infer_theta(self.serving, bow[has_words], lang), embeddings[rows])
            self._serve_fresh_topics(clusters, theta)
        return clusters, theta

    def _blend(self, theta: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        """XTRA's theta mixed with the softmax cluster memberships (``theta_cluster_weight``).

        Topic k starts from cluster k, so the memberships are the embedding's own view of the same
        K topics; the mixture keeps what the embedding knows about a document that its bag of words
        alone does not say.
        """
        weight = self.cfg.theta_cluster_weight
        if weight <= 0:
            return theta
        member = cluster_memberships(embeddings, self.kmeans.centers, self.cfg.theta_cluster_temperature)
        return blend_theta(theta, member.astype(theta.dtype), weight)

    def _serve_fresh_topics(self, clusters: np.ndarray, theta: np.ndarray) -> None:
        """A re-seeded slot is a new topic XTRA has not learned yet (its encoder still sends those
        documents to the topics they resembled): until theta puts at least half of the slot's
        documents there, they get the cluster as their topic, as every document does during the warm-up."""
        for k in list(self._fresh):
            rows = np.flatnonzero(clusters == k)
            if not len(rows):
                continue
            agree = float((theta[rows].argmax(axis=1) == k).mean())
            share = self._fresh[k] = self._fresh[k] + (1 - 0.99 ** len(rows)) * (agree - self._fresh[k])
            if share >= 0.5:
                del self._fresh[k]
                continue
            theta[rows] = 0.0
            theta[rows, k] = 1.0

    def observe_topics(self, theta: np.ndarray, langs: Sequence[str] | None = None) -> None:
        """Fold a batch's topic mixtures into the running prevalence, overall and per language."""
        if not len(theta):
            return
        m = self.cfg.prevalence_momentum ** len(theta)
        self.prevalence = m * self.prevalence + (1 - m) * theta.mean(axis=0)
        if langs is None:
            return
        langs_arr = np.asarray(langs)
        for lang in np.unique(langs_arr).tolist():
            rows = theta[langs_arr == lang]
            m = self.cfg.prevalence_momentum ** len(rows)
            prev = self.prevalence_by_lang.get(lang, np.full(theta.shape[1], 1.0 / theta.shape[1]))
            self.prevalence_by_lang[lang] = m * prev + (1 - m) * rows.mean(axis=0)

    def topic_words(self, lang: str, top_n: int = 15) -> tuple[list[list[str]], np.ndarray]:
        """Top words per topic for ``lang`` and their probabilities (K, top_n)."""
        words, dist = self.topic_word_distribution(lang)
        idx = np.argsort(-dist, axis=1)[:, :top_n]
        return [[words[i] for i in row] for row in idx], np.take_along_axis(dist, idx, axis=1)

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
                return list(self.vocabs[lang].words), _cluster_words(bow, self.kmeans.predict_many(emb),
                                                                     self.cfg.num_topics)
            held = self._pending.get(lang, [])
            if len(held) < 2 or not self.kmeans.is_initialised:
                raise ValueError(f"no topic words for {lang!r} yet")
            tokens = [t for t, _ in held]
            clusters = self.kmeans.predict_many(np.stack([e for _, e in held]))
        words = sorted({w for doc in tokens for w in doc})
        index = {w: i for i, w in enumerate(words)}
        rows = np.repeat(np.arange(len(tokens)), [len(doc) for doc in tokens])
        cols = np.fromiter((index[w] for doc in tokens for w in doc), dtype=np.int64, count=len(rows))
        bow = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(tokens), len(words)))
        return words, _cluster_words(bow, clusters, self.cfg.num_topics)

    def topic_distribution(self, lang: str) -> np.ndarray:
        """(K, V_lang) topic-word distributions of the published network."""
        with torch.no_grad():
            return self.serving.topic_word(lang).numpy()

    def sizes(self) -> dict[str, dict[str, int]]:
        """``{"buffer": {lang: documents}, "vocabulary": {lang: words}}``, read consistently (for gauges)."""
        with self._data_lock:
            return {"buffer": self.buffer.sizes(), "vocabulary": {lang: len(v) for lang, v in self.vocabs.items()}}

    @property
    def languages(self) -> list[str]:
        """Languages the topics have words in (sorted): the published network's, or before it is
        published, those with clustered documents (see :meth:`topic_word_distribution`)."""
        if self.serving is not None:
            return sorted(self.serving.cfg.vocab_sizes)
        if not self.kmeans.is_initialised:
            return []
        with self._data_lock:
            if self.xtra is not None:
                return sorted(self.xtra.cfg.vocab_sizes)
            return sorted(lang for lang, held in self._pending.items() if len(held) >= 2)

    # -- persistence ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        with self._data_lock, self._params_lock:
            return self._state_dict()

    def _state_dict(self) -> dict:
        state = {
            "cfg": dict(self.cfg.__dict__), "embedding_dim": self.embedding_dim,
            "kmeans": self.kmeans.state_dict(), "buffer": self.buffer.state_dict(),
            "exemplars": self.exemplars.state_dict(),
            "vocabs": {lang: v.state_dict() for lang, v in self.vocabs.items()},
            "version": self.version, "n_docs": self.n_docs, "docs_by_lang": dict(self.docs_by_lang),
            "warmup_left": self._warmup_left,
            "words_to_embed": {lang: sorted(words) for lang, words in self._words_to_embed.items() if words},
            "prevalence": self.prevalence.copy(), "since_refresh": self._since_refresh,
            "fresh_topics": dict(self._fresh),
            "prevalence_by_lang": {k: v.copy() for k, v in self.prevalence_by_lang.items()},
            "torch_rng": self._torch_rng.numpy().copy(),
            "pending": {lang: {"tokens": [t for t, _ in held], "emb": np.stack([e for _, e in held])}
                        for lang, held in self._pending.items() if held},
            "xtra": None,
        }
        if self.xtra is not None:
            # copies: torch's state dicts alias the live tensors, which later steps update in place
            state["xtra"] = {"config": self.xtra.cfg.to_dict(),
                             "weights": {k: v.detach().clone() for k, v in self.xtra.state_dict().items()},
                             "optimizer": copy.deepcopy(self.trainer.optimizer.state_dict()),
                             "scheduler": self.trainer.scheduler.state_dict(), "steps": self.trainer.steps}
        return state

    def load_state_dict(self, state: dict) -> None:
        self.__init__(OnlineConfig(**state["cfg"]), state["embedding_dim"], self.embed_words)
        self.kmeans.load_state_dict(state["kmeans"])
        self.buffer.load_state_dict(state["buffer"])
        if "exemplars" in state:   # absent from checkpoints written before it was kept
            self.exemplars.load_state_dict(state["exemplars"])
        for lang, vs in state["vocabs"].items():
            self._vocab(lang).load_state_dict(vs)
        self.version, self.n_docs = int(state["version"]), int(state["n_docs"])
        self._warmup_left = int(state.get("warmup_left", 0))
        self._words_to_embed = {lang: set(words) for lang, words in state.get("words_to_embed", {}).items()}
        self.docs_by_lang = dict(state["docs_by_lang"])
        self.prevalence = np.asarray(state["prevalence"], dtype=np.float64)
        self.prevalence_by_lang = {k: np.asarray(v, dtype=np.float64)
                                   for k, v in state.get("prevalence_by_lang", {}).items()}
        self._since_refresh = int(state["since_refresh"])
        self._fresh = {int(k): float(v) for k, v in state.get("fresh_topics", {}).items()}
        self._pending = {lang: list(zip(p["tokens"], np.asarray(p["emb"]))) for lang, p in state["pending"].items()}
        if state["xtra"] is not None:
            x = state["xtra"]
            with self._own_torch_rng():   # the throw-away initial weights draw from torch's RNG
                self.xtra = XTRA(XTRAConfig(**x["config"]))
                self.trainer = XTRATrainer(self.xtra, lr=self.cfg.lr, lr_step=self.cfg.lr_step,
                                           batch_size=self.cfg.batch_size, seed=self.cfg.seed)
            self.xtra.load_state_dict(x["weights"])
            if self.trainer.load_optimizer_state(copy.deepcopy(x["optimizer"])):
                self.trainer.scheduler.load_state_dict(x["scheduler"])
            self.trainer.steps = int(x["steps"])
            self._publish_serving()
        if "torch_rng" in state:   # absent from checkpoints written before it was kept
            self._torch_rng = torch.from_numpy(np.asarray(state["torch_rng"], dtype=np.uint8).copy())
