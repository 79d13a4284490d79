"""Offline topic-quality pipeline pieces shared by the benchmark and the ``train``/``evaluate`` CLI.

Three steps have to be done identically wherever a topic model is trained and judged offline,
otherwise benchmark numbers and CLI numbers stop being comparable:

- :func:`embed_cached` embeds texts in chunks behind a progress bar and keeps the result as an
  ``.npy`` file, because embedding is the slowest step and reruns of a benchmark should not pay
  for it again;
- :func:`joint_kmeans` clusters the documents of *all* languages together, as the streaming
  service does, so a cluster id means the same topic in every language (the XTRA reference code
  instead clusters English only and assigns the other language to the nearest English centroid);
- :func:`fit_xtra` builds and trains XTRA with the paper's optimisation settings, and
  :func:`quality_metrics` computes the whole metrics bundle (TU, NPMI, dictionary alignment,
  intra-/cross-lingual classification) from topic-word matrices and thetas.

Everything here takes arrays, token lists and paths; it never reads the environment.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xtream.errors import ModelError
from xtream.model.atomic import atomic_write
from xtream.model.embedding import Embedder
from xtream.model.evaluation import (
    Docs,
    classification_scores,
    crosslingual_classification,
    dictionary_alignment,
    multilingual_topic_uniqueness,
    npmi_coherence,
    top_words,
    topic_quality,
)
from xtream.model.training import LanguageCorpus, XTRATrainer, build_xtra
from xtream.model.xtra import XTRA

__all__ = [
    "DEFAULT_CACHE_DIR",
    "PAPER_SETTINGS",
    "QualityError",
    "TrainedXTRA",
    "cache_file",
    "embed_cached",
    "fit_xtra",
    "joint_kmeans",
    "quality_metrics",
    "topic_top_words",
]

logger = logging.getLogger(__name__)

#: Where embeddings are cached unless a caller passes another directory.
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "xtream" / "embeddings"

#: The XTRA paper's EC News optimisation and loss weights. ``lr_step`` counts scheduler steps,
#: which :meth:`XTRATrainer.fit` makes once per epoch, so 250 means "halve every 250 epochs".
PAPER_SETTINGS: dict[str, float] = {
    "lr": 0.002, "lr_step": 250, "lr_gamma": 0.5, "clip": 1.0, "batch_size": 128,
    "lambda_cluster": 5.0, "lambda_beta": 7.0, "lambda_nce": 80.0,
}


class QualityError(ModelError, ValueError):
    """Inputs to the quality pipeline are inconsistent (e.g. lengths or languages differ)."""


# -- embeddings ------------------------------------------------------------------------------------
def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "x"


def cache_file(key: str, embedder_name: str, cache_dir: str | Path | None = None) -> Path:
    """``<cache_dir>/<key>-<embedder>.npy`` with both parts made filename-safe."""
    return Path(cache_dir or DEFAULT_CACHE_DIR) / f"{_safe(key)}-{_safe(embedder_name)}.npy"


def content_key(prefix: str, texts: Sequence[str]) -> str:
    """A cache key that changes whenever the texts do: ``<prefix>-<sha1 of the texts, 12 hex>``."""
    digest = hashlib.sha1()
    for t in texts:
        digest.update(t.encode("utf-8"))
        digest.update(b"\n")
    return f"{prefix}-{digest.hexdigest()[:12]}"


def _save_atomic(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to a temporary sibling then rename, so an interrupted run leaves no bad cache."""
    atomic_write(path, lambda f: np.save(f, array), durable=False, mode=0o644)   # a cache is meant to be shared


