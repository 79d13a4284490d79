"""XTRA: cross-lingual neural topic model with topic and representation alignment (arXiv 2510.02788).

Per language ``l`` a Bag-of-Words ``x_l`` (vocabulary ``V_l``) goes through its own projection
``Linear(V_l, 1000) + ReLU + Dropout`` into a **shared** encoder (two softplus layers of 300) that
outputs a logistic-normal posterior; ``theta = softmax(mu + sigma * eps)``. Each language decodes
with its own free topic-word matrix ``beta_l`` (K x V_l): ``x_hat_l = softmax(BN(theta @ beta_l))``.
``encoder_input="embedding"`` feeds the shared encoder the sentence embedding through one projection
for every language instead (ZeroShotTM-style), plus the embedding's scaled cosine to learned topic
centres that start at the clusters': theta is as language-neutral as the embedding; ``"both"`` sums.

Loss, summed over languages:

- reconstruction ``-sum x log x_hat`` + KL to a logistic-normal prior fitted to cluster sizes;
- ``lambda_cluster * L_cluster``: supervised contrastive loss over the batch's thetas, positives are
  documents of the same embedding cluster (any language). Unlike the reference code, positives are
  not counted twice in the denominator, so the loss can reach 0 instead of bottoming at log 2;
- ``lambda_nce * L_InfoNCE``: theta projected by ``Linear(K, d_emb)`` is contrasted with the
  document's own sentence embedding (other documents of the batch are negatives);
- ``lambda_beta * L_beta``: topic k of language a and topic k of language b are pulled together and
  other topics pushed apart, in a shared semantic space. Two spaces are available:

  * ``"word_embedding"`` (default): a topic is ``softmax(beta_lk) @ E_l`` where ``E_l`` holds
    multilingual embeddings of the vocabulary's words (fixed buffers). No parameter depends on
    the vocabulary size, so it works for any number of languages, unequal vocabularies and a
    vocabulary that grows (append rows to ``E_l``).
  * ``"learned_projection"`` (paper-faithful): ``Linear(V_l, 384)`` per language on the raw rows
    of ``beta_l``. Kept to measure the choice against.

The module is pure torch; training loops live in :mod:`model.training`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from itertools import combinations
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xtream.model import xtra_growth
from xtream.model.precision import matmul, uses_bf16
from xtream.model.reconstruction import batchnorm_reconstruction_loss
from xtream.model.xtra_growth import MomentRemap
from xtream.model.xtra_parts import (
    Dropout,
    SharedEncoder,
    WordProjection,
    dirichlet_laplace_prior,
    init_beta_from_clusters,
)

__all__ = ["ENCODER_INPUTS", "XTRA", "Dropout", "WordProjection", "XTRAConfig", "XTRAOutput",
           "dirichlet_laplace_prior", "init_beta_from_clusters"]

#: What the shared encoder may read: each language's projected bag of words (the paper), the
#: projected sentence embedding (one projection for every language), or the sum of both.
ENCODER_INPUTS = ("bow", "embedding", "both")


@dataclass
class XTRAConfig:
    """Hyper-parameters; defaults are the paper's EC News settings."""

    vocab_sizes: dict[str, int]
    num_topics: int = 50
    embedding_dim: int = 512
    projection_units: int = 1000
    encoder_units: int = 300
    dropout: float = 0.2
    temperature: float = 0.2           # L_cluster
    nce_temperature: float = 1.0       # L_InfoNCE (the reference code uses plain exp(cosine))
    beta_temperature: float = 1.0      # L_beta
    lambda_cluster: float = 5.0
    lambda_beta: float = 7.0
    lambda_nce: float = 80.0
    beta_alignment: str = "word_embedding"   # or "learned_projection"
    encoder_input: str = "bow"                # one of ENCODER_INPUTS
    anchor_temperature: float = 0.1           # embedding encoders: mu adds cos(embedding, topic centre) / this
    beta_projection_dim: int = 384
    word_embedding_dim: int = 512
    product_precision: str = "auto"           # one of model.precision.PRECISIONS
    languages: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.languages:
            self.languages = sorted(self.vocab_sizes)
        if len(self.languages) < 1:
            raise ValueError("XTRA needs at least one language")
        if self.beta_alignment not in ("word_embedding", "learned_projection", "none"):
            raise ValueError(f"unknown beta_alignment {self.beta_alignment!r}")
        if self.encoder_input not in ENCODER_INPUTS:
            raise ValueError(f"unknown encoder_input {self.encoder_input!r}; one of {ENCODER_INPUTS}")
        uses_bf16(self.product_precision, "decoder")   # validates

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class XTRAOutput:
    """``loss`` is what to back-propagate; ``parts`` are its components, detached, for logging."""

    loss: torch.Tensor
    parts: dict[str, float]
    theta: dict[str, torch.Tensor]


