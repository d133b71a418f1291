"""The compiled kernels (sb3_gmm.native) against the torch paths they replace: the quadrature entropy and the
mixture log density.

Where a C compiler is present the kernel must build; everything it computes must equal the torch path up to
rounding, gradients included; NaN in gives NaN out; loading it must not change how the process rounds subnormal
numbers; without a compiler the estimators fall back with one warning, and ``SB3_GMM_NATIVE=1`` turns that into an
error.
"""

import os
import shutil
import warnings
from typing import Dict, List

import pytest
import torch as th

from sb3_gmm import native
from sb3_gmm.entropy import gmm_entropy, quadrature, validation
from sb3_gmm.entropy._common import mixture_params
from sb3_gmm.entropy.quadrature import _qmc_rule, point_features
from sb3_gmm.mixture import mixture_log_prob

HAS_COMPILER = shutil.which(os.environ.get("CC", "cc")) is not None
needs_kernel = pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler: the estimators use the torch path")


@pytest.fixture(scope="module")
def module_cache(tmp_path_factory):
    """One cache directory for this module's tests: each builds the kernel at most once per dtype."""
    return tmp_path_factory.mktemp("kernel_cache")


@pytest.fixture
def fresh_native(monkeypatch, module_cache):
    """The module's cache directory and no loaded kernel, before and after the test."""
    monkeypatch.setenv(native.ENV_CACHE_DIR, str(module_cache))
    monkeypatch.delenv(native.ENV_SWITCH, raising=False)
    native.reset()
    yield module_cache
    native.reset()


def _spy(monkeypatch, name: str) -> List[int]:
    """Batch sizes of every call into ``native.<name>`` (the first tensor after the kernels), to show it ran."""
    calls: List[int] = []
    original = getattr(native, name)

    def spy(kernels, first, *args):
        calls.append(first.shape[0])
        return original(kernels, first, *args)

    monkeypatch.setattr(native, name, spy)
    return calls


@pytest.fixture
def kernel_calls(monkeypatch) -> List[int]:
    return _spy(monkeypatch, "quadrature_entropy")


@pytest.fixture
def log_prob_calls(monkeypatch) -> List[int]:
    return _spy(monkeypatch, "mixture_log_prob")


@pytest.fixture
def union_calls(monkeypatch) -> List[int]:
    return _spy(monkeypatch, "union_entropy_1d")


def _mixture(batch_shape, n_components: int, dim: int, dtype: th.dtype, seed: int = 0):
    generator = th.Generator().manual_seed(seed)
    logits = (2 * th.randn(*batch_shape, n_components, generator=generator, dtype=dtype)).requires_grad_()
    means = (2 * th.randn(*batch_shape, n_components, dim, generator=generator, dtype=dtype)).requires_grad_()
    # One std per component for the whole batch, expanded (stride 0), as a state-independent policy std arrives.
    log_stds = th.empty(n_components, dim, dtype=dtype).uniform_(-2.0, 0.7, generator=generator).requires_grad_()
    return logits, means, log_stds


def _value_and_grads(method: str, options: Dict, batch_shape, n_components: int, dim: int, dtype: th.dtype):
    logits, means, log_stds = _mixture(batch_shape, n_components, dim, dtype)
    stds = log_stds.exp().expand(*batch_shape, n_components, dim)
    entropy = gmm_entropy(logits, means, stds, method=method, **options)
    # A different incoming gradient per batch element: rows mixed up in the kernel would show.
    weights = th.linspace(0.5, 2.0, entropy.numel(), dtype=dtype).view_as(entropy)
    grads = th.autograd.grad((weights * entropy).sum(), (logits, means, log_stds))
    return (entropy.detach(), *grads)


CASES = [
    ("qmc", {"rule_1d": "per_component"}, 4, 1),  # the 1-D rule, shared by every component
    ("qmc", {"rule_nd": "per_component"}, 3, 6),  # Sobol points per component
    ("qmc", {"integrand": "log_responsibility", "rule_nd": "per_component"}, 3, 2),
    ("qmc", {"n_points": 16, "rule_nd": "per_component"}, 8, 3),
    ("sigma_points", {"degree": 5}, 2, 3),
]
FLOAT64_TOLERANCE = dict(rtol=1e-10, atol=1e-12)


def _assert_kernel_equals_torch(monkeypatch, calls, compute, batch_shape, float32_tolerance, dtype):
    """``compute()`` (value and gradients) through the kernel, which must run once per batch, then through the torch
    path, which must not call it: equal up to rounding."""
    got = compute()
    assert calls == [th.Size(batch_shape).numel()]
    monkeypatch.setattr(native, "library", lambda dtype: None)
    expected = compute()
    assert calls == [th.Size(batch_shape).numel()]  # the second run was torch's
    tolerance = FLOAT64_TOLERANCE if dtype == th.float64 else float32_tolerance
    for value, reference in zip(got, expected):
        assert value.shape == reference.shape
        th.testing.assert_close(value, reference, **tolerance)


