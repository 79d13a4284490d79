"""The decoder's reconstruction loss of a training step, computed and differentiated in one piece.

For the logits ``z = theta @ beta`` (B x V), the decoder's BatchNorm in training mode
``y = (z - mean_b z) / std_b z * w + b`` and a bag of words ``x``, the loss of document ``i`` is
``-sum_w x_iw log softmax(y_i)_w = n_i * logsumexp(y_i) - sum_w x_iw y_iw`` (``n_i`` its length),
read at the document's non-zero words only. Its gradient with respect to ``y`` is
``n_i * softmax(y_i) - x_i``.

BatchNorm is computed in topic space: with ``c = theta - mean_b theta`` and ``C = c^T c / B`` (K x K),
the batch mean of ``z``'s column ``v`` is ``mean_b(theta) @ beta_v`` and its variance
``beta_v^T C beta_v``, so ``y = c @ (beta * s) + b`` with ``s = w / sqrt(var + eps)``. The only
passes over a B x V tensor are the product, the softmax and its gradient; BatchNorm's own column
reductions over the B x V logits (forward and backward) are replaced by K x V work. The forward
keeps ``exp(y - max)`` and its row sums; the backward scales that buffer in place into the
gradient with respect to ``y`` and differentiates the rest by hand. The running statistics are
updated as ``nn.BatchNorm1d`` updates them.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from xtream.model.precision import matmul

__all__ = ["batchnorm_reconstruction_loss"]


def _update_running_statistics(bn: nn.BatchNorm1d, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
    """What ``nn.BatchNorm1d`` in training mode does to its running statistics, given the batch's
    mean and biased variance of each feature."""
    tracked = bn.num_batches_tracked
    if not bn.track_running_stats or tracked is None or bn.running_mean is None or bn.running_var is None:
        return
    tracked.add_(1)
    factor = bn.momentum if bn.momentum is not None else 1.0 / float(tracked)
    bn.running_mean.mul_(1.0 - factor).add_(mean, alpha=factor)
    bn.running_var.mul_(1.0 - factor).add_(var, alpha=factor * n / max(n - 1, 1))


class _BatchNormCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, theta: torch.Tensor, beta: torch.Tensor, bn_bias: torch.Tensor, bn: nn.BatchNorm1d,
                docs: torch.Tensor, words: torch.Tensor, counts: torch.Tensor, bf16: bool) -> torch.Tensor:
        n = len(theta)
        mean_theta = theta.mean(dim=0)
        centred = theta - mean_theta
        cov = centred.T @ centred / n
        cov_beta = cov @ beta
        var = (cov_beta * beta).sum(dim=0)
        scale = torch.rsqrt(var + bn.eps)
        if bn.weight is not None:
            scale.mul_(bn.weight)
        _update_running_statistics(bn, mean_theta @ beta, var, n)
        weights = beta * scale
        y = matmul(centred, weights, bf16).add_(bn_bias)
        flat = docs * y.shape[1] + words
        picked = y.reshape(-1).index_select(0, flat).mul_(counts)
        length = y.new_zeros(n).index_add_(0, docs, counts)
        top = y.amax(dim=1, keepdim=True)
        exp = y.sub_(top).exp_()             # y is not needed again: its buffer holds exp(y - max)
        total = exp.sum(dim=1)
        lse = top.squeeze(1) + total.log()
        ctx.save_for_backward(beta, centred, cov_beta, var, scale, weights, exp, total, length, flat, counts, docs)
        ctx.eps, ctx.bf16, ctx.spent = bn.eps, bf16, False
        return length * lse - y.new_zeros(n).index_add_(0, docs, picked)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if ctx.spent:
            raise RuntimeError("the reconstruction loss can be back-propagated once (its softmax is reused in place)")
        ctx.spent = True
        beta, centred, cov_beta, var, scale, weights, exp, total, length, flat, counts, docs = ctx.saved_tensors
        grad_y = exp.mul_((grad * length / total)[:, None])   # n * softmax(y), scaled by the incoming gradient
        grad_y.view(-1).index_add_(0, flat, (grad.index_select(0, docs) * counts).neg_())
        grad_bias = grad_y.sum(dim=0) if ctx.needs_input_grad[2] else None
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return None, None, grad_bias, None, None, None, None, None
        grad_weights = matmul(centred.T, grad_y, ctx.bf16)
        # y = c @ (beta * s) + b, s = w * (var + eps)^-1/2, var = sum_k (C @ beta) * beta
        grad_var = (grad_weights * beta).sum(dim=0).mul_(scale).div_(var + ctx.eps).mul_(-0.5)
        grad_beta = grad_weights.mul_(scale).add_(cov_beta * (2.0 * grad_var))
        grad_theta = None
        if ctx.needs_input_grad[0]:
            grad_cov = (beta * grad_var) @ beta.T
            grad_centred = torch.addmm(matmul(grad_y, weights.T, ctx.bf16), centred, grad_cov, alpha=2.0 / len(centred))
            grad_theta = grad_centred - grad_centred.mean(dim=0)
        return grad_theta, grad_beta if ctx.needs_input_grad[1] else None, grad_bias, None, None, None, None, None


def batchnorm_reconstruction_loss(theta: torch.Tensor, beta: torch.Tensor, bn: nn.BatchNorm1d,
                                  bow: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """``-sum_w x_w log softmax(bn(theta @ beta))_w`` per document (B,), ``bn`` in training mode.

    ``bow`` is a sparse COO (B, V) tensor. The loss, its gradients with respect to ``theta``,
    ``beta`` and ``bn.bias``, and the update of ``bn``'s running statistics are those of
    ``nn.BatchNorm1d`` followed by ``log_softmax``, up to rounding. Its backward may run once
    (the saved softmax is scaled in place). With ``bf16`` the three products over the vocabulary
    round their inputs to bfloat16 (:func:`model.precision.matmul`); the batch statistics stay in
    float32, and the topic proportions are centred before they are rounded.
    """
    bow = bow.coalesce()
    docs, words = bow.indices()
    loss = _BatchNormCrossEntropy.apply(theta, beta, bn.bias, bn, docs, words, bow.values(), bf16)  # type: ignore[no-untyped-call]
    return cast(torch.Tensor, loss)
