"""Fitting XTRA: building it from clustered corpora, the optimisation step, and theta inference.

Kept out of :mod:`model.xtra` so the network stays a plain ``nn.Module``; the online trainer of the
service reuses :class:`XTRATrainer.step` on batches drawn from its replay buffer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import scipy.sparse as sp
import torch

from xtream.model.sparse_adam import LazyAdam, clip_scale
from xtream.model.xtra import XTRA, WordProjection, XTRAConfig, dirichlet_laplace_prior, init_beta_from_clusters
from xtream.model.xtra_growth import MomentRemap

__all__ = ["LanguageCorpus", "XTRATrainer", "build_xtra", "csr_to_torch", "infer_theta"]

logger = logging.getLogger(__name__)


@dataclass
class LanguageCorpus:
    """One language's training documents: BoW rows, their sentence embeddings and cluster ids."""

    bow: sp.csr_matrix
    embeddings: np.ndarray
    clusters: np.ndarray

    def __post_init__(self) -> None:
        self.bow = sp.csr_matrix(self.bow, dtype=np.float32)
        n = self.bow.shape[0]
        if len(self.embeddings) != n or len(self.clusters) != n:
            raise ValueError(f"bow has {n} rows but embeddings {len(self.embeddings)} "
                             f"and clusters {len(self.clusters)}")

    def __len__(self) -> int:
        return self.bow.shape[0]


def csr_to_torch(x: sp.csr_matrix) -> torch.Tensor:
    """A scipy CSR matrix as a torch sparse COO tensor (the first layer multiplies it sparsely)."""
    coo = x.tocoo()
    idx = torch.from_numpy(np.vstack([coo.row, coo.col]).astype(np.int64))
    return torch.sparse_coo_tensor(idx, torch.from_numpy(coo.data.astype(np.float32)), coo.shape,
                                   check_invariants=False).coalesce()


def build_xtra(corpora: dict[str, LanguageCorpus], num_topics: int = 50,
               word_embeddings: dict[str, np.ndarray] | None = None, **config: Any) -> XTRA:
    """An XTRA initialised from the data: prior from cluster sizes, beta from cluster word distributions."""
    sizes = np.zeros(num_topics)
    for c in corpora.values():
        sizes += np.bincount(c.clusters, minlength=num_topics)[:num_topics]
    mu, var = dirichlet_laplace_prior(sizes)
    betas = {lang: init_beta_from_clusters(c.bow, c.clusters, num_topics) for lang, c in corpora.items()}
    emb_dim = next(iter(corpora.values())).embeddings.shape[1]
    wdim = emb_dim if word_embeddings is None else next(iter(word_embeddings.values())).shape[1]
    cfg = XTRAConfig(vocab_sizes={lang: c.bow.shape[1] for lang, c in corpora.items()}, num_topics=num_topics,
                     embedding_dim=emb_dim, word_embedding_dim=wdim, **config)
    centres = _cluster_centres(corpora, num_topics) if cfg.encoder_input != "bow" else None
    return XTRA(cfg, prior_mu=mu, prior_var=var, betas=betas, word_embeddings=word_embeddings, centres=centres)


