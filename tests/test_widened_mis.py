"""qmc's rule in D >= 2 (rule_nd="widened_mis", the default): every component's points pooled by multiple importance
sampling, narrow components' points widened."""

import math

import pytest
import torch as th

from benchmarks.cases import cosine, ground_truth, leaf_parameters, make_case, random_batch, value_and_gradient
from sb3_gmm.distributions import GMMDistribution
from sb3_gmm.entropy import gmm_entropy
from sb3_gmm.entropy._common import gaussian_entropies, mixture_params, weighted_sum
from sb3_gmm.entropy.quadrature import MIS_WIDENING, mis_widening

OPTIONS = {"rule_nd": "widened_mis"}


def widened(logits: th.Tensor, means: th.Tensor, stds: th.Tensor) -> th.Tensor:
    return gmm_entropy(logits, means, stds, **OPTIONS)


@pytest.mark.parametrize("dim", [2, 5])
def test_one_component_is_the_closed_form(dim):
    stds = th.rand(3, 1, dim, dtype=th.float64) + 0.1
    value = widened(th.zeros(3, 1, dtype=th.float64), th.randn(3, 1, dim, dtype=th.float64), stds)
    th.testing.assert_close(value, 0.5 * dim * math.log(2 * math.pi * math.e) + stds.log().sum((-2, -1)))


def test_widening_is_one_for_similar_widths_and_reaches_its_cap_for_a_much_narrower_component():
    log_stds = th.zeros(2, 3, 2, dtype=th.float64)
    log_stds[1, 0, 1] = -math.log(32.0)  # component 0 is 32x narrower than the others in dimension 1
    widening = mis_widening(log_stds)
    th.testing.assert_close(widening[0], th.ones(3, 2, dtype=th.float64), rtol=0, atol=1e-6)
    assert float(widening[1, 0, 1]) == pytest.approx(MIS_WIDENING, abs=1e-5)
    others = widening[1].flatten()[th.arange(6) != 1]
    th.testing.assert_close(others, th.ones(5, dtype=th.float64), rtol=0, atol=1e-6)


def test_below_huber_upper_bound_and_finite_over_random_batches():
    for dim, n_components in ((2, 2), (3, 4), (6, 8)):
        logits, means, stds = random_batch(dim, n_components, 64, seed=dim)
        value = widened(logits, means, stds)
        params = mixture_params(logits, means, stds)
        upper = weighted_sum(params.log_weights, gaussian_entropies(params.log_stds) - params.log_weights)
        assert bool(th.isfinite(value).all())
        # The pooled integrand p h / sum_j q_j is never negative, so the estimate never exceeds Huber's upper bound.
        assert bool((value <= upper + 1e-12).all())
        # And it is not far below the lower end log K under it either (the pooled weights sum to about one).
        assert bool((value >= upper - math.log(n_components) - 0.05).all())


def test_gradcheck_and_second_derivatives():
    generator = th.Generator().manual_seed(3)
    logits = th.randn(2, 3, dtype=th.float64, generator=generator).requires_grad_()
    means = th.randn(2, 3, 2, dtype=th.float64, generator=generator).requires_grad_()
    log_stds = 0.5 * th.randn(2, 3, 2, dtype=th.float64, generator=generator)
    log_stds[0, 1, 0] -= 2.5  # one component narrow in one dimension: the widening is active and differentiated
    log_stds.requires_grad_()

    def function(logits: th.Tensor, means: th.Tensor, log_stds: th.Tensor) -> th.Tensor:
        return widened(logits, means, log_stds.exp())

    assert th.autograd.gradcheck(function, (logits, means, log_stds))
    assert th.autograd.gradgradcheck(function, (logits, means, log_stds))