class XTRA(nn.Module):
    """The XTRA network for N >= 1 languages (alignment losses need >= 2)."""

    prior_mu: torch.Tensor
    prior_var: torch.Tensor

    def __init__(self, cfg: XTRAConfig, prior_mu: np.ndarray | None = None, prior_var: np.ndarray | None = None,
                 betas: dict[str, np.ndarray] | None = None,
                 word_embeddings: dict[str, np.ndarray] | None = None, centres: np.ndarray | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        #: bfloat16 products (``cfg.product_precision`` resolved on this machine) in the beta
        #: alignment and in the decoder
        self.bf16_alignment = uses_bf16(cfg.product_precision, "alignment")
        self.bf16_decoder = uses_bf16(cfg.product_precision, "decoder")
        self._bf16_word_embeddings: dict[str, tuple[torch.Tensor, int, torch.Tensor]] = {}
        k = cfg.num_topics
        self.projections = nn.ModuleDict({   # none when the encoder reads only sentence embeddings
            lang: self.new_word_projection(v) for lang, v in cfg.vocab_sizes.items()
            if cfg.encoder_input != "embedding"})
        if cfg.encoder_input != "bow":
            self.embedding_projection = nn.Sequential(nn.Linear(cfg.embedding_dim, cfg.projection_units), nn.ReLU(),
                                                      Dropout(cfg.dropout))
            # Topic k starts as the documents near centre k (cluster k), as beta starts as its words.
            self.topic_centres = nn.Linear(cfg.embedding_dim, k, bias=False)
            with torch.no_grad():
                self.topic_centres.weight.copy_(torch.zeros(k, cfg.embedding_dim) if centres is None
                                                else torch.as_tensor(centres).float() / cfg.anchor_temperature)
        self.encoder = SharedEncoder(cfg.projection_units, cfg.encoder_units, cfg.num_topics, cfg.dropout,
                                     bf16=uses_bf16(cfg.product_precision, "encoder"))
        self.betas = nn.ParameterDict({
            lang: nn.Parameter(torch.as_tensor(betas[lang]).float().clone() if betas and lang in betas
                               else torch.randn(k, v) * 0.02)
            for lang, v in cfg.vocab_sizes.items()})
        self.decoder_bn = nn.ModuleDict({lang: nn.BatchNorm1d(v) for lang, v in cfg.vocab_sizes.items()})
        for bn in self.decoder_bn.values():
            bn.weight.requires_grad_(False)
        self.theta_to_embedding = nn.Sequential(nn.Linear(k, cfg.embedding_dim), Dropout(cfg.dropout))
        mu = np.zeros(k, np.float32) if prior_mu is None else prior_mu
        var = np.ones(k, np.float32) if prior_var is None else prior_var
        self.register_buffer("prior_mu", torch.as_tensor(mu).float().clone())
        self.register_buffer("prior_var", torch.as_tensor(var).float().clone())
        if cfg.beta_alignment == "learned_projection":
            self.beta_projections = nn.ModuleDict({
                lang: nn.Sequential(nn.Linear(v, cfg.beta_projection_dim), Dropout(cfg.dropout))
                for lang, v in cfg.vocab_sizes.items()})
        for lang, v in cfg.vocab_sizes.items():
            emb = None if word_embeddings is None else word_embeddings.get(lang)
            emb_t = torch.zeros(v, cfg.word_embedding_dim) if emb is None else torch.as_tensor(emb).float().clone()
            self.register_buffer(f"word_embeddings_{lang}", emb_t)

    # -- building blocks -----------------------------------------------------------------------
    def new_word_projection(self, vocab_size: int) -> nn.Sequential:
        cfg = self.cfg
        return nn.Sequential(WordProjection(vocab_size, cfg.projection_units), nn.ReLU(), Dropout(cfg.dropout))

    def decoder_norm(self, lang: str) -> nn.BatchNorm1d:
        """The decoder's BatchNorm over ``lang``'s vocabulary."""
        return cast(nn.BatchNorm1d, self.decoder_bn[lang])

    def encoder_input(self, bow: torch.Tensor, lang: str, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """What the shared encoder reads (``cfg.encoder_input``): (B, projection_units).

        The BoW may be sparse; the sentence embeddings are needed unless the input is ``"bow"``.
        """
        mode = self.cfg.encoder_input
        if mode == "bow":
            return self.projections[lang](bow)
        if embedding is None:
            raise ValueError(f"an encoder reading {mode!r} needs the documents' sentence embeddings")
        h = self.embedding_projection(F.normalize(embedding, dim=1))
        return h + self.projections[lang](bow) if mode == "both" else h

    def encode(self, bow: torch.Tensor, lang: str,
               embedding: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, V_l) counts and (B, d) sentence embeddings -> (mu, logvar) of the logistic-normal posterior."""
        mu, logvar = self.encoder(self.encoder_input(bow, lang, embedding))
        return self._anchored(mu, embedding), logvar

    def _anchored(self, mu: torch.Tensor, embedding: torch.Tensor | None) -> torch.Tensor:
        """An embedding encoder's mu plus the embedding's scaled cosine to each topic's centre
        (a learned layer that starts at the k-means centres), so topic k stays cluster k's topic."""
        if self.cfg.encoder_input == "bow" or embedding is None:
            return mu
        return mu + self.topic_centres(F.normalize(embedding, dim=1))

    def theta(self, bow: torch.Tensor, lang: str, embedding: torch.Tensor | None = None) -> torch.Tensor:
        """Document-topic proportions; deterministic (posterior mean) in eval mode."""
        mu, logvar = self.encode(bow, lang, embedding)
        if not self.training:
            return F.softmax(mu, dim=1)
        return F.softmax(mu + torch.randn_like(mu) * torch.exp(0.5 * logvar), dim=1)

    def decode(self, theta: torch.Tensor, lang: str) -> torch.Tensor:
        return F.softmax(self.decoder_bn[lang](theta @ self.betas[lang]), dim=1)

    def reconstruction_loss(self, theta: torch.Tensor, bow: torch.Tensor, lang: str) -> torch.Tensor:
        """``-sum_w x_w log x_hat_w`` per document (B,), the log-softmax read at the document's words only.

        With logits ``z`` of the decoder, ``log x_hat_w = z_w - logsumexp(z)``, so the loss is
        ``n * logsumexp(z) - sum_w x_w z_w`` (``n`` the document's length): the sum runs over the
        BoW's non-zeros instead of a dense (B, V) product, and no log of a softmax is taken. In
        training mode a sparse BoW goes through :func:`model.reconstruction.batchnorm_reconstruction_loss`,
        which computes the same loss and its gradient with fewer passes over the (B, V) logits.
        """
        if bow.is_sparse and self.training:
            return batchnorm_reconstruction_loss(theta, self.betas[lang], self.decoder_norm(lang), bow,
                                                 bf16=self.bf16_decoder)
        logits = self.decoder_bn[lang](theta @ self.betas[lang])
        if not bow.is_sparse:
            return -(bow * F.log_softmax(logits, dim=1)).sum(1)
        bow = bow.coalesce()
        docs, words = bow.indices()
        counts = bow.values()
        picked = logits.reshape(-1).index_select(0, docs * logits.shape[1] + words) * counts
        length = logits.new_zeros(len(logits)).index_add_(0, docs, counts)
        return length * torch.logsumexp(logits, dim=1) - logits.new_zeros(len(logits)).index_add(0, docs, picked)

    def topic_word(self, lang: str) -> torch.Tensor:
        """Topic-word distributions (K, V_l): what the decoder reconstructs for a document of topic k alone.

        That is ``softmax(BN(e_k @ beta))`` with the decoder's BatchNorm in eval mode (running
        statistics, learned per-word bias), the same transformation every reconstruction goes
        through. Reading ``beta`` without it ranks words by a per-word scale the loss never trains
        (BatchNorm divides each word's column by its spread). Used for top words, snapshots and
        drift; the beta alignment loss uses :meth:`aligned_topic_word`.
        """
        bn = self.decoder_norm(lang)
        logits = F.batch_norm(self.betas[lang], bn.running_mean, bn.running_var, bn.weight, bn.bias,
                              training=False, eps=bn.eps)
        return F.softmax(logits, dim=1)

    def aligned_topic_word(self, lang: str) -> torch.Tensor:
        """Softmax of the column-centred ``beta``: the topics the beta alignment loss compares.

        The decoder's BatchNorm removes any offset shared by a word's column across topics, so
        ``beta`` is defined only up to those offsets; the column-centred ``beta`` is the canonical
        representative, and it does not depend on running statistics, which lag the parameters.
        """
        beta = self.betas[lang]
        return F.softmax(beta - beta.mean(dim=0, keepdim=True), dim=1)

    def word_embeddings(self, lang: str) -> torch.Tensor:
        return getattr(self, f"word_embeddings_{lang}")

    # -- losses --------------------------------------------------------------------------------
    def _kl(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        var = logvar.exp()
        kl = 0.5 * ((var / self.prior_var + (mu - self.prior_mu) ** 2 / self.prior_var
                     + self.prior_var.log() - logvar).sum(1) - self.cfg.num_topics)
        return kl

    def cluster_loss(self, theta: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
        """Supervised contrastive loss on normalised thetas; anchors without a positive are skipped.

        Anchor i's term is ``log sum_{j != i} exp(s_ij / t) - log sum_{j positive} exp(s_ij / t)``
        with ``s`` the cosines. Both sums are taken from one ``exp((s - 1) / t)``: a cosine is at
        most 1 (the diagonal's), so that is the row's maximum taken out, as ``logsumexp`` does.
        """
        same = clusters[:, None] == clusters[None, :]
        has_pos = same.sum(dim=1) > 1
        if not bool(has_pos.any()):
            return theta.new_zeros(())
        z = F.normalize(theta, dim=1)
        scaled = torch.exp((z @ z.T - 1.0) / self.cfg.temperature)
        scaled = scaled.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), 0.0)
        tiny = torch.finfo(scaled.dtype).tiny   # an anchor's sums underflow only at a tiny temperature
        log_all = scaled.sum(dim=1).clamp_min(tiny).log()
        log_pos = (scaled * same).sum(dim=1).clamp_min(tiny).log()
        return (log_all - log_pos)[has_pos].mean()

    def infonce_loss(self, theta: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """Each document's projected theta should be closest to its own sentence embedding."""
        return self.infonce_many([theta], [embeddings])

    def infonce_many(self, thetas: list[torch.Tensor], embeddings: list[torch.Tensor]) -> torch.Tensor:
        """The sum over batches (one per language) of :meth:`infonce_loss`: the documents of a batch
        are each other's negatives. The projection runs once on the batches stacked, and batches of
        one size share one batched product of their logits."""
        sizes = [len(t) for t in thetas]
        p = F.normalize(self.theta_to_embedding(torch.cat(thetas)), dim=1)
        e = F.normalize(torch.cat(embeddings), dim=1)
        t, n, batches = self.cfg.nce_temperature, sizes[0], len(sizes)
        if sizes != [n] * batches:
            return torch.stack([F.cross_entropy(a @ b.T / t, torch.arange(len(a), device=a.device))
                                for a, b in zip(torch.split(p, sizes), torch.split(e, sizes))]).sum()
        logits = torch.bmm(p.view(batches, n, -1), e.view(batches, n, -1).transpose(1, 2)) / t
        target = torch.arange(n, device=p.device).repeat(batches)
        return F.cross_entropy(logits.view(-1, n), target, reduction="none").view(batches, n).mean(dim=1).sum()

    def _topic_vectors(self, lang: str) -> torch.Tensor:
        if self.cfg.beta_alignment == "learned_projection":
            return self.beta_projections[lang](self.betas[lang])
        if self.bf16_alignment:
            return matmul(self.aligned_topic_word(lang), self._word_embeddings_bf16(lang), bf16=True)
        return self.aligned_topic_word(lang) @ self.word_embeddings(lang)

    def _word_embeddings_bf16(self, lang: str) -> torch.Tensor:
        """``lang``'s word embeddings rounded to bfloat16, kept until the buffer is replaced or changed."""
        words = self.word_embeddings(lang)
        cached = self._bf16_word_embeddings.get(lang)
        if cached is None or cached[0] is not words or cached[1] != words._version:
            cached = (words, words._version, words.to(torch.bfloat16))
            self._bf16_word_embeddings[lang] = cached
        return cached[2]

    def beta_loss(self) -> torch.Tensor:
        """Topic k in language a vs topic k in language b, symmetric InfoNCE over all pairs."""
        langs = self.cfg.languages
        if self.cfg.beta_alignment == "none" or len(langs) < 2:
            return self.betas[langs[0]].new_zeros(())
        vecs = {lang: F.normalize(self._topic_vectors(lang), dim=1) for lang in langs}
        target = torch.arange(self.cfg.num_topics, device=vecs[langs[0]].device)
        total = []
        for a, b in combinations(langs, 2):
            logits = vecs[a] @ vecs[b].T / self.cfg.beta_temperature
            total.append(0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)))
        return torch.stack(total).mean()

    # -- forward -------------------------------------------------------------------------------
    def forward(self, batch: dict[str, dict[str, torch.Tensor]], beta_weight: float = 1.0) -> XTRAOutput:
        """``batch[lang]`` has ``bow`` (B_l, V_l), ``embedding`` (B_l, d), ``cluster`` (B_l,).

        Languages missing from the batch are skipped; a language needs >= 2 documents (BatchNorm).
        ``beta_weight`` scales ``lambda_beta`` for this call; at 0 the beta alignment, which does
        not depend on the batch, is not computed (a trainer that applies it every n-th step only
        passes 0 or n).
        """
        cfg = self.cfg
        loss = self.prior_mu.new_zeros(())
        parts: dict[str, float] = {}
        thetas, clusters, nce = {}, [], []
        encoded = self.encoder.forward_many([self.encoder_input(data["bow"], lang, data.get("embedding"))
                                             for lang, data in batch.items()])
        for (lang, data), (mu, logvar) in zip(batch.items(), encoded):
            bow, mu = data["bow"], self._anchored(mu, data.get("embedding"))
            theta = F.softmax(mu + torch.randn_like(mu) * torch.exp(0.5 * logvar), dim=1)
            recon = self.reconstruction_loss(theta, bow, lang)
            lang_loss = (recon + self._kl(mu, logvar)).mean()
            loss = loss + lang_loss
            parts[f"recon_kl_{lang}"] = float(lang_loss.detach())
            thetas[lang] = theta
            clusters.append(data["cluster"])
            if cfg.lambda_nce > 0 and "embedding" in data:
                nce.append((theta, data["embedding"]))
        all_theta = torch.cat(list(thetas.values()))
        if cfg.lambda_cluster > 0:
            l_cluster = self.cluster_loss(all_theta, torch.cat(clusters))
            loss = loss + cfg.lambda_cluster * l_cluster
            parts["cluster"] = float(l_cluster.detach())
        if nce:
            l_nce = self.infonce_many([t for t, _ in nce], [e for _, e in nce])
            loss = loss + cfg.lambda_nce * l_nce
            parts["infonce"] = float(l_nce.detach())
        if cfg.lambda_beta > 0 and beta_weight > 0:
            l_beta = self.beta_loss()
            loss = loss + beta_weight * cfg.lambda_beta * l_beta
            parts["beta"] = float(l_beta.detach())
        parts["total"] = float(loss.detach())
        if not math.isfinite(parts["total"]):
            raise FloatingPointError(f"XTRA loss is not finite: {parts}")
        return XTRAOutput(loss=loss, parts=parts, theta=thetas)

    # -- growing vocabularies (model/xtra_growth.py) ---------------------------------------------
    def remap_vocabulary(self, lang: str, old_to_new: np.ndarray, new_size: int,
                         new_word_embeddings: np.ndarray | None = None) -> dict[str, MomentRemap]:
        """Follow a vocabulary change of ``lang`` (:func:`model.xtra_growth.remap_vocabulary`)."""
        return xtra_growth.remap_vocabulary(self, lang, old_to_new, new_size, new_word_embeddings)

    def add_language(self, lang: str, vocab_size: int, beta: np.ndarray | None = None,
                     word_embeddings: np.ndarray | None = None) -> None:
        """Give a new language its own decoder (:func:`model.xtra_growth.add_language`)."""
        xtra_growth.add_language(self, lang, vocab_size, beta, word_embeddings)
