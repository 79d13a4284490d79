"""Specification of the lazy row-wise Adam and the clipping that understands sparse gradients."""

from __future__ import annotations

import pytest
import torch

from xtream.model.sparse_adam import LazyAdam, clip_grad_norm, clip_scale


def rows_grad(shape: tuple[int, int], rows: list[int], seed: int) -> torch.Tensor:
    g = torch.zeros(shape)
    g[rows] = torch.randn(len(rows), shape[1], generator=torch.Generator().manual_seed(seed))
    return g


def test_dense_gradients_follow_torch_adam_exactly():
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(7, 5))
    b = torch.nn.Parameter(a.detach().clone())
    lazy, ref = LazyAdam([a], lr=0.01), torch.optim.Adam([b], lr=0.01, fused=True)
    for step in range(4):
        g = torch.randn(7, 5, generator=torch.Generator().manual_seed(step))
        a.grad, b.grad = g.clone(), g.clone()
        lazy.step()
        ref.step()
    assert torch.equal(a, b)


def test_a_sparse_gradient_moves_its_rows_as_adam_and_leaves_the_other_rows_and_moments_alone():
    shape = (6, 4)
    start = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    lazy_p = torch.nn.Parameter(start.clone())
    dense_p = torch.nn.Parameter(start.clone())
    lazy, dense = LazyAdam([lazy_p], lr=0.1), torch.optim.Adam([dense_p], lr=0.1)
    first = rows_grad(shape, [0, 2, 5], seed=2)
    lazy_p.grad, dense_p.grad = first.to_sparse(sparse_dim=1), first.clone()
    lazy.step()
    dense.step()
    torch.testing.assert_close(lazy_p.detach(), dense_p.detach())   # one step: untouched rows have zero moments
    after_first = lazy_p.detach().clone()
    second = rows_grad(shape, [1, 2], seed=3)
    lazy_p.grad = second.to_sparse(sparse_dim=1)
    lazy.step()
    moved = (lazy_p.detach() != after_first).any(1)
    assert moved.tolist() == [False, True, True, False, False, False]
    state = lazy.state[lazy_p]
    assert float(state["step"]) == 2
    assert torch.count_nonzero(state["exp_avg"][[3, 4]]) == 0
    dense_p.grad = second.clone()
    dense.step()
    assert not torch.equal(dense_p.detach()[0], after_first[0])   # dense Adam keeps moving row 0 on momentum


def test_repeated_rows_of_an_uncoalesced_gradient_are_summed():
    shape = (5, 3)
    values = torch.randn(3, 3, generator=torch.Generator().manual_seed(4))
    repeated = torch.sparse_coo_tensor(torch.tensor([[3, 1, 3]]), values, shape, check_invariants=True)
    summed = torch.zeros(shape)
    summed[3] = values[0] + values[2]
    summed[1] = values[1]
    a = torch.nn.Parameter(torch.zeros(shape))
    b = torch.nn.Parameter(torch.zeros(shape))
    opt_a, opt_b = LazyAdam([a], lr=0.1), LazyAdam([b], lr=0.1)
    a.grad, b.grad = repeated, summed.to_sparse(sparse_dim=1)
    opt_a.step()
    opt_b.step()
    assert torch.equal(a, b)


def test_clipping_takes_a_sparse_gradient_by_its_stored_rows():
    shape = (8, 3)
    g = rows_grad(shape, [1, 6], seed=5) * 10
    dense = torch.nn.Parameter(torch.zeros(shape))
    sparse = torch.nn.Parameter(torch.zeros(shape))
    other = torch.nn.Parameter(torch.zeros(4))
    dense.grad, sparse.grad, other.grad = g.clone(), g.to_sparse(sparse_dim=1), torch.full((4,), 3.0)
    expected = torch.sqrt(g.pow(2).sum() + 36.0)
    norm = clip_grad_norm([sparse, other], 1.0)
    assert abs(norm - float(expected)) < 1e-4
    torch.nn.utils.clip_grad_norm_([dense], 1.0)
    total = torch.sqrt(sparse.grad.to_dense().pow(2).sum() + other.grad.pow(2).sum())
    assert abs(float(total) - 1.0) < 1e-5
    assert abs(norm - 1.0) > 1.0   # it was clipped, not already small


def test_a_torch_adam_checkpoint_loads_and_continues_exactly():
    import copy

    torch.manual_seed(1)
    a = torch.nn.Parameter(torch.randn(5, 3))
    b = torch.nn.Parameter(torch.zeros(5, 3))
    ref = torch.optim.Adam([a], lr=0.01, fused=True)
    a.grad = torch.randn(5, 3)
    ref.step()
    lazy = LazyAdam([b], lr=0.01)
    lazy.load_state_dict(copy.deepcopy(ref.state_dict()))
    with torch.no_grad():
        b.copy_(a)
    for _ in range(3):
        g = torch.randn(5, 3)
        a.grad, b.grad = g.clone(), g.clone()
        ref.step()
        lazy.step()
    assert torch.equal(a, b)


def test_clip_scale_is_what_clipping_divides_by_and_grad_scale_clips_inside_the_update():
    shape = (8, 3)
    g = rows_grad(shape, [1, 6], seed=6) * 10
    bias_grad = torch.full((4,), 3.0)
    inside = [torch.nn.Parameter(torch.zeros(shape)), torch.nn.Parameter(torch.zeros(4))]
    before = [torch.nn.Parameter(torch.zeros(shape)), torch.nn.Parameter(torch.zeros(4))]
    for params in (inside, before):
        params[0].grad, params[1].grad = g.to_sparse(sparse_dim=1), bias_grad.clone()
    scale = clip_scale(inside, 1.0)
    norm = clip_grad_norm(before, 1.0)
    assert float(scale) == pytest.approx((norm + 1e-6) / 1.0, rel=1e-6)
    assert float(scale) > 1.0
    LazyAdam(inside, lr=0.1).step(grad_scale=scale)
    LazyAdam(before, lr=0.1).step()
    for a, b in zip(inside, before):
        torch.testing.assert_close(a.detach(), b.detach())
    assert torch.count_nonzero(inside[0].detach()[[0, 2, 3, 4, 5, 7]]) == 0   # rows absent from the gradient
    small = [torch.nn.Parameter(torch.zeros(3))]
    small[0].grad = torch.full((3,), 0.1)
    assert float(clip_scale(small, 1.0)) == 1.0   # under the threshold nothing is scaled