@pytest.mark.parametrize(("dim", "n_components", "seed"), [(2, 4, 0), (2, 8, 4), (3, 4, 4)])
def test_narrow_inside_wide_gradient_is_accurate_where_the_per_component_rule_misses(dim, n_components, seed):
    # Cases of the suite's narrow_heavy family where the per-component rule's gradient cosine is 0.96, 0.91 and 0.84
    # (benchmarks/mis_rule.py measures the whole family). widened_mis is qmc's default in D >= 2.
    case = make_case(dim, n_components, "narrow_heavy", seed)
    truth = ground_truth(case)
    _, per_component = value_and_gradient(lambda *args: gmm_entropy(*args, rule_nd="per_component"), case)
    value, gradient = value_and_gradient(widened, case)
    _, default = value_and_gradient(gmm_entropy, case)
    assert cosine(per_component, truth.gradient) < 0.97
    assert cosine(gradient, truth.gradient) > 0.99
    assert value == pytest.approx(truth.entropy, abs=0.01)
    th.testing.assert_close(default, gradient, rtol=0, atol=0)


def test_float32_agrees_with_float64():
    case = make_case(3, 4, "narrow_heavy")
    value64, gradient64 = value_and_gradient(widened, case, th.float64)
    value32, gradient32 = value_and_gradient(widened, case, th.float32)
    assert value32 == pytest.approx(value64, abs=1e-4)
    assert cosine(gradient32, gradient64) > 0.9999


def test_ignored_in_one_dimension_and_the_same_for_both_integrands():
    logits, means, stds = th.zeros(3), th.randn(3, 1), th.ones(3, 1)
    # rule_1d decides in 1-D, so one setting of rule_nd serves policies of any action dimension.
    for rule in ("widened_mis", "per_component"):
        assert float(gmm_entropy(logits, means, stds, rule_nd=rule)) == float(gmm_entropy(logits, means, stds))
    with pytest.raises(ValueError, match="rule_nd"):
        gmm_entropy(logits, means, stds, rule_nd="union")
    # Pooled, sum_i w_i N_i log r_i = p sum_i r_i log r_i: the two integrands are one function, and one estimate.
    two_dims = (th.zeros(3), th.randn(3, 2), th.rand(3, 2) + 0.5)
    th.testing.assert_close(gmm_entropy(*two_dims, integrand="log_responsibility"), gmm_entropy(*two_dims))


def test_policy_distribution_uses_it_through_entropy_kwargs():
    distribution = GMMDistribution(2, 3, entropy_kwargs=OPTIONS)
    logits, means, log_stds = leaf_parameters(make_case(2, 3, "narrow_heavy"), th.float32)
    distribution.proba_distribution(th.cat([logits, means.flatten()]).unsqueeze(0), log_stds)
    expected = widened(distribution.logits, distribution.means, distribution.stds)
    th.testing.assert_close(distribution.entropy(), expected)


def _value_and_grads(dtype: th.dtype, batch_shape, shared_stds: bool = False):
    generator = th.Generator().manual_seed(len(batch_shape) + 7 * int(shared_stds))
    shape = (*batch_shape, 4, 3)
    logits = th.randn(*batch_shape, 4, generator=generator, dtype=th.float64).to(dtype).requires_grad_()
    means = th.randn(*shape, generator=generator, dtype=th.float64).to(dtype).requires_grad_()
    log_stds = 0.6 * th.randn(*(shape[-2:] if shared_stds else shape), generator=generator, dtype=th.float64)
    log_stds[..., 0, 1] -= 3.0  # narrow: the widening is active
    log_stds = log_stds.to(dtype).requires_grad_()
    value = widened(logits, means, log_stds.exp().expand(shape))
    grads = th.autograd.grad(value.sum(), (logits, means, log_stds))
    return value.detach(), grads


