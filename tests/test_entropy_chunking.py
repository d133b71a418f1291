"""The fused quadrature kernel cut into batch chunks (``quadrature.CHUNK_BYTES``) equals its one-pass path.

Chunking starts above a memory budget far beyond these tests' batches, so each test lowers the budget to a few batch
elements per chunk (with a smaller last chunk) and compares against ``CHUNK_BYTES = math.inf``.
"""

import math
from typing import Callable, Dict, List, Tuple

import pytest
import torch as th

from sb3_gmm.entropy import MixtureParams, gmm_entropy, quadrature
from sb3_gmm.entropy._common import mixture_params
from sb3_gmm.entropy.quadrature import _qmc_rule, point_features, quadrature_entropy

ROWS_PER_CHUNK = 2


@pytest.fixture(autouse=True)
def _torch_only(torch_path) -> None:
    """Chunks are a feature of the torch path; the compiled kernel would take the one-pass batches."""


def _budget(n_components: int, n_points: int, dtype: th.dtype = th.float64, rows: int = ROWS_PER_CHUNK) -> int:
    """A CHUNK_BYTES that cuts the batch into chunks of ``rows`` elements."""
    return rows * n_components * n_components * n_points * th.finfo(dtype).bits // 8


@pytest.fixture
def forward_calls(monkeypatch) -> List[int]:
    """Batch sizes of every pass of the kernel's forward (one per chunk), to show the chunked path really ran."""
    calls: List[int] = []
    original = quadrature._fused_forward

    def spy(log_weights, *args):
        calls.append(log_weights.shape[:-1].numel())
        return original(log_weights, *args)

    monkeypatch.setattr(quadrature, "_fused_forward", spy)
    return calls


def _mixture(batch_shape: Tuple[int, ...], n_components: int, dim: int, seed: int = 0):
    """Leaves with gradients; the stds are shared over the batch and expanded, as a policy with a state-independent
    std passes them."""
    generator = th.Generator().manual_seed(seed)
    logits = (2.0 * th.randn(*batch_shape, n_components, generator=generator, dtype=th.float64)).requires_grad_()
    means = (2.0 * th.randn(*batch_shape, n_components, dim, generator=generator, dtype=th.float64)).requires_grad_()
    log_stds = th.empty(n_components, dim, dtype=th.float64).uniform_(-1.5, 0.5, generator=generator)
    return logits, means, log_stds.requires_grad_()


def _value_and_grads(method: str, options: Dict, batch_shape, n_components: int, dim: int):
    logits, means, log_stds = _mixture(batch_shape, n_components, dim)
    stds = log_stds.exp().expand(*batch_shape, n_components, dim)
    entropy = gmm_entropy(logits, means, stds, method=method, **options)
    # A different weight per batch element: a chunk that mixed up rows would show.
    weights = th.linspace(0.5, 2.0, entropy.numel(), dtype=th.float64).view_as(entropy)
    grads = th.autograd.grad((weights * entropy).sum(), (logits, means, log_stds))
    return (entropy.detach(), *grads)


