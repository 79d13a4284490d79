"""Creating and changing the shape of the online model's XTRA network while it streams.

The online model (:mod:`xtream.model.online`) calls these under both of its locks:

- :func:`initialise` builds the network at the end of the warm-up from the held documents;
- :func:`admit_new_languages` and :func:`refresh_vocabularies` decide which languages join and
  whose vocabulary changed, and rebuild the optimizer when the network's shape changes (Adam's
  moments follow the parameters they belong to);
- :func:`restart_topics` gives a re-seeded cluster a fresh topic (its beta row from its documents);
- :func:`add_language` joins a language the network has not seen (beta from its clusters);
- :func:`remap_vocabulary` follows a vocabulary refresh (words admitted and retired) in the network
  and the replay buffer;
- :class:`WordEmbeddingQueue` holds the words whose embedding rows are still zero, so that embedding
  a fresh vocabulary (slow) happens on the trainer's thread, not the learner's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from xtream.errors import ModelError
from xtream.model.replay_buffer import ReplayBuffer
from xtream.model.training import LanguageCorpus, XTRATrainer, build_xtra
from xtream.model.vocabulary import Vocabulary, VocabularyChange
from xtream.model.xtra import XTRA, init_beta_from_clusters
from xtream.model.xtra_growth import MomentRemap

if TYPE_CHECKING:
    from xtream.model.online import OnlineTopicModel

__all__ = ["WordEmbeddingQueue", "add_language", "admit_new_languages", "initialise", "live_network",
           "refresh_vocabularies",
           "remap_vocabulary", "restart_topics"]

logger = logging.getLogger(__name__)


def live_network(model: OnlineTopicModel) -> tuple[XTRA, XTRATrainer]:
    """The model's live network and its trainer; for code that runs only once XTRA exists."""
    if model.xtra is None or model.trainer is None:
        raise ModelError("XTRA is not initialised yet")
    return model.xtra, model.trainer


def initialise(model: OnlineTopicModel) -> None:
    """End of warm-up: vocabularies, buffer and XTRA from the held documents (or, if that fails,
    no change but the vocabularies' refresh, so a later batch can try again)."""
    buffer_before = model.buffer.state_dict()
    try:
        _initialise_from_pending(model)
    except BaseException:
        model.buffer.load_state_dict(buffer_before)
        model.xtra = model.trainer = None
        raise

def _initialise_from_pending(model: OnlineTopicModel) -> None:
    corpora = {}
    for lang, held in model._pending.items():
        if len(held) < 2:
            continue
        model.vocabs[lang].refresh()
        if len(model.vocabs[lang]) == 0:   # too few documents for any word to qualify: wait
            continue
        toks = [t for t, _ in held]
        emb = np.stack([e for _, e in held])
        bow = model.vocabs[lang].transform(toks)
        clusters = model.kmeans.predict_many(emb)
        model.buffer.add_many(lang, bow, emb, clusters)
        corpora[lang] = LanguageCorpus(*model.buffer.all(lang))
    if not corpora:
        return
    corpora = {lang: LanguageCorpus(c.bow, c.embeddings, model.kmeans.predict_many(c.embeddings))
               for lang, c in corpora.items()}
    model.xtra = build_xtra(corpora, num_topics=model.cfg.num_topics,
                           word_embeddings=_word_embeddings(model, corpora),
                           lambda_cluster=model.cfg.lambda_cluster, lambda_beta=model.cfg.lambda_beta,
                           lambda_nce=model.cfg.lambda_nce, nce_temperature=model.cfg.nce_temperature,
                           encoder_input=model.cfg.encoder_input, projection_units=model.cfg.projection_units,
                           product_precision=model.cfg.product_precision)
    model.trainer = XTRATrainer(model.xtra, lr=model.cfg.lr, lr_step=model.cfg.lr_step,
                               batch_size=model.cfg.batch_size, seed=model.cfg.seed)
    for lang in corpora:
        del model._pending[lang]
    model._since_refresh = 0
    model._shape_generation += 1
    model._warmup_left = model.cfg.warmup_steps
    logger.info("XTRA initialised after %d documents: languages=%s vocab=%s; %d warm-up steps due",
                model.n_docs, sorted(corpora), {lang: len(model.vocabs[lang]) for lang in corpora},
                model._warmup_left)

def _word_embeddings(model: OnlineTopicModel, langs: Iterable[str]) -> dict[str, np.ndarray] | None:
    if model._words is None:
        return None
    return {lang: model._words.zeros(lang, model.vocabs[lang].words) for lang in langs}

def admit_new_languages(model: OnlineTopicModel) -> None:
    """Join the held languages with ``min_docs_new_language`` documents and a vocabulary."""
    xtra, trainer = live_network(model)
    for lang in [lang for lang, held in model._pending.items() if len(held) >= model.cfg.min_docs_new_language]:
        held = model._pending.pop(lang)
        vocab = model.vocabs[lang]
        vocab.refresh()
        if len(vocab) == 0:
            model._pending[lang] = held
            continue
        emb = np.stack([e for _, e in held])
        add_language(xtra, model.buffer, lang, vocab, vocab.transform([t for t, _ in held]), emb,
                     model.kmeans.predict_many(emb),
                     None if model._words is None else model._words.zeros(lang, vocab.words))
        trainer.reset_optimizer(keep=trainer.moments_by_name())
        model._shape_generation += 1

