"""The hand-written backward of the quadrature core equals autograd through the reference implementation."""

import math

import pytest
import torch as th

from sb3_gmm.entropy import MixtureParams, gmm_entropy, quadrature
from sb3_gmm.entropy._common import mixture_params
from sb3_gmm.entropy.quadrature import (
    INTEGRANDS,
    NEGLIGIBLE_NODE_WEIGHT,
    SINH_RULE_SCALE,
    _qmc_rule,
    gauss_hermite_points,
    quadrature_entropy,
    sinh_normal_points,
)


@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 3)])
@pytest.mark.parametrize("points_kind", ["shared", "per_component", "per_batch"])
@pytest.mark.parametrize(
    "control_variate,integrand",
    [(True, "responsibility_entropy"), (True, "log_responsibility"), (False, "log_responsibility")],
)
def test_fused_matches_autograd(batch_shape, points_kind, control_variate, integrand):
    th.manual_seed(0)
    n_components, dim, n_points = 3, 4, 8
    logits = th.randn(*batch_shape, n_components, dtype=th.float64, requires_grad=True)
    means = th.randn(*batch_shape, n_components, dim, dtype=th.float64, requires_grad=True)
    stds = (th.rand(*batch_shape, n_components, dim, dtype=th.float64) + 0.5).requires_grad_(True)
    points = {
        "shared": th.randn(n_points, dim, dtype=th.float64),
        "per_component": th.randn(n_components, n_points, dim, dtype=th.float64),
        "per_batch": th.randn(*batch_shape, n_components, n_points, dim, dtype=th.float64),
    }[points_kind]
    weights = th.rand(n_points, dtype=th.float64)
    weights = weights / weights.sum()

    def estimate(fused):
        params = mixture_params(logits, means, stds)
        return quadrature_entropy(
            params, points, weights, control_variate=control_variate, fused=fused, integrand=integrand
        )

    fused, reference = estimate(True), estimate(False)
    assert th.allclose(fused, reference, atol=1e-12)
    fused_grads = th.autograd.grad(fused.sum(), (logits, means, stds))
    reference_grads = th.autograd.grad(reference.sum(), (logits, means, stds))
    for got, expected in zip(fused_grads, reference_grads):
        assert th.allclose(got, expected, atol=1e-10)


def test_fused_path_second_derivatives_equal_autograd():
    """The double backward through the fused Function is autograd's through the reference.

    This test used to expect a RuntimeError and passed for an unrelated reason: the first gradient carried no graph
    (``grad.requires_grad`` was False), so the second ``autograd.grad`` refused it as a constant. Every second
    derivative that did not raise, e.g. ``hessian()``, was silently zero.
    """
    th.manual_seed(0)
    logits = th.randn(3, dtype=th.float64, requires_grad=True)
    means = th.randn(3, 2, dtype=th.float64, requires_grad=True)
    stds = (th.rand(3, 2, dtype=th.float64) + 0.5).requires_grad_(True)
    points, weights = th.randn(8, 2, dtype=th.float64), th.full((8,), 0.125, dtype=th.float64)

    inputs = (logits, means, stds)

    def estimate(fused: bool) -> th.Tensor:
        return quadrature_entropy(mixture_params(*inputs), points, weights, fused=fused)

    def derivatives(fused: bool):
        grads = th.autograd.grad(estimate(fused), inputs, create_graph=True)
        assert all(grad.requires_grad for grad in grads)
        return grads, th.autograd.grad(sum(grad.square().sum() for grad in grads), inputs)

    (fused_grads, fused_second), (reference_grads, reference_second) = derivatives(True), derivatives(False)
    # The first derivative taken with a graph is the plain one (stds included, which reach the estimate both
    # directly and through log_stds = stds.log(): gradgradcheck alone would not notice if that path were counted
    # twice, since it only compares the graph-recording gradient with itself).
    plain_grads = th.autograd.grad(estimate(True), inputs)
    for got, expected, plain in zip(fused_grads, reference_grads, plain_grads):
        th.testing.assert_close(got, expected, rtol=0.0, atol=1e-12)
        th.testing.assert_close(got, plain, rtol=0.0, atol=1e-12)
    for got, expected in zip(fused_second, reference_second):
        assert expected.abs().max() > 1e-3  # a real second derivative, not zeros
        th.testing.assert_close(got, expected, rtol=0.0, atol=1e-12)


