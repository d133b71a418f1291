"""The ``narrow_heavy`` case family of :mod:`benchmarks.cases` and its ground truth.

One heavy component, ``NARROW_STD_RATIO`` x narrower than the others in one dimension, inside light, wide ones. Its
Monte Carlo truth is checked the way the other kinds' are (tests/test_entropy.py): against deterministic quadrature in
1-D (value and gradient), and in D = 6 against an independent replicate.
"""

import math

import pytest
import torch as th

from benchmarks.cases import (
    FULL_KINDS,
    NARROW_HEAVY_WEIGHT,
    NARROW_STD_RATIO,
    cosine,
    flat_gradient,
    leaf_parameters,
    make_case,
    make_suite,
    monte_carlo_truth,
    quadrature_entropy_1d,
)

N_SE = 4.0


@pytest.mark.parametrize("dim, n_components", [(1, 3), (6, 3), (17, 8)])
def test_narrow_heavy_geometry(dim: int, n_components: int):
    case = make_case(dim, n_components, "narrow_heavy")
    weights = th.softmax(case.logits, -1)
    assert float(weights[0]) == pytest.approx(NARROW_HEAVY_WEIGHT, abs=1e-12)
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-12)
    # Narrowed in exactly one dimension: there it is about NARROW_STD_RATIO x below the others (0.3 log-normal jitter).
    log_ratio = (case.stds[0] / case.stds[1:].mean(0)).log()
    assert int((log_ratio < -0.5 * math.log(NARROW_STD_RATIO)).sum()) == 1
    assert "narrow_heavy" in FULL_KINDS
    assert case.name == f"D{dim}-K{n_components}-narrow_heavy"


def test_narrow_heavy_is_in_the_suite_and_leaves_the_other_cases_unchanged():
    suite = {case.name: case for case in make_suite(dims=(6,), components=(3,))}
    assert "D6-K3-narrow_heavy" in suite
    # Each kind draws from its own stream: appending a kind changes no other case.
    other = make_case(6, 3, "sep2")
    th.testing.assert_close(suite["D6-K3-sep2"].means, other.means, rtol=0, atol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_narrow_heavy_truth_matches_quadrature_in_1d(seed: int):
    """The sampled truth (value and gradient) against the deterministic quadrature of the same 1-D mixture."""
    case = make_case(1, 3, "narrow_heavy", seed)
    sampled = monte_carlo_truth(case.params, 2**15, n_replicates=2, seed=seed)
    logits, means, log_stds = leaf_parameters(case)
    exact = quadrature_entropy_1d(logits, means, log_stds.exp())
    exact.backward()
    assert abs(sampled.entropy - float(exact.detach())) <= N_SE * sampled.standard_error + 1e-6
    assert cosine(sampled.gradient, flat_gradient(logits, means, log_stds)) > 0.999


def test_narrow_heavy_truth_is_reproducible_in_6d():
    """Two independent truths of the suite's D = 6, K = 3 case agree within their standard errors, gradient too."""
    case = make_case(6, 3, "narrow_heavy")
    first = monte_carlo_truth(case.params, 2**15, n_replicates=2, seed=0)
    second = monte_carlo_truth(case.params, 2**15, n_replicates=2, seed=100)
    combined = math.hypot(first.standard_error, second.standard_error)
    assert abs(first.entropy - second.entropy) <= N_SE * combined
    # 1 - cosine is the truth's own gradient noise, ~2e-4 at 2^16 samples per component.
    assert first.gradient_seed_cosine > 0.999
    assert cosine(first.gradient, second.gradient) > 0.999