def refresh_vocabularies(model: OnlineTopicModel) -> None:
    """Admit/retire words in every language XTRA knows; the network and buffer follow."""
    xtra, trainer = live_network(model)
    changes, moments = {}, trainer.moments_by_name()
    remaps: dict[str, MomentRemap] = {}
    for lang in list(xtra.cfg.vocab_sizes):
        change = model.vocabs[lang].refresh()
        if change.changed:
            remaps |= remap_vocabulary(xtra, model.buffer, lang, change, model.vocabs[lang].words, model._words)
            changes[lang] = (len(change.added), len(change.removed))
    if changes:
        trainer.reset_optimizer(keep=moments, remaps=remaps)
        model._shape_generation += 1
        logger.info("vocabulary refresh: %s", changes)
    model._since_refresh = 0


def restart_topics(beta: torch.Tensor, slots: list[int], bow: Any, clusters: np.ndarray, num_topics: int) -> bool:
    """Restart the ``beta`` rows of re-seeded ``slots`` from their documents' words; False if no slot
    has two documents in ``bow``.

    This is XTRA's own initialisation (cluster word distributions, idf-weighted, z-scored)
    applied to one topic, rescaled to the current spread of beta. Without it the topic would
    keep its old words until enough gradient steps had moved them.
    """
    present = [k for k in slots if (clusters == k).sum() >= 2]
    if not present:
        return False
    fresh = init_beta_from_clusters(bow, clusters, num_topics)
    with torch.no_grad():
        columns = beta.mean(dim=0)   # keep each word's shared offset (invisible to the loss)
        std = (beta - columns).std(dim=1).mean().item()
        for k in present:
            beta[k] = torch.from_numpy(fresh[k] * std) + columns
    return True


def add_language(xtra: XTRA, buffer: ReplayBuffer, lang: str, vocab: Vocabulary, bow: Any, embeddings: np.ndarray,
                 clusters: np.ndarray, word_embeddings: np.ndarray | None) -> None:
    """Join ``lang`` to the network (beta from its documents' clusters) and its documents to the buffer."""
    xtra.add_language(lang, len(vocab), beta=init_beta_from_clusters(bow, clusters, xtra.cfg.num_topics),
                      word_embeddings=word_embeddings)
    buffer.add_many(lang, bow, embeddings, clusters)
    logger.info("new language %s joined the model with %d words", lang, len(vocab))


def remap_vocabulary(xtra: XTRA, buffer: ReplayBuffer, lang: str, change: VocabularyChange, words: list[str],
                     queue: WordEmbeddingQueue | None) -> dict[str, MomentRemap]:
    """Follow a refresh of ``lang``'s vocabulary (now ``words``) in the network and the buffer; the
    admitted words' embedding rows are zero and queued in ``queue`` (None: the network has none).
    Returns the remap of each rebuilt parameter's optimizer moments (see ``XTRATrainer.reset_optimizer``)."""
    new_emb = None
    if queue is not None:
        new_emb = np.zeros((len(words), xtra.cfg.word_embedding_dim), np.float32)
        kept = change.new_to_old >= 0
        new_emb[kept] = xtra.word_embeddings(lang).numpy()[change.new_to_old[kept]]
        new_emb[~kept] = queue.zeros(lang, change.added)
    remaps = xtra.remap_vocabulary(lang, change.old_to_new, len(words), new_emb)
    buffer.remap_vocabulary(lang, change.old_to_new, len(words))
    return remaps


class WordEmbeddingQueue:
    """Vocabulary words whose embedding row is still zero, per language, until :meth:`embed` fills them.

    Only the beta alignment reads these rows, and every train call fills the queue before its
    first step.
    """

    def __init__(self, embed_words: Callable[[list[str]], np.ndarray], dim: int) -> None:
        self.embed_words = embed_words
        self.dim = dim
        self.pending: dict[str, set[str]] = {}

    def zeros(self, lang: str, words: list[str]) -> np.ndarray:
        """Zero rows for ``words``, queued for :meth:`embed`."""
        self.pending.setdefault(lang, set()).update(words)
        return np.zeros((len(words), self.dim), np.float32)

    def todo(self) -> dict[str, list[str]]:
        return {lang: sorted(words) for lang, words in self.pending.items() if words}

    def embed(self, todo: dict[str, list[str]]) -> dict[str, np.ndarray]:
        """The vectors of ``todo``'s words (the slow part: call it outside the model's locks)."""
        vectors = {lang: np.asarray(self.embed_words(words), dtype=np.float32).reshape(len(words), -1)
                   for lang, words in todo.items()}
        for lang, v in vectors.items():
            if v.shape[1] != self.dim:
                raise ValueError(f"embed_words gave {v.shape[1]}-d vectors for {lang!r}; "
                                 f"word embeddings must have the document embeddings' {self.dim} dimensions")
        return vectors

    def fill(self, xtra: XTRA, vocabs: dict[str, Vocabulary], todo: dict[str, list[str]],
             vectors: dict[str, np.ndarray]) -> None:
        """Write ``vectors`` into the network's rows of the words still in their vocabulary."""
        for lang, words in todo.items():
            index = vocabs[lang].index   # words may have been retired meanwhile
            found = [(index[w], i) for i, w in enumerate(words) if w in index]
            if found and lang in xtra.cfg.vocab_sizes:
                rows, src = map(list, zip(*found))
                xtra.word_embeddings(lang)[torch.as_tensor(rows)] = torch.from_numpy(vectors[lang][src])
            self.pending[lang].difference_update(words)

    def state_dict(self) -> dict[str, list[str]]:
        return {lang: sorted(words) for lang, words in self.pending.items() if words}

    def load_state_dict(self, state: dict[str, list[str]]) -> None:
        self.pending = {lang: set(words) for lang, words in state.items()}