@pytest.mark.parametrize("dtype", [th.float64, th.float32])
@pytest.mark.parametrize(("batch_shape", "shared_stds"), [((16,), False), ((2, 3), False), ((5,), True)])
def test_compiled_kernel_equals_the_torch_formula(dtype, batch_shape, shared_stds):
    from sb3_gmm import native

    if native.library(dtype) is None:
        pytest.skip("no C compiler: the torch formula is the only path")
    compiled = _value_and_grads(dtype, batch_shape, shared_stds)
    with native.disabled():
        reference = _value_and_grads(dtype, batch_shape, shared_stds)
    tolerance = dict(rtol=1e-10, atol=1e-10) if dtype == th.float64 else dict(rtol=1e-4, atol=1e-4)
    th.testing.assert_close(compiled[0], reference[0], **tolerance)
    for compiled_grad, reference_grad in zip(compiled[1], reference[1]):
        th.testing.assert_close(compiled_grad, reference_grad, **tolerance)


def test_torch_formula_in_chunks_equals_one_pass(monkeypatch):
    from sb3_gmm import native
    from sb3_gmm.entropy import quadrature

    with native.disabled():
        one_pass = _value_and_grads(th.float64, (10,))
        monkeypatch.setattr(quadrature, "CHUNK_BYTES", 4 * 4 * 64 * 8 * 3)  # three elements per chunk
        chunked = _value_and_grads(th.float64, (10,))
        monkeypatch.setattr(quadrature, "CHUNK_BYTES", math.inf)  # chunking off
        unbounded = _value_and_grads(th.float64, (10,))
    for other in (chunked, unbounded):
        th.testing.assert_close(other[0], one_pass[0], rtol=1e-12, atol=1e-12)
        for other_grad, grad in zip(other[1], one_pass[1]):
            th.testing.assert_close(other_grad, grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("native_on", [True, False])
def test_nan_in_gives_nan_out_for_that_element_only(native_on):
    from sb3_gmm import native

    logits, means, stds = th.zeros(3, 2), th.randn(3, 2, 2), th.ones(3, 2, 2)
    means[1, 0, 0] = float("nan")
    means.requires_grad_()
    context = native.disabled() if not native_on else th.enable_grad()
    with context:
        value = gmm_entropy(logits, means, stds, validate_args=False, **OPTIONS)
        (grad,) = th.autograd.grad(value.sum(), means)
    assert bool(th.isnan(value[1])) and bool(th.isfinite(value[[0, 2]]).all())
    assert bool(th.isfinite(grad[[0, 2]]).all())


@pytest.mark.parametrize("dim", [1, 3])
@pytest.mark.parametrize("state_dependent_std", [False, True])
def test_policy_one_call_path_equals_the_torch_path_with_the_widening_active(dim, state_dependent_std):
    from sb3_gmm import native

    if native.library(th.float64) is None:
        pytest.skip("no C compiler: the torch path is the only path")
    n_components = 4
    distribution = GMMDistribution(dim, n_components, state_dependent_std=state_dependent_std)
    generator = th.Generator().manual_seed(dim)
    params = th.randn(16, distribution.n_params, generator=generator, dtype=th.float64)
    log_std = None
    if state_dependent_std:
        params[:, n_components * (1 + dim) :] *= 0.3
        params[:, n_components * (1 + dim)] -= 2.3  # component 0 about 10x narrower in dimension 0
    else:
        log_std = 0.3 * th.randn(n_components, dim, generator=generator, dtype=th.float64)
        log_std[0, 0] -= 2.3
        log_std.requires_grad_()
    params.requires_grad_()
    actions = th.randn(16, dim, generator=generator, dtype=th.float64)
    inputs = [params] + ([] if log_std is None else [log_std])
    weights = th.linspace(-1.0, 2.0, 16, dtype=th.float64)

    def values_and_grads():
        distribution.proba_distribution(params, log_std)
        log_prob, entropy = distribution.log_prob_and_entropy(actions)
        grads = th.autograd.grad((weights * log_prob).sum() + 0.7 * entropy.sum(), inputs)
        return (log_prob, entropy, *grads)

    compiled = values_and_grads()
    assert (
        float(mis_widening(distribution.stds.detach().log()).max()) > 1.5
    )  # the chain through the widening is exercised
    with native.disabled():
        reference = values_and_grads()
    for got, expected in zip(compiled, reference):
        th.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
