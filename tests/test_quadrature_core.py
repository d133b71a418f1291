"""The hand-written backward of the quadrature core equals autograd through the reference implementation."""

import pytest
import torch as th

from sb3_gmm.entropy._common import mixture_params
from sb3_gmm.entropy.quadrature import quadrature_entropy


@pytest.mark.parametrize("batch_shape", [(), (3,), (2, 3)])
@pytest.mark.parametrize("points_kind", ["shared", "per_component", "per_batch"])
@pytest.mark.parametrize("control_variate", [True, False])
def test_fused_matches_autograd(batch_shape, points_kind, control_variate):
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
        return quadrature_entropy(params, points, weights, control_variate=control_variate, fused=fused)

    fused, reference = estimate(True), estimate(False)
    assert th.allclose(fused, reference, atol=1e-12)
    fused_grads = th.autograd.grad(fused.sum(), (logits, means, stds))
    reference_grads = th.autograd.grad(reference.sum(), (logits, means, stds))
    for got, expected in zip(fused_grads, reference_grads):
        assert th.allclose(got, expected, atol=1e-10)


def test_fused_path_refuses_second_derivatives():
    logits = th.zeros(2, dtype=th.float64, requires_grad=True)
    means = th.randn(2, 3, dtype=th.float64, requires_grad=True)
    stds = th.ones(2, 3, dtype=th.float64, requires_grad=True)
    points, weights = th.randn(4, 3, dtype=th.float64), th.full((4,), 0.25, dtype=th.float64)
    value = quadrature_entropy(mixture_params(logits, means, stds), points, weights)
    (grad,) = th.autograd.grad(value, means, create_graph=True)
    with pytest.raises(RuntimeError):
        th.autograd.grad(grad.sum(), means)
