"""The 1-D sinh-spaced rule for N(0, 1): a valid, symmetric rule that integrates smooth functions times phi."""

import math

import pytest
import torch as th

from benchmarks.cases import make_case, quadrature_entropy_1d
from sb3_gmm.entropy._common import mixture_params
from sb3_gmm.entropy.point_sets import gauss_hermite_points, sinh_normal_points
from sb3_gmm.entropy.quadrature import quadrature_entropy


@pytest.mark.parametrize("n_points", [5, 16, 37, 64])
@pytest.mark.parametrize("scale", [0.5, 1.0])
def test_weights_positive_sum_to_one_and_rule_symmetric(n_points, scale):
    nodes, weights = sinh_normal_points(n_points, scale)
    assert nodes.shape == (n_points, 1) and weights.shape == (n_points,)
    assert nodes.dtype == weights.dtype == th.float64
    assert bool((weights > 0).all())
    assert float(weights.sum()) == pytest.approx(1.0, abs=1e-15)
    # Symmetric about 0: nodes come in +- pairs (sorted ascending) with equal weights, so odd moments vanish.
    th.testing.assert_close(nodes.flip(0), -nodes, rtol=0, atol=1e-15)
    th.testing.assert_close(weights.flip(0), weights, rtol=1e-13, atol=0)
    assert bool((nodes[1:] > nodes[:-1]).all())
    assert float(nodes.abs().max()) == pytest.approx(5.5)


@pytest.mark.parametrize("scale", [0.5, 1.0])
def test_even_moments_of_the_standard_normal(scale):
    nodes, weights = sinh_normal_points(37, scale)
    eps = nodes[:, 0]
    # E[eps^2k] = (2k - 1)!!; the rule is not exact (no polynomial degree), but geometrically accurate; the
    # truncation at 5.5 dominates for the higher moments.
    for power, exact, tolerance in ((2, 1.0, 1e-5), (4, 3.0, 1e-4), (6, 15.0, 1e-3), (8, 105.0, 1e-2)):
        assert float((weights * eps**power).sum()) == pytest.approx(exact, rel=tolerance)


def test_smooth_expectations_converge_to_exact_values():
    # E[cos(w eps)] = exp(-w^2 / 2) and E[exp(-eps^2 / (2 s^2))] = s / sqrt(1 + s^2): a narrow Gaussian bump (s = 0.1,
    # the shape another, narrower component has seen from a wide one) is resolved at the centre with few nodes.
    for n_points, tolerance in ((37, 1e-3), (101, 1e-7)):
        nodes, weights = sinh_normal_points(n_points)
        eps = nodes[:, 0]
        assert float((weights * th.cos(2.0 * eps)).sum()) == pytest.approx(math.exp(-2.0), abs=tolerance)
        bump = th.exp(-0.5 * (eps / 0.1) ** 2)
        assert float((weights * bump).sum()) == pytest.approx(0.1 / math.sqrt(1.01), abs=tolerance)


def test_denser_than_gauss_hermite_at_the_centre_for_the_same_node_count():
    # The default Gauss-Hermite rule (64 nodes, 36 with weight above 1e-12) against 36 sinh-spaced nodes.
    gh_nodes, _ = gauss_hermite_points(64)
    sinh_nodes, _ = sinh_normal_points(36)

    def central_spacing(nodes: th.Tensor) -> float:
        inner = nodes[:, 0][nodes[:, 0].abs() < 1.0]
        return float(inner.diff().max())

    assert central_spacing(sinh_nodes) < 0.5 * central_spacing(gh_nodes)


@pytest.mark.parametrize("kind", ["sep0.5", "concentric", "narrow_heavy"])
def test_entropy_with_the_rule_matches_exact_1d_quadrature(kind):
    case = make_case(1, 4, kind, seed=0)
    nodes, weights = sinh_normal_points(37)
    params = mixture_params(case.logits, case.means, case.stds)
    estimate = float(quadrature_entropy(params, nodes, weights))
    exact = float(quadrature_entropy_1d(case.logits, case.means, case.stds))
    assert estimate == pytest.approx(exact, abs=0.01 if kind == "narrow_heavy" else 1e-4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_points=1), "n_points"),
        (dict(n_points=True), "n_points"),
        (dict(n_points=8, scale=0.0), "scale"),
        (dict(n_points=8, half_width=float("inf")), "half_width"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sinh_normal_points(**kwargs)


def test_union_rule_candidate_fixes_the_narrow_heavy_gradient_and_is_exact_for_one_gaussian():
    """benchmarks.rule_1d.union_rule_entropy (a candidate rule, not in the library): one trapezoid rule on the
    sorted union of every component's nodes resolves a narrow heavy component inside wide ones, where the
    library's per-component rule misses the gradient; for one Gaussian it is the closed form."""
    from benchmarks.cases import cosine, flat_gradient, leaf_parameters
    from benchmarks.rule_1d import union_rule_entropy

    unit_nodes = sinh_normal_points(36, 0.5)[0].reshape(-1)
    single = make_case(1, 1, "single")
    logits, means, log_stds = leaf_parameters(single)
    value = union_rule_entropy(logits, means, log_stds.exp(), unit_nodes)
    expected = 0.5 * math.log(2 * math.pi * math.e) + float(log_stds[0, 0].detach())
    assert float(value.detach()) == pytest.approx(expected, abs=1e-12)

    case = make_case(1, 4, "narrow_heavy", seed=1)
    logits, means, log_stds = leaf_parameters(case)
    quadrature_entropy_1d(logits, means, log_stds.exp()).backward()
    truth = flat_gradient(logits, means, log_stds)
    logits, means, log_stds = leaf_parameters(case)
    union_rule_entropy(logits, means, log_stds.exp(), unit_nodes).backward()
    union = flat_gradient(logits, means, log_stds)
    logits, means, log_stds = leaf_parameters(case)
    nodes, weights = sinh_normal_points(36, 0.5)
    quadrature_entropy(mixture_params(logits, means, log_stds.exp()), nodes, weights).backward()
    library = flat_gradient(logits, means, log_stds)
    assert cosine(union, truth) > 0.999
    assert cosine(library, truth) < 0.99  # the gap the candidate closes (docs/qmc_design.md)