def embed_cached(embedder: Embedder, texts: Sequence[str], cache: str | Path | None = None,
                 chunk_size: int = 512, desc: str = "embedding", progress: bool = True) -> np.ndarray:
    """Unit embeddings ``(len(texts), dim)`` of ``texts``, read from ``cache`` when it fits.

    A cache file whose shape does not match ``(len(texts), embedder.dim)`` is ignored and
    rewritten (it was made for other texts). ``cache=None`` disables caching.
    """
    from tqdm.auto import tqdm

    path = None if cache is None else Path(cache)
    if path is not None and path.is_file():
        cached = np.load(path, mmap_mode=None)
        if cached.shape == (len(texts), embedder.dim):
            logger.info("embeddings from cache %s", path)
            return cached.astype(np.float32, copy=False)
        logger.warning("ignoring cache %s: shape %s, expected %s", path, cached.shape, (len(texts), embedder.dim))
    if chunk_size < 1:
        raise QualityError(f"chunk_size must be >= 1, got {chunk_size}")
    out = np.empty((len(texts), embedder.dim), dtype=np.float32)
    started = time.perf_counter()
    with tqdm(total=len(texts), desc=desc, unit="doc", disable=not progress) as bar:
        for i in range(0, len(texts), chunk_size):
            chunk = list(texts[i:i + chunk_size])
            out[i:i + len(chunk)] = embedder.encode(chunk)
            bar.update(len(chunk))
    seconds = time.perf_counter() - started
    logger.info("embedded %d texts in %.1f s (%.0f/s)", len(texts), seconds, len(texts) / max(seconds, 1e-9))
    if path is not None:
        _save_atomic(path, out)
    return out