@pytest.mark.parametrize("batch_shape", [(7,), (3, 5)])
@pytest.mark.parametrize(
    "method,options,dim,n_points",
    [
        # Per-component Sobol features [K, n, F].
        ("qmc", {"n_points": 16, "rule_nd": "per_component"}, 3, 16),
        ("qmc", {"n_points": 16, "integrand": "log_responsibility", "rule_nd": "per_component"}, 3, 16),
        # Shared Gauss-Hermite features [n, F] (1-D; the rule drops negligible nodes, hence the count below).
        ("qmc", {"n_points": 16, "rule_1d": "per_component"}, 1, None),
        # Shared sigma points [2D + 1, F].
        ("sigma_points", {}, 3, 7),
        # Per-batch-element noise [..., K, n, F], cut along with the batch; no control variate.
        ("monte_carlo", {"n_samples": 8, "seed": 3}, 2, 8),
    ],
)
def test_chunked_equals_one_pass(monkeypatch, forward_calls, batch_shape, method, options, dim, n_points):
    n_components = 3
    if n_points is None:
        n_points = _qmc_rule(n_components, dim, options["n_points"], 0, th.float64, th.device("cpu"))[0].shape[0]
    monkeypatch.setattr(quadrature, "CHUNK_BYTES", math.inf)
    expected = _value_and_grads(method, options, batch_shape, n_components, dim)
    assert forward_calls == [math.prod(batch_shape)]  # one pass
    forward_calls.clear()
    monkeypatch.setattr(quadrature, "CHUNK_BYTES", _budget(n_components, n_points))
    got = _value_and_grads(method, options, batch_shape, n_components, dim)
    n_elements = math.prod(batch_shape)
    assert forward_calls == [ROWS_PER_CHUNK] * (n_elements // ROWS_PER_CHUNK) + [n_elements % ROWS_PER_CHUNK]
    for value, reference in zip(got, expected):
        assert value.shape == reference.shape
        th.testing.assert_close(value, reference, rtol=1e-12, atol=1e-12)


def _standard_points(kind: str, batch: int, n_components: int, n_points: int, dim: int) -> th.Tensor:
    """Random float64 points in each layout the kernel takes: shared, per component, per batch element."""
    shape = {
        "shared": (n_points, dim),
        "per_component": (n_components, n_points, dim),
        "per_batch": (batch, n_components, n_points, dim),
    }[kind]
    return th.randn(shape, dtype=th.float64)


@pytest.mark.parametrize("points_kind", ["shared", "per_component", "per_batch"])
def test_chunked_accepts_expanded_inputs(monkeypatch, forward_calls, points_kind):
    """quadrature_entropy called directly with one weight vector and one std for the whole batch, expanded (stride
    0); with per-batch-element points the means are expanded too, so the points alone vary over the batch."""
    th.manual_seed(4)
    n_components, dim, n_points, batch = 3, 2, 5, 7
    log_weights = th.log_softmax(th.randn(n_components, dtype=th.float64), -1).requires_grad_()
    means = th.randn(batch, n_components, dim, dtype=th.float64).requires_grad_()
    log_stds = (0.3 * th.randn(n_components, dim, dtype=th.float64)).requires_grad_()
    points = _standard_points(points_kind, batch, n_components, n_points, dim)
    point_weights = th.full((n_points,), 1.0 / n_points, dtype=th.float64)

    def run(budget: float):
        monkeypatch.setattr(quadrature, "CHUNK_BYTES", budget)
        event = (n_components, dim)
        batch_means = means[:1].expand(batch, *event) if points_kind == "per_batch" else means
        params = MixtureParams(
            log_weights.expand(batch, n_components),
            batch_means,
            log_stds.exp().expand(batch, *event),
            log_stds.expand(batch, *event),
        )
        value = quadrature_entropy(params, points, point_weights)
        weights = th.arange(1.0, value.numel() + 1.0, dtype=th.float64)
        return (value.detach(), *th.autograd.grad((weights * value).sum(), (log_weights, means, log_stds)))

    expected = run(math.inf)
    forward_calls.clear()
    got = run(_budget(n_components, n_points))
    assert forward_calls == [2, 2, 2, 1]
    for value, reference in zip(got, expected):
        assert value.shape == reference.shape
        th.testing.assert_close(value, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("points_kind", ["shared", "per_component", "per_batch"])
@pytest.mark.parametrize("integrand", quadrature.INTEGRANDS)
def test_chunked_path_passes_gradcheck_and_gradgradcheck(monkeypatch, forward_calls, points_kind, integrand):
    th.manual_seed(1)
    batch, n_components, dim, n_points = 5, 3, 2, 6
    points = _standard_points(points_kind, batch, n_components, n_points, dim)
    point_weights = th.full((n_points,), 1.0 / n_points, dtype=th.float64)
    inputs = (
        th.randn(batch, n_components, dtype=th.float64, requires_grad=True),
        th.randn(batch, n_components, dim, dtype=th.float64, requires_grad=True),
        (th.rand(batch, n_components, dim, dtype=th.float64) + 0.5).requires_grad_(True),
    )

    def estimate(logits, means, stds):
        return quadrature_entropy(mixture_params(logits, means, stds), points, point_weights, integrand=integrand)

    monkeypatch.setattr(quadrature, "CHUNK_BYTES", _budget(n_components, n_points))
    assert th.autograd.gradcheck(estimate, inputs)
    assert th.autograd.gradgradcheck(estimate, inputs)
    assert forward_calls and max(forward_calls) == ROWS_PER_CHUNK


def test_chunked_second_derivatives_equal_one_pass(monkeypatch):
    """A Hessian-vector product through the chunked Function equals the one-pass one (and is not zero)."""
    logits, means, log_stds = _mixture((6,), 3, 2, seed=5)
    direction = [th.randn_like(tensor) for tensor in (logits, means, log_stds)]

    def hvp(budget: float):
        monkeypatch.setattr(quadrature, "CHUNK_BYTES", budget)
        entropy = gmm_entropy(logits, means, log_stds.exp().expand(6, 3, 2), n_points=16, rule_nd="per_component")
        grads = th.autograd.grad(entropy.sum(), (logits, means, log_stds), create_graph=True)
        dot = sum((grad * vector).sum() for grad, vector in zip(grads, direction))
        return [grad.detach() for grad in grads], th.autograd.grad(dot, (logits, means, log_stds))

    expected_grads, expected_hvp = hvp(math.inf)
    got_grads, got_hvp = hvp(_budget(3, 16))
    for got, expected in zip(got_grads + list(got_hvp), expected_grads + list(expected_hvp)):
        th.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    assert max(float(value.abs().max()) for value in expected_hvp) > 1e-2


def test_chunked_zero_incoming_gradient(monkeypatch):
    """ent_coef = 0: exact zero gradients from the chunked path too; a partly zero gradient still matches."""
    monkeypatch.setattr(quadrature, "CHUNK_BYTES", _budget(3, 64, th.float32))
    th.manual_seed(0)
    logits = th.randn(5, 3, requires_grad=True)
    means = th.randn(5, 3, 2, requires_grad=True)
    log_stds = th.zeros(3, 2, requires_grad=True)
    entropy = gmm_entropy(logits, means, log_stds.exp().expand(5, 3, 2), rule_nd="per_component")
    (0.0 * entropy.mean() + means.sum() + log_stds.sum()).backward()
    assert th.equal(means.grad, th.ones_like(means))
    assert th.equal(log_stds.grad, th.ones_like(log_stds))
    assert logits.grad is None or th.equal(logits.grad, th.zeros_like(logits))
    weights = th.tensor([0.0, 0.0, 1.0, 0.0, 0.0])
    (got,) = th.autograd.grad(
        (weights * gmm_entropy(logits, means, log_stds.exp().expand(5, 3, 2), rule_nd="per_component")).sum(), means
    )
    monkeypatch.setattr(quadrature, "CHUNK_BYTES", math.inf)
    (expected,) = th.autograd.grad(
        (weights * gmm_entropy(logits, means, log_stds.exp().expand(5, 3, 2), rule_nd="per_component")).sum(), means
    )
    th.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    assert th.equal(got[:2], th.zeros_like(got[:2]))


@pytest.mark.parametrize("context", [th.no_grad, th.enable_grad])
def test_chunked_forward_computes_gradients_only_for_a_graph(monkeypatch, context: Callable):
    """The chunked forward prepares the gradient only when autograd records a graph (not under no_grad, nor for
    inputs without requires_grad), and returns the same values either way."""
    calls: List[int] = []
    original = quadrature._fused_backward
    monkeypatch.setattr(quadrature, "_fused_backward", lambda *args: calls.append(1) or original(*args))
    monkeypatch.setattr(quadrature, "CHUNK_BYTES", math.inf)
    logits, means, log_stds = _mixture((5,), 3, 2)
    stds = log_stds.exp().expand(5, 3, 2)
    with th.no_grad():
        expected = gmm_entropy(logits, means, stds, rule_nd="per_component")
    monkeypatch.setattr(quadrature, "CHUNK_BYTES", _budget(3, 64))
    with context():
        got = gmm_entropy(logits, means, stds, rule_nd="per_component")
    constant = gmm_entropy(logits.detach(), means.detach(), stds.detach(), rule_nd="per_component")
    assert len(calls) == (3 if context is th.enable_grad else 0)
    th.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    th.testing.assert_close(constant, expected, rtol=1e-12, atol=1e-12)


def test_budget_leaves_minibatches_on_the_one_pass_path():
    """At the default budgets the usual PPO minibatches (B = 64, K <= 8, 64 points, float32) are not chunked; a large
    batch is, and a tensor on an accelerator gets the accelerator's (larger) budget."""
    for n_components, dim in ((4, 1), (8, 6)):
        points, _, features = _qmc_rule(n_components, dim, 64, 0, th.float32, th.device("cpu"))
        means = th.zeros(64, n_components, dim)
        params = mixture_params(th.zeros(64, n_components), means, th.ones_like(means))
        assert quadrature._plan(params, points, features) is None
    chunk_rows = {}
    for device in ("cpu", "meta"):
        points = th.zeros(8, 64, 6, device=device)
        big = th.zeros(1, 8, 6, device=device).expand(100_000, 8, 6)
        params = MixtureParams(th.zeros(1, 8, device=device).expand(100_000, 8), big, big, big)
        chunking = quadrature._plan(params, points, point_features(points))
        assert chunking.batch_shape == (100_000,) and not chunking.with_gradient
        chunk_rows[device] = chunking.rows
    element_bytes = 8 * 8 * 64 * 4
    assert chunk_rows["cpu"] == quadrature.CHUNK_BYTES // element_bytes
    assert chunk_rows["meta"] == quadrature.GPU_CHUNK_BYTES // element_bytes > chunk_rows["cpu"]
