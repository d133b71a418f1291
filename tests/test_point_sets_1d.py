"""The 1-D sinh-spaced rule for N(0, 1): a valid, symmetric rule that integrates smooth functions times phi."""

import math

import pytest
import torch as th

from benchmarks.cases import make_case, quadrature_entropy_1d
from sb3_gmm.entropy import gmm_entropy
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


# ---------------------------------------------------------------------------------------------------------------------
# qmc's rule_1d="union": one rule on the sorted union of every component's nodes.


def _value_and_gradient(entropy_fn, case):
    from benchmarks.cases import flat_gradient, leaf_parameters

    logits, means, log_stds = leaf_parameters(case)
    value = entropy_fn(logits, means, log_stds.exp())
    value.sum().backward()
    return float(value.detach()), flat_gradient(logits, means, log_stds)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n_components", [2, 4, 8, 16])
@pytest.mark.parametrize("kind", ["narrow_heavy", "sep0.5", "concentric", "one_hot"])
def test_union_rule_is_accurate_where_the_per_component_rule_misses(kind, n_components, seed):
    """Against the exact 1-D truth: value within 0.002 nats and gradient cosine >= 0.99 on every kind, the
    narrow-inside-wide family included (where the per-component rule's worst cosine is 0.84, docs/qmc_design.md)."""
    from benchmarks.cases import cosine

    case = make_case(1, n_components, kind, seed=seed)
    true_value, true_gradient = _value_and_gradient(quadrature_entropy_1d, case)
    value, gradient = _value_and_gradient(lambda *args: gmm_entropy(*args, rule_1d="union"), case)
    assert abs(value - true_value) <= 0.002
    assert cosine(gradient, true_gradient) >= 0.99


def test_union_and_pooled_rules_on_a_known_case_where_the_per_component_rule_misses():
    from benchmarks.cases import cosine

    case = make_case(1, 4, "narrow_heavy", seed=1)
    _, truth = _value_and_gradient(quadrature_entropy_1d, case)
    _, per_component = _value_and_gradient(lambda *args: gmm_entropy(*args, rule_1d="per_component"), case)
    _, default = _value_and_gradient(gmm_entropy, case)
    _, union = _value_and_gradient(lambda *args: gmm_entropy(*args, rule_1d="union"), case)
    _, pooled = _value_and_gradient(lambda *args: gmm_entropy(*args, rule_1d="widened_mis"), case)
    assert cosine(per_component, truth) < 0.99 < 0.995 < cosine(union, truth)
    assert th.equal(default, union)  # the union is the 1-D default
    assert cosine(pooled, truth) > 0.99


@pytest.mark.parametrize("dtype", [th.float32, th.float64])
@pytest.mark.parametrize("n_components", [2, 4, 16])
def test_union_rule_is_exact_for_coincident_components(n_components, dtype):
    """Each component's integral is divided by the rule's integral of that component, so a constant entropy of the
    responsibilities (coincident components) comes out exactly; undivided, the trapezoid's error in integrating a
    Gaussian came through times H(w) (0.013 nats at 16 components)."""
    generator = th.Generator().manual_seed(n_components)
    logits = th.randn(3, n_components, generator=generator, dtype=dtype)
    means = th.full((3, n_components, 1), 0.7, dtype=dtype)
    stds = th.tensor([0.01, 1.0, 30.0], dtype=dtype).view(3, 1, 1).expand(3, n_components, 1)
    value = gmm_entropy(logits, means, stds, rule_1d="union")
    exact = 0.5 * th.log(2 * math.pi * math.e * stds[:, 0, 0] ** 2)
    th.testing.assert_close(value, exact, rtol=0, atol=2e-5 if dtype == th.float32 else 1e-10)


def test_union_rule_single_gaussian_batches_and_permutations():
    generator = th.Generator().manual_seed(3)
    logits = th.randn(2, 3, 4, generator=generator, dtype=th.float64)
    means = th.randn(2, 3, 4, 1, generator=generator, dtype=th.float64)
    stds = th.rand(2, 3, 4, 1, generator=generator, dtype=th.float64) + 0.05
    batched = gmm_entropy(logits, means, stds, rule_1d="union")
    assert batched.shape == (2, 3)
    one = gmm_entropy(logits[1, 2], means[1, 2], stds[1, 2], rule_1d="union")
    th.testing.assert_close(batched[1, 2], one, rtol=1e-12, atol=1e-12)
    order = th.tensor([2, 0, 3, 1])
    permuted = gmm_entropy(logits[..., order], means[..., order, :], stds[..., order, :], rule_1d="union")
    th.testing.assert_close(permuted, batched, rtol=1e-12, atol=1e-12)  # the sorted union does not see the order
    single = gmm_entropy(th.zeros(1), th.zeros(1, 1), th.full((1, 1), 0.3, dtype=th.float32), rule_1d="union")
    assert float(single) == pytest.approx(0.5 * math.log(2 * math.pi * math.e * 0.09), abs=1e-6)


