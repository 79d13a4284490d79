"""The decoder's reconstruction loss of a training step, computed and differentiated in one piece.

For the logits ``z = theta @ beta`` (B x V), the decoder's BatchNorm in training mode
``y = (z - mean_b z) / std_b z * w + b`` and a bag of words ``x``, the loss of document ``i`` is
``-sum_w x_iw log softmax(y_i)_w = n_i * logsumexp(y_i) - sum_w x_iw y_iw`` (``n_i`` its length),
read at the document's non-zero words only. Its gradient with respect to ``y`` is
``n_i * softmax(y_i) - x_i``.

Autograd through ``logsumexp`` and a gather would recompute the softmax from ``y`` in backward,
scatter the gathered words into a zero-filled (B, V) tensor and add it to the softmax's gradient:
several extra passes over a B x V tensor, which is what a step spends most of its elementwise time
on. Here the forward keeps ``exp(y - max)`` and its row sums, the backward scales it in place and
subtracts the document's counts at their words, then goes through BatchNorm's backward and the two
products. The running statistics are updated as ``nn.BatchNorm1d`` updates them.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

__all__ = ["batchnorm_reconstruction_loss"]


class _BatchNormCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, theta: torch.Tensor, beta: torch.Tensor, bn_bias: torch.Tensor, bn: nn.BatchNorm1d,
                docs: torch.Tensor, words: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        z = theta @ beta
        tracked = bn.num_batches_tracked
        if bn.track_running_stats and tracked is not None:
            tracked.add_(1)
            factor = bn.momentum if bn.momentum is not None else 1.0 / float(tracked)
        else:
            factor = 0.0
        y, mean, invstd = torch.native_batch_norm(z, bn.weight, bn_bias, bn.running_mean, bn.running_var, True,
                                                  factor, bn.eps)
        flat = docs * y.shape[1] + words
        picked = y.reshape(-1).index_select(0, flat).mul_(counts)
        length = y.new_zeros(len(y)).index_add_(0, docs, counts)
        top = y.amax(dim=1, keepdim=True)
        exp = y.sub_(top).exp_()             # y is not needed again: its buffer holds exp(y - max)
        total = exp.sum(dim=1)
        lse = top.squeeze(1) + total.log()
        ctx.save_for_backward(theta, beta, z, exp, total, length, mean, invstd, flat, counts, docs)
        ctx.weight, ctx.eps, ctx.spent = bn.weight, bn.eps, False
        return length * lse - y.new_zeros(len(y)).index_add_(0, docs, picked)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if ctx.spent:
            raise RuntimeError("the reconstruction loss can be back-propagated once (its softmax is reused in place)")
        ctx.spent = True
        theta, beta, z, exp, total, length, mean, invstd, flat, counts, docs = ctx.saved_tensors
        grad_y = exp.mul_((grad * length / total)[:, None])   # n * softmax(y), scaled by the incoming gradient
        grad_y.view(-1).index_add_(0, flat, (grad.index_select(0, docs) * counts).neg_())
        grad_z, _, grad_bias = torch.ops.aten.native_batch_norm_backward(
            grad_y, z, ctx.weight, None, None, mean, invstd, True, ctx.eps,
            [True, False, ctx.needs_input_grad[2]])
        grad_theta = grad_z @ beta.T if ctx.needs_input_grad[0] else None
        grad_beta = theta.T @ grad_z if ctx.needs_input_grad[1] else None
        return grad_theta, grad_beta, grad_bias, None, None, None, None


def batchnorm_reconstruction_loss(theta: torch.Tensor, beta: torch.Tensor, bn: nn.BatchNorm1d,
                                  bow: torch.Tensor) -> torch.Tensor:
    """``-sum_w x_w log softmax(bn(theta @ beta))_w`` per document (B,), ``bn`` in training mode.

    ``bow`` is a sparse COO (B, V) tensor. The loss, its gradients with respect to ``theta``,
    ``beta`` and ``bn.bias``, and the update of ``bn``'s running statistics are those of
    ``nn.BatchNorm1d`` followed by ``log_softmax``, up to rounding. Its backward may run once
    (the saved softmax is scaled in place).
    """
    bow = bow.coalesce()
    docs, words = bow.indices()
    loss = _BatchNormCrossEntropy.apply(theta, beta, bn.bias, bn, docs, words, bow.values())  # type: ignore[no-untyped-call]
    return cast(torch.Tensor, loss)