# -- clustering ------------------------------------------------------------------------------------
def joint_kmeans(embeddings: Mapping[str, np.ndarray], n_clusters: int = 50, n_init: int = 3,
                 seed: int = 0, cache_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """K-means over the normalised embeddings of all languages at once; cluster ids per language.

    Joint clustering is what the service does with its stream, and it lets a cluster hold
    documents of several languages, which is the signal XTRA's cluster loss aligns on. Vectors are
    re-normalised so Euclidean k-means approximates cosine (spherical) k-means.

    With ``cache_dir`` the labels are kept under a key of the vectors' bytes and the parameters:
    a resumed long training must cluster exactly as the run it continues, and clustering a large
    corpus is slow on a busy host.
    """
    from sklearn.cluster import KMeans

    if not embeddings:
        raise QualityError("need the embeddings of at least one language")
    langs = list(embeddings)
    sizes = [len(embeddings[lang]) for lang in langs]
    x = np.concatenate([np.asarray(embeddings[lang], dtype=np.float32) for lang in langs])
    if len(x) < n_clusters:
        raise QualityError(f"{len(x)} documents cannot form {n_clusters} clusters")
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    path = None
    if cache_dir is not None:
        digest = hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest()[:16]
        path = Path(cache_dir) / f"kmeans-{digest}-k{n_clusters}-init{n_init}-seed{seed}.npy"
    labels = np.load(path) if path is not None and path.exists() else None
    if labels is not None and labels.shape == (len(x),):
        logger.info("k-means labels from cache %s", path)
    else:
        started = time.perf_counter()
        km = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit(x)
        logger.info("k-means: %d docs, K=%d, n_init=%d, %.1f s, inertia %.1f", len(x), n_clusters, n_init,
                    time.perf_counter() - started, km.inertia_)
        labels = km.labels_.astype(np.int64)
        if path is not None:
            _save_atomic(path, labels)
    bounds = np.cumsum([0, *sizes])
    return {lang: labels[bounds[i]:bounds[i + 1]] for i, lang in enumerate(langs)}


# -- training --------------------------------------------------------------------------------------
@dataclass
class TrainedXTRA:
    """A trained model with what it cost: per-epoch loss history and wall time of ``fit``."""

    model: XTRA
    history: list[dict[str, float]] = field(default_factory=list)
    train_seconds: float = 0.0
    epochs: int = 0

    @property
    def seconds_per_epoch(self) -> float:
        return self.train_seconds / max(self.epochs, 1)


def fit_xtra(corpora: Mapping[str, LanguageCorpus], epochs: int, num_topics: int = 50,
             word_embeddings: Mapping[str, np.ndarray] | None = None, seed: int = 0,
             progress: bool = True, checkpoint: str | Path | None = None, checkpoint_every: int = 10,
             **overrides: float | str) -> TrainedXTRA:
    """Build XTRA from the data and train it with :data:`PAPER_SETTINGS` (``overrides`` win).

    Optimiser keys (``lr``, ``lr_step``, ``lr_gamma``, ``clip``, ``batch_size``) go to the trainer,
    everything else (loss weights, ``beta_alignment``...) to :class:`~model.xtra.XTRAConfig`.

    With ``checkpoint`` (a file path) the trainer's whole state is written there every
    ``checkpoint_every`` epochs and a later call with the same data and settings resumes from it:
    the paper's 800 epochs take hours on a CPU, longer than one sitting. A resumed run gives the
    same model as an uninterrupted one with the same ``checkpoint_every``.
    """
    import torch

    if epochs < 1:
        raise QualityError(f"epochs must be >= 1, got {epochs}")
    if checkpoint_every < 1:
        raise QualityError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    settings = {**PAPER_SETTINGS, **overrides}
    trainer_keys = ("lr", "lr_step", "lr_gamma", "clip", "batch_size")
    trainer_args = {k: settings.pop(k) for k in trainer_keys}
    torch.manual_seed(seed)  # model initialisation happens before the trainer seeds anything
    model = build_xtra(dict(corpora), num_topics=num_topics,
                       word_embeddings=None if word_embeddings is None else dict(word_embeddings), **settings)
    trainer = XTRATrainer(model, lr=float(trainer_args["lr"]), lr_step=int(trainer_args["lr_step"]),
                          lr_gamma=float(trainer_args["lr_gamma"]), clip=float(trainer_args["clip"]),
                          batch_size=int(trainer_args["batch_size"]), seed=seed)
    signature = {"settings": {k: str(v) for k, v in sorted({**settings, **trainer_args}.items())},
                 "num_topics": num_topics, "seed": seed, "checkpoint_every": checkpoint_every,
                 "corpora": {lang: list(c.bow.shape) for lang, c in sorted(corpora.items())},
                 "clusters": {lang: hashlib.sha1(np.asarray(c.clusters, np.int64).tobytes()).hexdigest()[:16]
                              for lang, c in sorted(corpora.items())}}
    path = None if checkpoint is None else Path(checkpoint)
    seconds = 0.0
    if path is not None and path.is_file():
        state = _load_checkpoint(path)
        if state["signature"] != signature:
            raise QualityError(f"checkpoint {path} was written for other data or settings: "
                               f"{state['signature']} != {signature}")
        trainer.load_state_dict(state["trainer"])
        seconds = float(state["train_seconds"])
        if len(trainer.history) > epochs:
            raise QualityError(f"checkpoint {path} holds {len(trainer.history)} epochs, more than the {epochs} asked")
        logger.info("resumed from %s after %d epochs", path, len(trainer.history))
    while len(trainer.history) < epochs:
        chunk = epochs - len(trainer.history) if path is None else min(checkpoint_every, epochs - len(trainer.history))
        started = time.perf_counter()
        trainer.fit(dict(corpora), epochs=chunk, progress=progress)
        seconds += time.perf_counter() - started
        if path is not None:
            _save_checkpoint(path, {"signature": signature, "trainer": trainer.state_dict(), "train_seconds": seconds})
            logger.info("checkpoint %s: %d/%d epochs, %.0f s", path, len(trainer.history), epochs, seconds)
    return TrainedXTRA(model=model, history=list(trainer.history), train_seconds=seconds, epochs=epochs)


def _load_checkpoint(path: Path) -> dict[str, Any]:
    """The state :func:`_save_checkpoint` wrote, loaded with ``weights_only=True``: tensors and plain
    containers only, so a file that holds pickled objects (which could run code) is refused."""
    import pickle

    import torch

    try:
        state = torch.load(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise QualityError(f"checkpoint {path} holds objects other than tensors and plain containers; refused "
                           f"({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or not {"signature", "trainer", "train_seconds"} <= set(state):
        raise QualityError(f"checkpoint {path} is not a training checkpoint; refused")
    return state


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary sibling then rename: a kill mid-write keeps the last checkpoint."""
    import torch

    atomic_write(path, lambda f: torch.save(state, f))


# -- metrics ---------------------------------------------------------------------------------------
def topic_top_words(model: XTRA, vocabularies: Mapping[str, Sequence[str]], n: int = 15) -> dict[str, list[list[str]]]:
    """Top-``n`` words of every topic, per language of ``vocabularies``."""
    import torch

    with torch.no_grad():
        return {lang: top_words(model.topic_word(lang).cpu().numpy(), vocab, n=n)
                for lang, vocab in vocabularies.items()}


def quality_metrics(
    topic_word: Mapping[str, np.ndarray],
    vocabularies: Mapping[str, Sequence[str]],
    reference_docs: Mapping[str, Docs],
    *,
    dictionary: frozenset[tuple[str, str]] | None = None,
    dictionary_langs: tuple[str, str] | None = None,
    classification: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] | None = None,
    classifier: str = "svc",
    tu_top: int = 15,
    npmi_top: int = 10,
    dict_top: int = 15,
    zero_cooccurrence: float = -1.0,
    full_reference: Mapping[str, Docs] | None = None,
) -> dict[str, float]:
    """The metrics bundle of one model, as a flat ``name -> value`` dict.

    Keys: ``tu`` (top-``tu_top`` words, mean over languages); ``npmi_<lang>`` for each language of
    ``reference_docs`` (top-``npmi_top`` words; reference = those docs, token lists or a sparse
    matrix over the vocabulary); ``dict_alignment`` when ``dictionary`` (pairs with
    ``dictionary_langs[0]`` on the left) is given; with ``classification[lang] = (theta_train,
    y_train, theta_test, y_test)``: ``clf_intra_<lang>`` and, with >= 2 languages,
    ``clf_cross_<lang>`` (accuracy), and the same names with ``_f1`` (macro-F1).
    ``classifier="svc"`` is the papers' RBF SVC, ``"linear"`` a fast LinearSVC.

    With ``full_reference[lang]`` (all texts of the language, train + test): ``npmi0_<lang>``, NPMI
    of the top-``npmi_top`` words on that reference with never-co-occurring pairs counted as 0 (the
    papers' convention), ``npmi0`` their mean over languages and ``tq`` = ``tu`` x ``npmi0``.
    """
    langs = list(topic_word)
    missing = [lang for lang in langs if lang not in vocabularies]
    if missing:
        raise QualityError(f"no vocabulary for {missing}")
    if dictionary is not None and (dictionary_langs is None or len(dictionary_langs) != 2
                                   or any(lang not in topic_word for lang in dictionary_langs)):
        raise QualityError(f"dictionary_langs {dictionary_langs} must name two of {langs}")
    n = max(tu_top, npmi_top if reference_docs else 0, dict_top if dictionary is not None else 0)
    tops = {lang: top_words(np.asarray(topic_word[lang]), vocabularies[lang], n=n) for lang in langs}
    out: dict[str, float] = {}
    if langs:   # no topics (a baseline that only has document vectors): classification alone
        out["tu"] = multilingual_topic_uniqueness({lang: [t[:tu_top] for t in tops[lang]] for lang in langs})
    for lang, docs in reference_docs.items():
        if lang not in tops:
            raise QualityError(f"reference docs for {lang!r}, which has no topics")
        out[f"npmi_{lang}"] = npmi_coherence(tops[lang], docs, top_n=npmi_top, vocab=vocabularies[lang],
                                             zero_cooccurrence=zero_cooccurrence)
    for lang, docs in (full_reference or {}).items():
        if lang not in tops:
            raise QualityError(f"full reference docs for {lang!r}, which has no topics")
        out[f"npmi0_{lang}"] = npmi_coherence(tops[lang], docs, top_n=npmi_top, vocab=vocabularies[lang],
                                              zero_cooccurrence=0.0)
    if full_reference:
        out["npmi0"] = float(np.mean([out[f"npmi0_{lang}"] for lang in full_reference]))
        out["tq"] = topic_quality(out["tu"], out["npmi0"])
    if dictionary is not None:
        a, b = dictionary_langs or ("", "")  # checked above
        out["dict_alignment"] = dictionary_alignment(tops[a], tops[b], dictionary, top_n=dict_top)
    if classification:
        out.update(_classification_metrics(classification, classifier))
    return out


def _classification_metrics(classification: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]],
                            classifier: str) -> dict[str, float]:
    """``clf_intra_<lang>``, ``clf_cross_<lang>`` (accuracy) and their ``_f1`` (macro-F1)."""
    if len(classification) == 1:  # one language: there is nothing to cross to
        ((lang, args),) = classification.items()
        scores = {f"intra_{lang}": classification_scores(*args, model=classifier)}  # type: ignore[arg-type]
    else:
        scores = crosslingual_classification(classification, model=classifier)  # type: ignore[arg-type]
    out: dict[str, float] = {}
    for lang in classification:
        for kind in ("intra", "cross"):
            if f"{kind}_{lang}" in scores:
                out[f"clf_{kind}_{lang}"] = scores[f"{kind}_{lang}"]["accuracy"]
                out[f"clf_{kind}_{lang}_f1"] = scores[f"{kind}_{lang}"]["macro_f1"]
    return out