@pytest.mark.parametrize("points_kind", ["shared", "per_component", "per_batch"])
@pytest.mark.parametrize(
    "control_variate,integrand",
    [(True, "responsibility_entropy"), (True, "log_responsibility"), (False, "log_responsibility")],
)
def test_fused_path_passes_gradgradcheck(points_kind, control_variate, integrand):
    """Second derivatives of the fused path against finite differences of its first derivatives (float64)."""
    th.manual_seed(1)
    batch, n_components, dim, n_points = 2, 3, 2, 6
    points = {
        "shared": th.randn(n_points, dim, dtype=th.float64),
        "per_component": th.randn(n_components, n_points, dim, dtype=th.float64),
        "per_batch": th.randn(batch, n_components, n_points, dim, dtype=th.float64),
    }[points_kind]
    weights = th.full((n_points,), 1.0 / n_points, dtype=th.float64)
    inputs = (
        th.randn(batch, n_components, dtype=th.float64, requires_grad=True),
        th.randn(batch, n_components, dim, dtype=th.float64, requires_grad=True),
        (th.rand(batch, n_components, dim, dtype=th.float64) + 0.5).requires_grad_(True),
    )

    def estimate(logits, means, stds):
        params = mixture_params(logits, means, stds)
        return quadrature_entropy(params, points, weights, control_variate=control_variate, integrand=integrand)

    assert th.autograd.gradgradcheck(estimate, inputs)


def test_first_order_backward_stays_hand_written(monkeypatch):
    """Only a backward that records a graph pays for the reference: an optimiser step keeps the fast path."""
    calls = []
    original = quadrature._differentiable_backward
    monkeypatch.setattr(quadrature, "_differentiable_backward", lambda *args: calls.append(1) or original(*args))
    logits, means = th.randn(4, 3, requires_grad=True), th.randn(4, 3, 2, requires_grad=True)
    gmm_entropy(logits, means, th.ones(4, 3, 2), rule_nd="per_component").sum().backward()
    assert not calls
    th.autograd.grad(
        gmm_entropy(logits, means, th.ones(4, 3, 2), rule_nd="per_component").sum(), means, create_graph=True
    )
    assert calls == [1]


def test_fused_gradient_reaches_shared_log_stds():
    """The fused forward uses the caller's log stds (a policy's head output) instead of taking stds.log() again;
    with log stds and stds as separate leaves, each gets the reference's share of the gradient."""
    th.manual_seed(2)
    log_weights = th.log_softmax(th.randn(5, 3, dtype=th.float64), -1).requires_grad_(True)
    means = th.randn(5, 3, 2, dtype=th.float64, requires_grad=True)
    log_stds = (0.5 * th.randn(5, 3, 2, dtype=th.float64)).requires_grad_(True)
    stds = log_stds.detach().exp().requires_grad_(True)
    params = MixtureParams(log_weights, means, stds, log_stds)
    points, weights, features = _qmc_rule(3, 2, 16, 0, th.float64, th.device("cpu"))
    fused = quadrature_entropy(params, points, weights, features=features)
    reference = quadrature_entropy(params, points, weights, features=features, fused=False)
    th.testing.assert_close(fused, reference, rtol=0.0, atol=1e-12)
    fused_grads = th.autograd.grad(fused.sum(), params)
    reference_grads = th.autograd.grad(reference.sum(), params)
    assert reference_grads[3].abs().max() > 0.1
    for got, expected in zip(fused_grads, reference_grads):
        th.testing.assert_close(got, expected, rtol=0.0, atol=1e-10)


def test_zero_incoming_gradient_gives_zero_gradients():
    """PPO with ent_coef = 0 back-propagates an all-zero gradient: the shortcut must give exact zeros."""
    th.manual_seed(0)
    logits = th.randn(5, 3, requires_grad=True)
    means = th.randn(5, 3, 2, requires_grad=True)
    log_stds = th.zeros(3, 2, requires_grad=True)
    entropy = gmm_entropy(logits, means, log_stds.exp().expand(5, 3, 2), rule_nd="per_component")
    (0.0 * entropy.mean() + means.sum() + log_stds.sum()).backward()
    assert th.equal(means.grad, th.ones_like(means))
    assert th.equal(log_stds.grad, th.ones_like(log_stds))
    assert logits.grad is None or th.equal(logits.grad, th.zeros_like(logits))
    # A partly zero gradient still takes the full path and matches autograd through the reference.
    weights = th.tensor([0.0, 0.0, 1.0, 0.0, 0.0])
    grads = th.autograd.grad(
        (weights * gmm_entropy(logits, means, log_stds.exp().expand(5, 3, 2), rule_nd="per_component")).sum(), means
    )
    params = mixture_params(logits, means, log_stds.exp().expand(5, 3, 2))
    points, point_weights, features = _qmc_rule(3, 2, 64, 0, th.float32, th.device("cpu"))
    reference = quadrature_entropy(params, points, point_weights, fused=False, features=features)
    (expected,) = th.autograd.grad((weights * reference).sum(), means)
    assert th.allclose(grads[0], expected, atol=1e-5)
    assert th.equal(grads[0][:2], th.zeros_like(grads[0][:2]))