@needs_kernel
def test_kernel_builds_where_a_compiler_is_present(monkeypatch, fresh_native, tmp_path):
    monkeypatch.setenv(native.ENV_CACHE_DIR, str(tmp_path))
    for dtype in (th.float32, th.float64):
        assert native.library(dtype) is not None, native.build_error(dtype)
    assert sorted(path.suffix for path in tmp_path.iterdir()) == [".so", ".so"]  # nothing half-written left


@needs_kernel
@pytest.mark.parametrize("dtype", [th.float64, th.float32])
@pytest.mark.parametrize("batch_shape", [(7,), (3, 5)])
@pytest.mark.parametrize("method,options,n_components,dim", CASES)
def test_kernel_equals_the_torch_path(
    monkeypatch, fresh_native, kernel_calls, dtype, batch_shape, method, options, n_components, dim
):
    def compute():
        return _value_and_grads(method, options, batch_shape, n_components, dim, dtype)

    _assert_kernel_equals_torch(monkeypatch, kernel_calls, compute, batch_shape, dict(rtol=2e-5, atol=2e-5), dtype)


@needs_kernel
@pytest.mark.parametrize("method,options,n_components,dim", CASES[:3])
def test_kernel_gradients_pass_gradcheck_and_second_derivatives_are_autograds(
    fresh_native, kernel_calls, method, options, n_components, dim
):
    logits, means, log_stds = _mixture((3,), n_components, dim, th.float64, seed=2)

    def entropy(logits, means, log_stds):
        return gmm_entropy(logits, means, log_stds.exp().expand_as(means), method=method, **options)

    assert th.autograd.gradcheck(entropy, (logits, means, log_stds))
    assert kernel_calls  # the first derivative was the kernel's
    # A backward that records a graph differentiates the reference implementation (exact second derivatives).
    assert th.autograd.gradgradcheck(entropy, (logits, means, log_stds))


@needs_kernel
@pytest.mark.parametrize("dim", [1, 4])
def test_nan_in_gives_nan_out_with_validation_off(fresh_native, kernel_calls, dim):
    logits, means, log_stds = _mixture((4,), 3, dim, th.float32)
    means = means.detach().clone()
    stds = log_stds.detach().exp().expand_as(means).clone()
    means[1, 0, 0] = float("nan")
    stds[2, 1, 0] = float("inf")
    with validation(False):
        entropy = gmm_entropy(logits.detach(), means, stds, rule_1d="per_component", rule_nd="per_component")
    assert kernel_calls == [4]
    assert th.isnan(entropy[1:3]).all()
    assert th.isfinite(entropy[[0, 3]]).all()


@needs_kernel
def test_loading_the_kernel_keeps_subnormal_numbers(fresh_native):
    """A library linked with -ffast-math would switch the whole process to flush subnormals to zero."""
    for dtype in (th.float32, th.float64):
        assert native.library(dtype) is not None
        tiny = th.finfo(dtype).tiny
        assert (th.tensor(tiny, dtype=dtype) / 4).item() > 0


@needs_kernel
def test_a_cached_kernel_is_loaded_without_compiling(monkeypatch, fresh_native):
    assert native.library(th.float32) is not None
    native.reset()

    def refuse(*args):
        raise AssertionError("compiled again although the cache holds the library")

    monkeypatch.setattr(native, "_compile", refuse)
    assert native.library(th.float32) is not None


def test_minibatches_take_the_kernel_and_other_layouts_keep_torch(monkeypatch):
    sentinel = object()
    monkeypatch.setattr(native, "library", lambda dtype: sentinel)
    means = th.zeros(64, 4, 1)
    params = mixture_params(th.zeros(64, 4), means, th.ones_like(means))
    points, _, features = _qmc_rule(4, 1, 64, 0, th.float32, th.device("cpu"))
    plan = quadrature._plan(params, points, features)
    assert plan.kernel is sentinel and plan.rows == 64 and plan.batch_shape == (64,)
    # Over the memory budget the kernel serves too while torch has at most two threads; with more, torch's chunks.
    monkeypatch.setattr(quadrature, "CHUNK_BYTES", 1024)
    monkeypatch.setattr(th, "get_num_threads", lambda: 2)
    assert quadrature._plan(params, points, features).kernel is sentinel
    monkeypatch.setattr(th, "get_num_threads", lambda: 8)
    chunks = quadrature._plan(params, points, features)
    assert chunks.kernel is None and chunks.rows < 64
    monkeypatch.undo()
    monkeypatch.setattr(native, "library", lambda dtype: sentinel)
    # Monte Carlo's points per batch element, and points of another dtype, stay on the torch path.
    per_element = th.zeros(64, 4, 8, 1)
    assert quadrature._plan(params, per_element, point_features(per_element)) is None
    assert quadrature._plan(params, points.double(), point_features(points.double())) is None