def _cluster_centres(corpora: dict[str, LanguageCorpus], num_topics: int) -> np.ndarray:
    """(K, d) unit-norm mean of the unit embeddings of each cluster, over all languages (0 if empty)."""
    dim = next(iter(corpora.values())).embeddings.shape[1]
    sums = np.zeros((num_topics, dim))
    for c in corpora.values():
        x = np.asarray(c.embeddings, dtype=np.float64)
        np.add.at(sums, np.asarray(c.clusters), x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12))
    return (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@dataclass
class XTRATrainer:
    """Adam + StepLR + grad-norm clipping, the paper's optimisation, one step at a time.

    ``steps_per_lr_step`` is the StepLR period in optimisation steps (the paper's 250 epochs times
    steps per epoch offline; a fixed number of steps online).

    ``sparse_rows``: the word projections' gradients cover only the words of the batch and
    :class:`~model.sparse_adam.LazyAdam` updates only those rows (their moments included); with
    ``False`` every row gets a dense (mostly zero) gradient and a full Adam update. A batch of
    short documents touches a small part of the vocabulary.

    ``beta_every``: the beta alignment loss, which depends on the parameters only and not on the
    batch, is computed on every ``beta_every``-th step with its weight multiplied by
    ``beta_every``, so its gradient is the same on average; the steps in between skip it. Their
    ``parts["beta"]`` repeats the last computed value (it is not part of their ``total``).
    """

    model: XTRA
    lr: float = 0.002
    lr_step: int = 250
    lr_gamma: float = 0.5
    clip: float = 1.0
    batch_size: int = 128
    seed: int = 0
    sparse_rows: bool = True
    beta_every: int = 4
    steps: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    optimizer: LazyAdam = field(init=False)
    scheduler: torch.optim.lr_scheduler.StepLR = field(init=False)

    def __post_init__(self) -> None:
        if self.beta_every < 1:
            raise ValueError(f"beta_every must be >= 1, got {self.beta_every}")
        self._last_beta: float | None = None
        self.rng = np.random.default_rng(self.seed)
        torch.manual_seed(self.seed)
        self.reset_optimizer()

    def reset_optimizer(self, keep: Mapping[str, dict[str, Any]] | None = None,
                        remaps: Mapping[str, MomentRemap] | None = None) -> None:
        """(Re)create Adam; needed after the vocabulary changes the parameter shapes.

        Parameters are taken in name order, not registration order: a model rebuilt from a
        checkpoint registers a late-joining language's tensors elsewhere than the original did, and
        both Adam's saved state (by position) and the clipping norm (a sum in list order) must not
        depend on that history.

        ``keep`` (from :meth:`moments_by_name`, taken before the reshape) carries Adam's moments
        and the schedule over: a parameter named in ``remaps`` gets its moments passed through that
        function (the vocabulary remap its values went through), a parameter of unchanged shape
        keeps them as they were, and any other (a new language's) starts afresh.
        """
        named = sorted((n, p) for n, p in self.model.named_parameters() if p.requires_grad)
        self.params = [p for _, p in named]
        self.optimizer = LazyAdam(self.params, lr=self.lr)
        schedule = None if keep is None else self.scheduler.state_dict()
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=self.lr_step, gamma=self.lr_gamma)
        if keep is None:
            return
        self.scheduler.load_state_dict(cast(dict[str, Any], schedule))
        for name, p in named:
            old = keep.get(name)
            if not old:
                continue
            remap = (remaps or {}).get(name)
            moments = {k: remap(t) if remap is not None else t for k, t in old.items() if k != "step"}
            if all(t.shape == p.shape for t in moments.values()):
                self.optimizer.state[p] = {"step": old["step"].clone(), **moments}

    def moments_by_name(self) -> dict[str, dict[str, Any]]:
        """Adam's state of each parameter, by the parameter's name (for :meth:`reset_optimizer`)."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        return {names[id(p)]: dict(state) for p, state in self.optimizer.state.items() if id(p) in names}

    def load_optimizer_state(self, state: dict[str, Any]) -> bool:
        """Restore Adam's moments if they fit the parameters; otherwise start Adam afresh.

        Moments saved by an older parameter layout (a projection stored (P, V) instead of (V, P))
        cannot be reused; starting Adam again costs a few noisy steps, not the model.
        """
        self.optimizer.load_state_dict(state)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        fits = all(t.shape == p.shape for p in params for k, t in self.optimizer.state.get(p, {}).items()
                   if k != "step" and isinstance(t, torch.Tensor))
        if not fits:
            logger.warning("saved optimizer state does not fit the model's parameters; Adam restarts")
            self.reset_optimizer()
        return fits

    def step(self, batch: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
        """One gradient step on ``batch`` (see :meth:`XTRA.forward`); returns the loss parts."""
        self.model.train()
        with_beta = self.steps % self.beta_every == 0
        projections = [m for m in self.model.modules() if isinstance(m, WordProjection)]
        try:   # sparse row gradients during this step only: outside it the model behaves as a plain module
            for m in projections:
                m.sparse_grad = self.sparse_rows
            out = self.model(batch, beta_weight=float(self.beta_every) if with_beta else 0.0)
            self.optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
        finally:
            for m in projections:
                m.sparse_grad = False
        self.optimizer.step(grad_scale=clip_scale(self.params, self.clip))   # clipped inside the update
        self.steps += 1
        parts = out.parts
        if "beta" in parts:
            self._last_beta = parts["beta"]
        elif self._last_beta is not None:
            parts["beta"] = self._last_beta
        return parts

    def end_epoch(self) -> None:
        self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed :meth:`fit` needs to continue exactly as an uninterrupted one."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "steps": self.steps, "history": list(self.history),
                "numpy_rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into a trainer built for the same data and settings."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.steps, self.history = int(state["steps"]), list(state["history"])
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])

    def fit(self, corpora: dict[str, LanguageCorpus], epochs: int, progress: bool = True) -> list[dict[str, float]]:
        """Train for ``epochs`` passes; an epoch covers the largest language once.

        Every step draws ``batch_size`` documents from each language (smaller languages cycle),
        so the cross-language alignment losses always see every language.
        """
        from tqdm.auto import tqdm

        n_steps = max(int(np.ceil(len(c) / self.batch_size)) for c in corpora.values())
        orders = {lang: self.rng.permutation(len(c)) for lang, c in corpora.items()}
        cursors = dict.fromkeys(corpora, 0)
        started = time.perf_counter()
        done = len(self.history)   # epochs of earlier calls (a resumed fit goes on counting)
        bar = tqdm(range(done, done + epochs), desc="XTRA epochs", unit="epoch", disable=not progress)
        for epoch in bar:
            sums: dict[str, float] = {}
            for _ in range(n_steps):
                batch = {}
                for lang, c in corpora.items():
                    if cursors[lang] + self.batch_size > len(c):
                        orders[lang] = self.rng.permutation(len(c))
                        cursors[lang] = 0
                    idx = orders[lang][cursors[lang]: cursors[lang] + self.batch_size]
                    cursors[lang] += self.batch_size
                    batch[lang] = corpus_batch(c, idx)
                for k, v in self.step(batch).items():
                    sums[k] = sums.get(k, 0.0) + v
            self.end_epoch()
            record = {k: v / n_steps for k, v in sums.items()} | {"epoch": epoch + 1,
                                                                   "seconds": time.perf_counter() - started}
            self.history.append(record)
            bar.set_postfix(loss=f"{record['total']:.1f}")
            logger.info("epoch %d loss %.3f (%s)", epoch + 1, record["total"],
                        " ".join(f"{k}={v:.3f}" for k, v in record.items() if k not in ("epoch", "total")))
        return self.history


def corpus_batch(c: LanguageCorpus, idx: np.ndarray) -> dict[str, torch.Tensor]:
    """Rows ``idx`` of a corpus as the tensors :meth:`XTRA.forward` expects."""
    return {"bow": csr_to_torch(c.bow[idx]),
            "embedding": torch.from_numpy(np.ascontiguousarray(c.embeddings[idx], dtype=np.float32)),
            "cluster": torch.from_numpy(np.asarray(c.clusters[idx], dtype=np.int64))}


@torch.no_grad()
def infer_theta(model: XTRA, bow: sp.csr_matrix, lang: str, embeddings: np.ndarray | None = None,
                batch_size: int = 4096) -> np.ndarray:
    """Posterior-mean theta (n, K) for new documents; the model is left in eval mode.

    ``embeddings`` (n, d) are the documents' sentence embeddings, which an encoder reading them needs.
    """
    model.eval()
    bow = sp.csr_matrix(bow, dtype=np.float32)
    emb = None if embeddings is None else torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
    out = [model.theta(csr_to_torch(bow[i:i + batch_size]), lang,
                       None if emb is None else emb[i:i + batch_size]).numpy()
           for i in range(0, bow.shape[0], batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.cfg.num_topics), np.float32)