def test_one_dimensional_rule_costs_what_gauss_hermite_keeps():
    """The 1-D rule evaluates as many nodes as Gauss-Hermite keeps above the negligible weight, sinh-spaced from 8
    nodes on, Gauss-Hermite below."""
    points, point_weights, _ = _qmc_rule(4, 1, 64, 0, th.float64, th.device("cpu"))
    full_points, full_weights = gauss_hermite_points(64)
    kept = int((full_weights > NEGLIGIBLE_NODE_WEIGHT).sum())
    assert points.shape[0] == kept == 36
    expected_points, expected_weights = sinh_normal_points(kept, SINH_RULE_SCALE)
    assert th.equal(points, expected_points) and th.equal(point_weights, expected_weights)
    small_points, _, _ = _qmc_rule(4, 1, 4, 0, th.float64, th.device("cpu"))
    assert th.equal(small_points, gauss_hermite_points(4)[0])
    # Dropping the negligible Gauss-Hermite nodes changes the estimate far below float32 resolution.
    dropped = full_weights[full_weights <= NEGLIGIBLE_NODE_WEIGHT]
    assert float(dropped.sum()) < 1e-10
    kept_mask = full_weights > NEGLIGIBLE_NODE_WEIGHT
    points = full_points[kept_mask]
    point_weights = full_weights[kept_mask] / full_weights[kept_mask].sum()
    th.manual_seed(1)
    logits = th.randn(16, 4, dtype=th.float64)
    means = 3.0 * th.randn(16, 4, 1, dtype=th.float64)
    stds = th.exp(2.0 * th.randn(16, 4, 1, dtype=th.float64))
    params = mixture_params(logits, means, stds)
    pruned = quadrature_entropy(params, points, point_weights)
    full = quadrature_entropy(params, full_points, full_weights)
    assert th.allclose(pruned, full, atol=1e-8, rtol=0.0)


def _varied_mixtures(batch: int, n_components: int, dim: int, seed: int, dtype: th.dtype):
    """Widths over e^-5..e^2 (the policy's log-std range), means spread from coincident to far apart."""
    generator = th.Generator().manual_seed(seed)
    logits = 3.0 * th.randn(batch, n_components, generator=generator, dtype=th.float64)
    spread = th.exp(2.0 * th.randn(batch, 1, 1, generator=generator, dtype=th.float64))
    means = spread * th.randn(batch, n_components, dim, generator=generator, dtype=th.float64)
    stds = th.exp(th.empty(batch, n_components, dim, dtype=th.float64).uniform_(-5.0, 2.0, generator=generator))
    return logits.to(dtype), means.to(dtype), stds.to(dtype)


@pytest.mark.parametrize("dtype", [th.float64, th.float32])
@pytest.mark.parametrize("dim", [1, 2, 6])
@pytest.mark.parametrize("method,options", [("qmc", {}), ("sigma_points", {"degree": 3})])
def test_responsibility_entropy_estimate_stays_within_its_bracket(dtype, dim, method, options):
    """``H(w) + sum_i w_i H_i - E[h]`` with ``0 <= h <= log K`` and positive point weights can never leave
    ``[upper - log K, upper]`` (upper: Huber's bound), however poor the points are for the mixture."""
    n_components = 4
    logits, means, stds = _varied_mixtures(256, n_components, dim, seed=dim, dtype=dtype)
    estimate = gmm_entropy(logits, means, stds, method=method, **options)
    upper = gmm_entropy(logits, means, stds, method="huber_upper")
    slack = 1e-9 if dtype == th.float64 else 1e-4 * (1.0 + upper.abs())
    assert th.isfinite(estimate).all()
    assert (estimate <= upper + slack).all(), float((estimate - upper).max())
    assert (estimate >= upper - math.log(n_components) - slack).all()


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_both_integrands_estimate_the_same_entropy(dim: int):
    """The two integrands are two ways of writing the same integral: with many points they agree."""
    logits, means, stds = _varied_mixtures(32, 3, dim, seed=10 + dim, dtype=th.float64)
    stds = stds.clamp(min=0.05)  # keep the widths within 100x so that 2048 points resolve every mixture
    by_integrand = [
        gmm_entropy(logits, means, stds, method="qmc", n_points=2048, integrand=integrand) for integrand in INTEGRANDS
    ]
    assert (by_integrand[0] - by_integrand[1]).abs().max() < 0.01


def test_integrand_errors_name_the_argument():
    params = mixture_params(th.zeros(2), th.zeros(2, 1), th.ones(2, 1))
    points, weights = th.zeros(1, 1), th.ones(1)
    with pytest.raises(ValueError, match="integrand must be one of"):
        quadrature_entropy(params, points, weights, integrand="entropy")
    with pytest.raises(ValueError, match="control_variate=False.*log_responsibility"):
        quadrature_entropy(params, points, weights, control_variate=False)
    with pytest.raises(ValueError, match="integrand"):
        gmm_entropy(th.zeros(2), th.zeros(2, 1), th.ones(2, 1), method="qmc", integrand="entropy")
