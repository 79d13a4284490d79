"""The decoder's reconstruction loss of a training step, computed and differentiated in one piece.

For the logits ``z = theta @ beta`` (B x V), the decoder's BatchNorm in training mode
``y = (z - mean_b z) / std_b z * w + b`` and a bag of words ``x``, the loss of document ``i`` is
``-sum_w x_iw log softmax(y_i)_w = n_i * logsumexp(y_i) - sum_w x_iw y_iw`` (``n_i`` its length),
read at the document's non-zero words only. Its gradient with respect to ``y`` is
``n_i * softmax(y_i) - x_i``.

The batch is centred in topic space: ``z - mean_b z = c @ beta`` with ``c = theta - mean_b theta``,
so the product ``u = c @ beta`` needs no column means over B x V, its column variances are
``mean_b u^2`` and ``y = u * s + b`` with ``s = w / sqrt(var + eps)``. The forward keeps ``u`` and
the softmax of ``y``; the backward scales the softmax in place into the gradient with respect to
``y``, turns it in place into the gradient with respect to ``u`` (through ``s`` and the variances)
and differentiates the two products. The running statistics are updated as ``nn.BatchNorm1d``
updates them.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from xtream.model.precision import operand

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


def _product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` in float32 (bfloat16 operands accumulate in float32; the result is widened)."""
    return (a @ b).float()


class _BatchNormCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, theta: torch.Tensor, beta: torch.Tensor, bn_bias: torch.Tensor, bn: nn.BatchNorm1d,
                docs: torch.Tensor, words: torch.Tensor, counts: torch.Tensor, bf16: bool) -> torch.Tensor:
        n = len(theta)
        mean_theta = theta.mean(dim=0)
        centred = operand(theta - mean_theta, bf16)
        beta_op = operand(beta, bf16)
        u = _product(centred, beta_op)
        var = u.square().mean(dim=0)
        _update_running_statistics(bn, mean_theta @ beta, var, n)
        scale = torch.rsqrt(var + bn.eps)
        if bn.weight is not None:
            scale.mul_(bn.weight)
        y = torch.addcmul(bn_bias, u, scale)
        flat = docs * y.shape[1] + words
        picked = y.reshape(-1).index_select(0, flat).mul_(counts)
        length = y.new_zeros(n).index_add_(0, docs, counts)
        top = y.amax(dim=1)
        softmax = torch.softmax(y, dim=1)
        lse = top - softmax.amax(dim=1).log()   # the largest probability is exp(max - logsumexp)
        ctx.save_for_backward(beta_op, centred, u, var, scale, softmax, length, flat, counts, docs)
        ctx.eps, ctx.bf16, ctx.spent = bn.eps, bf16, False
        return length * lse - y.new_zeros(n).index_add_(0, docs, picked)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if ctx.spent:
            raise RuntimeError("the reconstruction loss can be back-propagated once (its softmax is reused in place)")
        ctx.spent = True
        beta_op, centred, u, var, scale, softmax, length, flat, counts, docs = ctx.saved_tensors
        grad_y = softmax.mul_((grad * length)[:, None])   # n * softmax(y), scaled by the incoming gradient
        grad_y.view(-1).index_add_(0, flat, (grad.index_select(0, docs) * counts).neg_())
        grad_bias = grad_y.sum(dim=0) if ctx.needs_input_grad[2] else None
        if not (ctx.needs_input_grad[0] or ctx.needs_input_grad[1]):
            return None, None, grad_bias, None, None, None, None, None
        # y = u * s + b, s = w * (var + eps)^-1/2, var = mean_b u^2
        grad_var = (grad_y * u).sum(dim=0).mul_(scale).div_(var + ctx.eps).mul_(-0.5)
        grad_u = operand(grad_y.mul_(scale).addcmul_(u, grad_var, value=2.0 / len(u)), ctx.bf16)
        grad_beta = _product(centred.T, grad_u) if ctx.needs_input_grad[1] else None
        grad_theta = None
        if ctx.needs_input_grad[0]:
            grad_centred = _product(grad_u, beta_op.T)
            grad_theta = grad_centred - grad_centred.mean(dim=0)
        return grad_theta, grad_beta, grad_bias, None, None, None, None, None


def batchnorm_reconstruction_loss(theta: torch.Tensor, beta: torch.Tensor, bn: nn.BatchNorm1d,
                                  bow: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """``-sum_w x_w log softmax(bn(theta @ beta))_w`` per document (B,), ``bn`` in training mode.

    ``bow`` is a sparse COO (B, V) tensor. The loss, its gradients with respect to ``theta``,
    ``beta`` and ``bn.bias``, and the update of ``bn``'s running statistics are those of
    ``nn.BatchNorm1d`` followed by ``log_softmax``, up to rounding. Its backward may run once
    (the saved softmax is scaled in place). With ``bf16`` the three products over the vocabulary
    take bfloat16 operands and accumulate in float32; the topic proportions are centred in float32
    before they are rounded, and everything after the products stays in float32.
    """
    bow = bow.coalesce()
    docs, words = bow.indices()
    loss = _BatchNormCrossEntropy.apply(theta, beta, bn.bias, bn, docs, words, bow.values(), bf16)  # type: ignore[no-untyped-call]
    return cast(torch.Tensor, loss)
