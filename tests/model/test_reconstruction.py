"""Specification of the decoder's fused reconstruction loss (model.reconstruction)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from xtream.model.reconstruction import batchnorm_reconstruction_loss

B, K, V = 16, 5, 40


def decoder(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.nn.BatchNorm1d, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    theta = torch.softmax(torch.randn(B, K, generator=g), dim=1).requires_grad_()
    beta = torch.randn(K, V, generator=g).requires_grad_()
    bn = torch.nn.BatchNorm1d(V)
    bn.weight.requires_grad_(False)
    with torch.no_grad():
        bn.bias.copy_(torch.randn(V, generator=g))
        bn.running_mean.copy_(torch.randn(V, generator=g))
    counts = torch.randint(1, 4, (B, V), generator=g).float()
    bow = torch.where(torch.rand(B, V, generator=g) < 0.2, counts, 0.0)
    bow[:, 0] += 1
    return theta, beta, bn, bow


def reference(theta, beta, bn, bow):
    return -(bow * F.log_softmax(bn(theta @ beta), dim=1)).sum(1)


def test_loss_gradients_and_running_statistics_are_those_of_batchnorm_and_log_softmax():
    theta, beta, bn, bow = decoder(0)
    theta_ref, beta_ref = theta.detach().clone().requires_grad_(), beta.detach().clone().requires_grad_()
    bn_ref = copy.deepcopy(bn)
    weights = torch.rand(B, generator=torch.Generator().manual_seed(1))   # a gradient that differs per document
    loss = batchnorm_reconstruction_loss(theta, beta, bn, bow.to_sparse())
    expected = reference(theta_ref, beta_ref, bn_ref, bow)
    (loss * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-4)
    for got, want in ((theta.grad, theta_ref.grad), (beta.grad, beta_ref.grad), (bn.bias.grad, bn_ref.bias.grad)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_mean, bn_ref.running_mean)
    torch.testing.assert_close(bn.running_var, bn_ref.running_var)
    assert int(bn.num_batches_tracked) == int(bn_ref.num_batches_tracked) == 1
    assert not torch.equal(bn.running_mean, decoder(0)[2].running_mean)   # the statistics did move


def test_the_same_inputs_give_bit_identical_losses_and_gradients():
    runs = []
    for _ in range(2):
        theta, beta, bn, bow = decoder(2)
        loss = batchnorm_reconstruction_loss(theta, beta, bn, bow.to_sparse())
        loss.mean().backward()
        runs.append((loss.detach(), theta.grad, beta.grad, bn.bias.grad, bn.running_var))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_a_second_backward_through_the_same_graph_is_refused():
    theta, beta, bn, bow = decoder(3)
    loss = batchnorm_reconstruction_loss(theta, beta, bn, bow.to_sparse()).mean()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="once"):
        loss.backward()


def test_a_batchnorm_weight_other_than_one_scales_the_normalised_logits():
    theta, beta, bn, bow = decoder(4)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(V, generator=torch.Generator().manual_seed(4)) + 0.5)
    theta_ref, beta_ref, bn_ref = theta.detach().clone().requires_grad_(), beta.detach().clone().requires_grad_(), \
        copy.deepcopy(bn)
    loss = batchnorm_reconstruction_loss(theta, beta, bn, bow.to_sparse())
    expected = reference(theta_ref, beta_ref, bn_ref, bow)
    loss.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(beta.grad, beta_ref.grad, rtol=1e-4, atol=1e-5)


def test_bfloat16_products_stay_close_to_float32_and_are_repeatable():
    runs = {}
    for bf16 in (False, True, True):
        theta, beta, bn, bow = decoder(5)
        loss = batchnorm_reconstruction_loss(theta, beta, bn, bow.to_sparse(), bf16=bf16)
        loss.mean().backward()
        got = (loss.detach(), theta.grad, beta.grad, bn.bias.grad, bn.running_var)
        if bf16 in runs:
            for a, b in zip(runs[bf16], got):
                assert torch.equal(a, b)
        runs[bf16] = got
    exact, rounded = runs[False], runs[True]
    assert not torch.equal(exact[0], rounded[0])   # the rounding did happen
    torch.testing.assert_close(rounded[0], exact[0], rtol=5e-3, atol=0.0)
    for a, b in zip(exact[1:3], rounded[1:3]):
        assert float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)) > 0.999
    torch.testing.assert_close(rounded[3], exact[3], rtol=0.05, atol=1e-3)
    # the batch variances come from the rounded product, accumulated in float32
    torch.testing.assert_close(rounded[4], exact[4], rtol=5e-3, atol=1e-6)
    assert not torch.equal(rounded[4], exact[4])
