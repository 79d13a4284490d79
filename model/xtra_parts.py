"""Building blocks of :mod:`model.xtra`: the data-driven initialisation (prior from cluster sizes,
beta from cluster words), word projections with sparse row gradients, dropout, and the encoder
shared by all languages."""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from xtream.model.precision import linear

__all__ = ["Dropout", "SharedEncoder", "WordProjection", "dirichlet_laplace_prior", "init_beta_from_clusters",
           "remap_index"]


def dirichlet_laplace_prior(cluster_sizes: np.ndarray, concentration: float = 1.0,
                            floor: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the logistic-normal Laplace approximation of Dir(alpha).

    ``alpha_k = K * concentration * share_k``: big clusters expect more mass. With equal shares
    this is the usual ProdLDA prior for ``alpha = concentration``.
    """
    sizes = np.asarray(cluster_sizes, dtype=np.float64)
    k = len(sizes)
    share = np.maximum(sizes / max(sizes.sum(), 1e-12), floor)
    share /= share.sum()
    alpha = k * concentration * share
    log_alpha = np.log(alpha)
    mu = log_alpha - log_alpha.mean()
    var = (1.0 / alpha) * (1.0 - 2.0 / k) + (1.0 / k**2) * np.sum(1.0 / alpha)
    return mu.astype(np.float32), var.astype(np.float32)


def init_beta_from_clusters(bow: Any, clusters: np.ndarray, num_topics: int) -> np.ndarray:
    """Cluster-wise word distributions, idf-weighted, z-scored per topic (K x V).

    ``bow`` is a (n, V) scipy sparse or dense count matrix. Starting beta here makes topic k begin
    as cluster k's distinctive words, which is what ties topic ids to clusters across languages.
    """
    import scipy.sparse as sp

    x = sp.csr_matrix(bow, dtype=np.float64)
    n, v = x.shape
    onehot = sp.csr_matrix((np.ones(n), (np.asarray(clusters), np.arange(n))), shape=(num_topics, n))
    sums = np.asarray((onehot @ x).todense())
    df = np.asarray((x > 0).sum(axis=0)).ravel()
    idf = np.log((1.0 + n) / (1.0 + df)) + 1.0
    dist = sums / np.maximum(sums.sum(axis=1, keepdims=True), 1e-12) * idf
    dist /= np.maximum(dist.sum(axis=1, keepdims=True), 1e-12)
    z = (dist - dist.mean(axis=1, keepdims=True)) / np.maximum(dist.std(axis=1, keepdims=True), 1e-12)
    # Centre every word's column across topics: the decoder's BatchNorm makes per-word offsets
    # invisible to the loss, so an offset set here would never be trained away and would put the
    # corpus' common words at the top of every topic.
    return (z - z.mean(axis=0, keepdims=True)).astype(np.float32)


class _SparseRowsProduct(torch.autograd.Function):
    """``bow @ weight`` for a sparse COO ``bow``, with a deterministic weight gradient.

    Forward sums the rows of each document's words (``embedding_bag``). The gradient is
    ``bow.T @ grad`` as a sparse-dense product over the words the batch contains only, whose
    summation order is fixed; ``embedding_bag``'s own backward sorts indices and can sum a word's
    contributions in a different order from run to run, which breaks the bit-for-bit reproducibility
    that checkpoint replay relies on. With ``sparse_grad`` the gradient is returned as a sparse COO
    tensor of those rows (for :class:`model.sparse_adam.LazyAdam`); otherwise the rows are scattered
    into a dense (V, P) gradient with zeros for absent words.
    """

    @staticmethod
    def forward(ctx: Any, bow: torch.Tensor, weight: torch.Tensor, sparse_grad: bool) -> torch.Tensor:
        rows, cols = bow.indices()
        offsets = torch.searchsorted(rows, torch.arange(bow.shape[0] + 1, device=rows.device))
        ctx.bow = bow   # transposed in backward only: inference never pays for it
        ctx.sparse_grad = sparse_grad
        return F.embedding_bag(cols, weight, offsets, mode="sum", per_sample_weights=bow.values(),
                               include_last_offset=True)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        bow_t = ctx.bow.t().coalesce()
        words, docs = bow_t.indices()
        present, row = torch.unique_consecutive(words, return_inverse=True)
        compact = torch.sparse_coo_tensor(torch.stack([row, docs]), bow_t.values(), (len(present), grad.shape[0]),
                                          is_coalesced=True, check_invariants=False)
        rows = torch.sparse.mm(compact, grad)
        shape = (ctx.bow.shape[1], grad.shape[1])
        if ctx.sparse_grad:
            return None, torch.sparse_coo_tensor(present[None], rows, shape, is_coalesced=True,
                                                 check_invariants=False), None
        out = grad.new_zeros(shape)
        out[present] = rows
        return None, out, None


class WordProjection(nn.Module):
    """``Linear(V, P)`` over a Bag-of-Words, stored one row per word: ``h = x @ weight + bias``.

    A BoW row has a few dozen non-zeros out of thousands of words, so the product is a weighted sum
    of the rows of the document's words: the forward costs O(non-zeros x P) instead of O(V x P),
    and no transposed copy of a V x P gradient is made. Rows also make a growing vocabulary an
    append.

    ``sparse_grad`` (an attribute, not state; a trainer with a row-wise optimizer sets it for its
    step) makes the gradient of ``word_weight`` a sparse COO tensor of the rows of the batch's
    words, for an optimizer that updates only those rows.
    """

    def __init__(self, in_features: int, out_features: int, sparse_grad: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.sparse_grad = sparse_grad
        bound = 1.0 / math.sqrt(in_features)   # nn.Linear's default initialisation
        self.word_weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))

    def forward(self, bow: torch.Tensor) -> torch.Tensor:
        if not bow.is_sparse:
            return bow @ self.word_weight + self.bias
        product = _SparseRowsProduct.apply(bow.coalesce(), self.word_weight, self.sparse_grad)  # type: ignore[no-untyped-call]
        return cast(torch.Tensor, product) + self.bias

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # Models saved before this layout held an nn.Linear here: ``weight`` is (P, V).
        old = state_dict.pop(prefix + "weight", None)
        if old is not None and prefix + "word_weight" not in state_dict:
            state_dict[prefix + "word_weight"] = old.T.contiguous()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


_DROPOUT_LEVELS = 2**15   # a dropout mask's resolution: 15 random bits per unit


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose mask is cut from random integers: four 15-bit draws out of each 64-bit one.

    A unit is dropped when its 15 bits fall under ``round(p * 2**15)``, so the drop rate is ``p``
    to within 2**-16, and kept units are scaled by the inverse of the exact keep rate, so the
    expectation of the output is the input. On CPU one 64-bit integer costs about what one uniform
    float of ``torch.rand`` does, so this draws a quarter of the random numbers ``F.dropout`` would.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        threshold = round(self.p * _DROPOUT_LEVELS)
        if threshold >= _DROPOUT_LEVELS:
            return x * 0.0
        n = x.numel()
        draws = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_()   # 63 random bits each
        bits = draws.view(torch.int16)[:n].view(x.shape).bitwise_and_(_DROPOUT_LEVELS - 1)
        keep = (bits >= threshold).to(x.dtype).mul_(_DROPOUT_LEVELS / (_DROPOUT_LEVELS - threshold))
        return x * keep


class SharedEncoder(nn.Module):
    """Projected BoW (B, P) -> (mu, logvar), each (B, K), batch-normalised as in ProdLDA.

    ``bf16`` (an attribute, not state) rounds the inputs of the two hidden layers' products to
    bfloat16 (:func:`model.precision.linear`); the outputs are float32.
    """

    def __init__(self, in_features: int, units: int, num_topics: int, dropout: float, bf16: bool = False) -> None:
        super().__init__()
        self.bf16 = bf16
        self.fc1 = nn.Linear(in_features, units)
        self.fc2 = nn.Linear(units, units)
        self.drop = Dropout(dropout)
        self.mu = nn.Linear(units, num_topics)
        self.logvar = nn.Linear(units, num_topics)
        self.mu_bn = nn.BatchNorm1d(num_topics)
        self.logvar_bn = nn.BatchNorm1d(num_topics)
        for bn in (self.mu_bn, self.logvar_bn):
            bn.weight.requires_grad_(False)   # scale fixed at 1: BN only centres, as in ProdLDA

    def hidden(self, h: torch.Tensor) -> torch.Tensor:
        """The two softplus layers and dropout; their products in bfloat16 when ``self.bf16``."""
        h = F.softplus(linear(F.softplus(linear(h, self.fc1, self.bf16)), self.fc2, self.bf16))
        return cast(torch.Tensor, self.drop(h))

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(h)
        return self.mu_bn(self.mu(h)), self.logvar_bn(self.logvar(h))

    def forward_many(self, hs: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`forward` of several batches: the layers run once on them stacked (fewer, larger
        products), the BatchNorms on each batch apart, in order, as separate calls would."""
        if len(hs) == 1:
            return [self(hs[0])]
        h = self.hidden(torch.cat(hs))
        mus, logvars = self.mu(h).split([len(x) for x in hs]), self.logvar(h).split([len(x) for x in hs])
        return [(self.mu_bn(mu), self.logvar_bn(logvar)) for mu, logvar in zip(mus, logvars)]


def remap_index(t: torch.Tensor, dim: int, new_size: int, keep_old: torch.Tensor, keep_new: torch.Tensor,
                fill: torch.Tensor | float) -> torch.Tensor:
    """``t`` resized to ``new_size`` along ``dim``: entry ``keep_old[i]`` moves to ``keep_new[i]``,
    every other entry is ``fill`` (a scalar, or a tensor broadcast to the new shape)."""
    shape = list(t.shape)
    shape[dim] = new_size
    out = torch.empty(shape, dtype=t.dtype, device=t.device)
    if isinstance(fill, torch.Tensor):
        out.copy_(fill.expand(shape))
    else:
        out.fill_(fill)
    out.index_copy_(dim, keep_new.to(t.device), t.index_select(dim, keep_old.to(t.device)))
    return out