def test_without_a_compiler_the_estimate_falls_back_with_one_warning(monkeypatch, fresh_native, kernel_calls):
    logits, means, log_stds = _mixture((5,), 3, 2, th.float64)
    stds = log_stds.exp().expand_as(means)
    original_kernel = native.library
    monkeypatch.setattr(native, "library", lambda dtype: None)
    expected = gmm_entropy(logits, means, stds)
    monkeypatch.setattr(native, "library", original_kernel)
    monkeypatch.setenv(native.ENV_CACHE_DIR, str(fresh_native / "empty"))
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.warns(RuntimeWarning, match="SB3_GMM_NATIVE=0") as record:
        got = gmm_entropy(logits, means, stds)
    assert record[0].filename == __file__  # the warning names the caller's line, not the library's
    th.testing.assert_close(got, expected, rtol=0, atol=0)
    assert "no C compiler found" in native.build_error(th.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gmm_entropy(logits, means, stds)  # warned once per process, not per call
    assert kernel_calls == []


def test_required_kernel_raises_and_bad_settings_are_named(monkeypatch, fresh_native):
    logits, means, stds = th.zeros(2, 3), th.randn(2, 3, 2), th.ones(2, 3, 2)
    monkeypatch.setenv(native.ENV_CACHE_DIR, str(fresh_native / "empty"))
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setenv(native.ENV_SWITCH, "1")
    with pytest.raises(RuntimeError, match="SB3_GMM_NATIVE=1 requires the kernel.*set CC"):
        gmm_entropy(logits, means, stds)
    native.reset()
    monkeypatch.setenv(native.ENV_SWITCH, "sometimes")
    with pytest.raises(ValueError, match="SB3_GMM_NATIVE='sometimes'.*auto, 0 \\(off\\) or 1"):
        gmm_entropy(logits, means, stds)
    native.reset()
    monkeypatch.setenv(native.ENV_SWITCH, "0")
    assert native.library(th.float32) is None and native.build_error(th.float32) is None  # not even tried


@needs_kernel
def test_disabled_block_uses_the_torch_path_in_this_thread_only(fresh_native, kernel_calls):
    logits, means, log_stds = _mixture((6,), 3, 2, th.float64)
    stds = log_stds.exp().expand_as(means)
    with native.disabled():
        with native.disabled():
            inside = gmm_entropy(logits, means, stds, rule_nd="per_component")
        assert native.library(th.float64) is None  # still inside the outer block
    assert kernel_calls == []
    outside = gmm_entropy(logits, means, stds, rule_nd="per_component")
    assert kernel_calls == [6]
    th.testing.assert_close(inside, outside, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------------
# The mixture log density (sb3_gmm.mixture.mixture_log_prob).


def _log_prob_and_grads(batch_shape, n_components: int, dim: int, dtype: th.dtype, shared_std: bool):
    logits, means, log_stds = _mixture(batch_shape, n_components, dim, dtype, seed=5)
    generator = th.Generator().manual_seed(9)
    if not shared_std:
        noise = th.randn(*batch_shape, n_components, dim, generator=generator, dtype=dtype)
        log_stds = (log_stds.detach() + 0.3 * noise).requires_grad_()
    x = means.detach()[..., 0, :] + th.randn(*batch_shape, dim, generator=generator, dtype=dtype)
    x.requires_grad_()
    log_weights = th.log_softmax(logits, -1)
    value = mixture_log_prob(x, log_weights, means, log_stds.exp(), log_stds=log_stds)
    weights = th.linspace(0.5, 2.0, value.numel(), dtype=dtype).view_as(value)
    grads = th.autograd.grad((weights * value).sum(), (x, logits, means, log_stds))
    return (value.detach(), *grads)


@needs_kernel
@pytest.mark.parametrize("dtype", [th.float64, th.float32])
@pytest.mark.parametrize("batch_shape", [(7,), (3, 5)])
@pytest.mark.parametrize("n_components,dim,shared_std", [(4, 1, True), (3, 6, False), (8, 2, True)])
def test_log_prob_kernel_equals_the_torch_formula(
    monkeypatch, fresh_native, log_prob_calls, dtype, batch_shape, n_components, dim, shared_std
):
    def compute():
        return _log_prob_and_grads(batch_shape, n_components, dim, dtype, shared_std)

    # float32: the x gradient sums r_k z_k / s_k over components, which cancel; rounding differs at ~1e-4 there.
    _assert_kernel_equals_torch(monkeypatch, log_prob_calls, compute, batch_shape, dict(rtol=1e-4, atol=1e-4), dtype)


@needs_kernel
def test_log_prob_kernel_gradcheck_and_second_derivatives(fresh_native, log_prob_calls):
    logits, means, log_stds = _mixture((4,), 3, 2, th.float64, seed=6)
    x = (means.detach()[:, 1] + 0.5).requires_grad_()

    def log_prob(x, logits, means, log_stds):
        return mixture_log_prob(x, th.log_softmax(logits, -1), means, log_stds.exp(), log_stds=log_stds)

    assert th.autograd.gradcheck(log_prob, (x, logits, means, log_stds))
    assert log_prob_calls
    assert th.autograd.gradgradcheck(log_prob, (x, logits, means, log_stds))


@needs_kernel
def test_log_prob_kernel_nan_in_nan_out_and_layouts_it_does_not_take(fresh_native, log_prob_calls):
    logits, means, log_stds = _mixture((5,), 3, 2, th.float32)
    log_weights, stds = th.log_softmax(logits, -1).detach(), log_stds.exp().detach()
    x = th.randn(5, 2)
    x[2, 1] = float("nan")
    value = mixture_log_prob(x, log_weights, means.detach(), stds)
    assert log_prob_calls == [5]
    assert th.isnan(value[2]) and th.isfinite(value[[0, 1, 3, 4]]).all()
    # Several points per parameter set (x [S, B, D] against [B, K, D]) is the torch formula's broadcasting.
    many = th.randn(4, 5, 2)
    value = mixture_log_prob(many, log_weights, means.detach(), stds)
    assert value.shape == (4, 5) and log_prob_calls == [5]


# ---------------------------------------------------------------------------------------------------------------------
# qmc's 1-D union rule (rule_1d="union").


@needs_kernel
@pytest.mark.parametrize("dtype", [th.float64, th.float32])
@pytest.mark.parametrize("batch_shape", [(7,), (3, 5)])
@pytest.mark.parametrize("n_components", [2, 4, 8])
def test_union_kernel_equals_the_torch_path(monkeypatch, fresh_native, union_calls, dtype, batch_shape, n_components):
    def compute():
        return _value_and_grads("qmc", dict(rule_1d="union"), batch_shape, n_components, 1, dtype)

    _assert_kernel_equals_torch(monkeypatch, union_calls, compute, batch_shape, dict(rtol=1e-4, atol=1e-4), dtype)


@needs_kernel
@pytest.mark.parametrize("dtype", [th.float64, th.float32])
def test_union_kernel_equals_the_torch_path_where_the_weights_spread_widely(
    monkeypatch, fresh_native, union_calls, dtype
):
    """The kernel takes one exp per (component, node) where the element's log weights minus log stds span little,
    and two elsewhere (near one-hot weights, very different widths): both branches in one batch, against torch."""
    spreads = th.tensor([[0.0, -1.0, 0.5], [0.0, -30.0, -2.0], [0.0, -80.0, -3.0], [0.0, -5.0, -300.0]], dtype=dtype)
    log_stds = th.tensor([[0.0], [-4.0], [2.0]], dtype=dtype).requires_grad_()
    means = th.tensor([[-1.0], [0.0], [2.0]], dtype=dtype).expand(4, 3, 1).clone().requires_grad_()
    logits = spreads.clone().requires_grad_()

    def compute():
        entropy = gmm_entropy(logits, means, log_stds.exp().expand(4, 3, 1), rule_1d="union")
        return (entropy.detach(), *th.autograd.grad(entropy.sum(), (logits, means, log_stds)))

    _assert_kernel_equals_torch(monkeypatch, union_calls, compute, (4,), dict(rtol=1e-4, atol=1e-4), dtype)


@needs_kernel
def test_union_kernel_gradcheck_second_derivatives_and_nan(fresh_native, union_calls):
    logits, means, log_stds = _mixture((3,), 3, 1, th.float64, seed=8)

    def entropy(logits, means, log_stds):
        return gmm_entropy(logits, means, log_stds.exp().expand_as(means), rule_1d="union")

    assert th.autograd.gradcheck(entropy, (logits, means, log_stds))
    assert union_calls
    assert th.autograd.gradgradcheck(entropy, (logits, means, log_stds))
    means = means.detach().clone()
    means[1, 0, 0] = float("nan")
    with validation(False):
        value = gmm_entropy(logits.detach(), means, log_stds.detach().exp().expand_as(means), rule_1d="union")
    assert th.isnan(value[1]) and th.isfinite(value[[0, 2]]).all()
