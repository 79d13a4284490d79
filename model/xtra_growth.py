"""Growing an XTRA network: a language's vocabulary remapped, a new language added.

Both rebuild per-word tensors in place; the trainer then rebuilds its optimizer, carrying the
moments of a remapped tensor through the same remap (:func:`remap_vocabulary` returns them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from torch import nn

from xtream.model.xtra_parts import Dropout, WordProjection, remap_index

if TYPE_CHECKING:
    from xtream.model.xtra import XTRA

__all__ = ["MomentRemap", "add_language", "remap_vocabulary"]

#: Remaps a tensor shaped like a parameter before a vocabulary change to its shape after.
MomentRemap = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def remap_vocabulary(net: XTRA, lang: str, old_to_new: np.ndarray, new_size: int,
                     new_word_embeddings: np.ndarray | None = None) -> dict[str, MomentRemap]:
    """Follow a vocabulary change of ``lang``: keep surviving words' parameters, start new ones neutral.

    ``old_to_new[i]`` is word i's new index or -1 if retired. Every per-word tensor (projection
    columns, beta columns, decoder BatchNorm statistics, word embeddings) is rebuilt at
    ``new_size``. New words start with zero projection weight, the mean beta value of their topic
    and neutral BN statistics, so adding a word does not perturb existing thetas.

    Returns, for each trainable parameter rebuilt, by its name in ``net``, the function that remaps
    a tensor of its old shape the same way (zero for new words): Adam's moments follow their words.
    """
    old_to_new = np.asarray(old_to_new, dtype=np.int64)
    keep_old = torch.as_tensor(np.flatnonzero(old_to_new >= 0))
    keep_new = torch.as_tensor(old_to_new[old_to_new >= 0])

    def remap(t: torch.Tensor, dim: int, fill: torch.Tensor | float) -> torch.Tensor:
        return remap_index(t, dim, new_size, keep_old, keep_new, fill)

    def moments(dim: int) -> MomentRemap:
        return lambda t: remap(t, dim, 0.0)

    remaps = {f"betas.{lang}": moments(1), f"decoder_bn.{lang}.bias": moments(0)}

    if lang in net.projections:
        lin = cast(WordProjection, cast(nn.Sequential, net.projections[lang])[0])
        new_lin = WordProjection(new_size, lin.out_features).to(lin.word_weight.device)
        new_lin.word_weight.copy_(remap(lin.word_weight, 0, 0.0))
        new_lin.bias.copy_(lin.bias)
        cast(nn.Sequential, net.projections[lang])[0] = new_lin
        remaps[f"projections.{lang}.0.word_weight"] = moments(0)
    beta = net.betas[lang]
    net.betas[lang] = nn.Parameter(remap(beta.data, 1, beta.data.mean(1, keepdim=True)))
    bn, new_bn = net.decoder_norm(lang), nn.BatchNorm1d(new_size).to(beta.device)
    new_bn.weight.requires_grad_(False)
    new_bn.bias.copy_(remap(bn.bias.data, 0, 0.0))
    for name in ("running_mean", "running_var"):   # buffers of a BatchNorm that tracks statistics
        old = cast(torch.Tensor, getattr(bn, name))
        cast(torch.Tensor, getattr(new_bn, name)).copy_(remap(old, 0, float(old.mean())))
    cast(torch.Tensor, new_bn.num_batches_tracked).copy_(cast(torch.Tensor, bn.num_batches_tracked))
    net.decoder_bn[lang] = new_bn
    emb = net.word_embeddings(lang)
    new_emb = remap(emb, 0, 0.0)
    if new_word_embeddings is not None:
        fresh = torch.as_tensor(new_word_embeddings, dtype=emb.dtype)
        if fresh.shape != new_emb.shape:
            raise ValueError(f"new_word_embeddings must be {tuple(new_emb.shape)}, got {tuple(fresh.shape)}")
        new_emb = fresh
    net.register_buffer(f"word_embeddings_{lang}", new_emb)
    if net.cfg.beta_alignment == "learned_projection":
        plin = cast(nn.Linear, cast(nn.Sequential, net.beta_projections[lang])[0])
        new_plin = nn.Linear(new_size, plin.out_features).to(plin.weight.device)
        new_plin.weight.copy_(remap(plin.weight, 1, 0.0))
        new_plin.bias.copy_(plin.bias)
        cast(nn.Sequential, net.beta_projections[lang])[0] = new_plin
        remaps[f"beta_projections.{lang}.0.weight"] = moments(1)
    net.cfg.vocab_sizes[lang] = new_size
    return remaps


@torch.no_grad()
def add_language(net: XTRA, lang: str, vocab_size: int, beta: np.ndarray | None = None,
                 word_embeddings: np.ndarray | None = None) -> None:
    """Give a language first seen after training started its own projection and decoder."""
    if lang in net.cfg.vocab_sizes:
        raise ValueError(f"language {lang!r} already exists")
    cfg = net.cfg
    device = net.prior_mu.device
    if cfg.encoder_input != "embedding":
        net.projections[lang] = net.new_word_projection(vocab_size).to(device)
    init = torch.randn(cfg.num_topics, vocab_size) * 0.02 if beta is None else torch.as_tensor(beta).float()
    net.betas[lang] = nn.Parameter(init.to(device))
    bn = nn.BatchNorm1d(vocab_size).to(device)
    bn.weight.requires_grad_(False)
    net.decoder_bn[lang] = bn
    if cfg.beta_alignment == "learned_projection":
        net.beta_projections[lang] = nn.Sequential(nn.Linear(vocab_size, cfg.beta_projection_dim),
                                                    Dropout(cfg.dropout)).to(device)
    emb = torch.zeros(vocab_size, cfg.word_embedding_dim) if word_embeddings is None \
        else torch.as_tensor(word_embeddings).float()
    net.register_buffer(f"word_embeddings_{lang}", emb.to(device))
    cfg.vocab_sizes[lang] = vocab_size
    cfg.languages = sorted(cfg.vocab_sizes)