def test_union_rule_derivatives_are_exact():
    generator = th.Generator().manual_seed(5)
    logits = th.randn(3, 3, generator=generator, dtype=th.float64).requires_grad_()
    means = th.randn(3, 3, 1, generator=generator, dtype=th.float64).requires_grad_()
    log_stds = (0.5 * th.randn(3, 3, 1, generator=generator, dtype=th.float64)).requires_grad_()

    def entropy(logits, means, log_stds):
        return gmm_entropy(logits, means, log_stds.exp(), rule_1d="union")

    assert th.autograd.gradcheck(entropy, (logits, means, log_stds))
    assert th.autograd.gradgradcheck(entropy, (logits, means, log_stds))


def test_union_rule_is_ignored_above_one_dimension_and_stays_finite_at_extreme_widths():
    logits, means, stds = th.zeros(2, 3), th.randn(2, 3, 2), th.ones(2, 3, 2)
    # rule_nd decides in D >= 2, so one setting of rule_1d serves policies of any action dimension.
    th.testing.assert_close(gmm_entropy(logits, means, stds, rule_1d="union"), gmm_entropy(logits, means, stds))
    # Over all components at once both integrands are one function: the option does not change the union rule.
    one_dim = (logits, means[..., :1], stds[..., :1] + th.rand(2, 3, 1))
    th.testing.assert_close(
        gmm_entropy(*one_dim, rule_1d="union", integrand="log_responsibility"), gmm_entropy(*one_dim, rule_1d="union")
    )
    with pytest.raises(ValueError, match="rule_1d"):
        gmm_entropy(logits, means[..., :1], stds[..., :1], rule_1d="adaptive")
    means = th.tensor([[[0.0], [0.0], [3.0]]], requires_grad=True)
    stds = th.tensor([[[1e-6], [1e3], [1.0]]], requires_grad=True)
    value = gmm_entropy(th.zeros(1, 3), means, stds, rule_1d="union")
    value.sum().backward()
    assert th.isfinite(value).all() and th.isfinite(means.grad).all() and th.isfinite(stds.grad).all()


def test_union_rule_torch_path_in_chunks_equals_one_pass(monkeypatch):
    """Off the CPU kernel the union rule's torch path cuts a batch over the memory budget into chunks, recomputed in
    the backward: values, first and second derivatives as in one pass."""
    from sb3_gmm import native
    from sb3_gmm.entropy import quadrature

    generator = th.Generator().manual_seed(11)
    logits = th.randn(10, 3, generator=generator, dtype=th.float64).requires_grad_()
    means = th.randn(10, 3, 1, generator=generator, dtype=th.float64).requires_grad_()
    log_stds = (0.5 * th.randn(3, 1, generator=generator, dtype=th.float64)).requires_grad_()

    def value_and_grads():
        value = gmm_entropy(logits, means, log_stds.exp().expand(10, 3, 1))
        weights = th.linspace(0.5, 2.0, 10, dtype=th.float64)  # rows mixed up by the chunks would show
        grads = th.autograd.grad((weights * value).sum(), (logits, means, log_stds), create_graph=True)
        (second,) = th.autograd.grad(grads[1].square().sum(), log_stds)
        return (value.detach(), *(grad.detach() for grad in grads), second)

    n_nodes = quadrature._qmc_rule(3, 1, 64, 0, th.float64, th.device("cpu"))[0].shape[0]
    chunks = []
    original = quadrature._union_rule_pass
    monkeypatch.setattr(
        quadrature, "_union_rule_pass", lambda params, *args: chunks.append(1) or original(params, *args)
    )
    with native.disabled():
        monkeypatch.setattr(quadrature, "CHUNK_BYTES", math.inf)
        one_pass = value_and_grads()
        assert len(chunks) == 1
        monkeypatch.setattr(quadrature, "CHUNK_BYTES", 3 * 3 * (n_nodes + 2) * 8 * 4)  # four elements per chunk
        chunks.clear()
        chunked = value_and_grads()
    assert len(chunks) >= 3  # ten elements in chunks of four, each recomputed in the backward
    for got, expected in zip(chunked, one_pass):
        th.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
