"""Adam that updates only the rows a sparse gradient names (lazy Adam, as word-embedding trainers use).

A word's row of a projection gets a gradient only when a document of the batch contains the word.
Dense Adam would still walk every row every step (read the parameter, its gradient and both moments,
write three of them back) to decay the moments of words the batch never saw. Lazy Adam leaves such
rows alone: their moments and values stay where they were until the word shows up again, which is
what ``tf.keras``' LazyAdam and ``torch.optim.SparseAdam`` do. Dense gradients go through torch's
own (fused) Adam kernel unchanged, so one optimizer serves a model with both kinds of parameter.

The state has Adam's layout (``step``, ``exp_avg``, ``exp_avg_sq`` per parameter, full size), so
checkpoints written by ``torch.optim.Adam`` load into it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.optim.adam import adam

__all__ = ["LazyAdam", "clip_grad_norm", "clip_scale"]


class LazyAdam(torch.optim.Optimizer):
    """Adam for dense gradients, lazy row-wise Adam for sparse COO gradients of shape (rows, ...).

    Parameters
    ----------
    params
        Parameters or parameter groups, as for any torch optimizer.
    lr, betas, eps
        Adam's settings; there is no weight decay, no amsgrad.

    A sparse gradient holds whole rows (``sparse_dim == 1``). The bias correction of a touched row
    uses the optimizer's step count, not the number of times the row was touched.
    """

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:
        if lr < 0 or eps < 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid Adam settings lr={lr} betas={betas} eps={eps}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    def _state(self, p: torch.Tensor) -> dict[str, Any]:
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    @torch.no_grad()
    def step(self, closure: None = None, grad_scale: torch.Tensor | None = None) -> None:  # type: ignore[override]
        """One update. ``grad_scale`` (a scalar tensor, e.g. from :func:`clip_scale`) divides every
        gradient inside the update, which spares a separate pass that scales them first."""
        if closure is not None:
            raise ValueError("LazyAdam does not take a closure")
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            dense: list[list[torch.Tensor]] = [[], [], [], [], []]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self._state(p)
                if p.grad.is_sparse:
                    _sparse_update(p, p.grad, state, lr, beta1, beta2, eps, grad_scale)
                else:
                    for bucket, t in zip(dense, (p, p.grad, state["exp_avg"], state["exp_avg_sq"], state["step"])):
                        bucket.append(t)
            if dense[0]:
                params, grads, exp_avgs, exp_avg_sqs, steps = dense
                adam(params, grads, exp_avgs, exp_avg_sqs, [], steps, fused=True, grad_scale=grad_scale,
                     amsgrad=False, beta1=beta1, beta2=beta2, lr=lr, weight_decay=0.0, eps=eps, maximize=False)


def _sparse_update(p: torch.Tensor, grad: torch.Tensor, state: dict[str, Any], lr: float, beta1: float, beta2: float,
                   eps: float, grad_scale: torch.Tensor | None) -> None:
    """Adam on the rows ``grad`` names; the other rows, and their moments, are left as they are.

    The touched rows' moments are gathered and updated by torch's fused Adam kernel, which writes
    the step into a zero tensor that is then added to the rows (one pass over the parameter instead
    of a gather and a scatter). Elementwise ``torch.sqrt`` is avoided: it is much slower on exact
    zeros than on other values, and the columns of units a ReLU switched off hold zero moments.
    """
    rows, g = grad._indices()[0], grad._values()
    if not grad.is_coalesced() and not bool((rows[1:] > rows[:-1]).all()):
        grad = grad.coalesce()   # repeated rows (a gradient accumulated over several uses) are summed
        rows, g = grad.indices()[0], grad.values()
    m = state["exp_avg"].index_select(0, rows)
    v = state["exp_avg_sq"].index_select(0, rows)
    delta = torch.zeros_like(m)
    adam([delta], [g], [m], [v], [], [state["step"]], fused=True, grad_scale=grad_scale, amsgrad=False,
         beta1=beta1, beta2=beta2, lr=lr, weight_decay=0.0, eps=eps, maximize=False)
    p.index_add_(0, rows, delta)
    state["exp_avg"].index_copy_(0, rows, m)
    state["exp_avg_sq"].index_copy_(0, rows, v)


@torch.no_grad()
def clip_grad_norm(params: list[torch.Tensor], max_norm: float) -> float:
    """Scale the gradients, dense or sparse, so that their joint L2 norm is at most ``max_norm``.

    ``torch.nn.utils.clip_grad_norm_`` with sparse gradients taken by their stored values (the rows
    they leave out are zeros). Norms are summed in the order of ``params``, so the result depends
    only on the gradients, not on how torch groups tensors.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norms = [torch.linalg.vector_norm(g._values() if g.is_sparse else g) for g in grads]
    total = torch.linalg.vector_norm(torch.stack(norms))
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        (g._values() if g.is_sparse else g).mul_(coef)
    return float(total)


@torch.no_grad()
def clip_scale(params: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """What :func:`clip_grad_norm` would divide the gradients by, without touching them.

    ``max(1, (norm + 1e-6) / max_norm)`` for the joint L2 norm of the gradients (dense or sparse,
    summed in the order of ``params``): pass it as ``LazyAdam.step(grad_scale=...)`` to clip inside
    the update.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.ones(())
    norms = [torch.linalg.vector_norm(g._values() if g.is_sparse else g) for g in grads]
    total = torch.linalg.vector_norm(torch.stack(norms))
    return torch.clamp((total + 1e-6) / max_norm, min=1.0)
