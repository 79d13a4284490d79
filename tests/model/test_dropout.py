"""Specification of XTRA's dropout (model.xtra.Dropout): nn.Dropout's distribution from cheaper random bits."""

from __future__ import annotations

import pytest
import torch

from xtream.model.xtra import Dropout


@pytest.mark.parametrize("p", [0.2, 0.5, 0.05])
def test_units_are_dropped_at_rate_p_and_the_expectation_is_the_input(p):
    torch.manual_seed(0)
    x = torch.full((400, 1000), 3.0)
    y = Dropout(p).train()(x)
    dropped = float((y == 0).float().mean())
    assert dropped == pytest.approx(p, abs=0.004)   # 400,000 units: the binomial spread is about 0.0008
    assert float(y.mean()) == pytest.approx(3.0, rel=0.005)
    kept = y[y != 0]
    assert torch.allclose(kept, kept[0]) and float(kept[0]) == pytest.approx(3.0 / (1 - p), rel=1e-4)


def test_masks_are_independent_across_units_and_draws():
    torch.manual_seed(1)
    drop = Dropout(0.5).train()
    a, b = (drop(torch.ones(200, 1000)) == 0).float(), (drop(torch.ones(200, 1000)) == 0).float()
    assert abs(float(((a - a.mean()) * (b - b.mean())).mean())) < 0.005       # two calls
    neighbours = ((a[:, :-1] - 0.5) * (a[:, 1:] - 0.5)).mean()                  # units cut from one 64-bit draw
    assert abs(float(neighbours)) < 0.005


def test_eval_mode_and_p_zero_return_the_input_and_p_one_drops_everything():
    x = torch.randn(8, 5)
    assert Dropout(0.3).eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    assert torch.count_nonzero(Dropout(1.0).train()(x)) == 0


def test_the_same_seed_gives_the_same_mask_and_the_gradient_is_masked_like_the_output():
    x = torch.randn(16, 33, requires_grad=True)
    torch.manual_seed(2)
    y = Dropout(0.2).train()(x)
    torch.manual_seed(2)
    assert torch.equal(y, Dropout(0.2).train()(x))
    y.sum().backward()
    assert torch.equal(x.grad == 0, y == 0)
