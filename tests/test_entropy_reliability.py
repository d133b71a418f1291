"""Silent wrong answers the entropy library must not give (issue 11, items 1-4).

Second derivatives of the fused estimators, half precision and autocast, tiny stds, the series memory guard, and
argument checks switched off in one thread only.
"""

import math
import threading
import time
from typing import Any, Dict, Tuple

import pytest
import torch as th

from sb3_gmm.entropy import (
    DEFAULT_METHOD,
    ESTIMATORS,
    get_validate_args,
    gmm_entropy,
    series,
    set_validate_args,
    smallest_std,
    validation,
)

Mixture = Tuple[th.Tensor, th.Tensor, th.Tensor]


def mixture(batch: Tuple[int, ...], n_components: int, dim: int, seed: int, dtype: th.dtype = th.float64) -> Mixture:
    generator = th.Generator().manual_seed(seed)
    logits = th.randn(*batch, n_components, generator=generator, dtype=th.float64)
    means = th.randn(*batch, n_components, dim, generator=generator, dtype=th.float64)
    stds = th.rand(*batch, n_components, dim, generator=generator, dtype=th.float64) + 0.5
    return logits.to(dtype), means.to(dtype), stds.to(dtype)


# ----------------------------------------------------------------------------------------------------------------------
# 1. Second derivatives of the fused estimators equal autograd's through the reference (fused=False).

FUSED_METHODS = [
    ("qmc", {}),
    ("qmc", {"integrand": "log_responsibility"}),
    ("sigma_points", {"degree": 3}),
    ("sigma_points", {"degree": 5}),
    ("monte_carlo", {"seed": 0, "n_samples": 16}),
]
FUSED_IDS = [method + "".join(f"-{key}{value}" for key, value in options.items()) for method, options in FUSED_METHODS]


def test_hessian_of_the_default_is_not_zero():
    """The issue's reproduction: ``hessian`` of the default estimator w.r.t. the means was all zeros."""
    logits, means, stds = mixture((), 3, 2, seed=0)
    hessian = th.autograd.functional.hessian(lambda m: gmm_entropy(logits, m, stds), means)
    reference = th.autograd.functional.hessian(lambda m: gmm_entropy(logits, m, stds, fused=False), means)
    assert reference.abs().max() > 0.01
    th.testing.assert_close(hessian, reference, rtol=0.0, atol=1e-12)


@pytest.mark.parametrize("method,options", FUSED_METHODS, ids=FUSED_IDS)
def test_hessian_matches_autograd_reference(method: str, options: Dict[str, Any]):
    """The full Hessian over (logits, means, stds) of a small batch's summed entropy, float64."""
    logits, means, stds = mixture((2,), 3, 2, seed=1)

    def summed(fused: bool):
        return lambda *inputs: gmm_entropy(*inputs, method=method, fused=fused, **options).sum()

    got = th.autograd.functional.hessian(summed(True), (logits, means, stds))
    expected = th.autograd.functional.hessian(summed(False), (logits, means, stds))
    largest = max(float(block.abs().max()) for row in expected for block in row)
    assert largest > 0.01
    for got_row, expected_row in zip(got, expected):
        for got_block, expected_block in zip(got_row, expected_row):
            th.testing.assert_close(got_block, expected_block, rtol=0.0, atol=1e-11)


@pytest.mark.parametrize("method,options", FUSED_METHODS, ids=FUSED_IDS)
def test_hessian_vector_products_and_jvp_match_reference(method: str, options: Dict[str, Any]):
    """hvp w.r.t. the logits (create_graph=True), and jvp, which autograd computes by a double backward through a
    zero incoming gradient (the case where the fused backward's all-zero shortcut must not fire)."""
    logits, means, stds = mixture((4,), 3, 2, seed=2)
    direction = th.randn(4, 3, dtype=th.float64, generator=th.Generator().manual_seed(3))

    def of_logits(fused: bool):
        return lambda z: gmm_entropy(z, means, stds, method=method, fused=fused, **options).sum()

    _, got = th.autograd.functional.hvp(of_logits(True), logits, direction)
    _, expected = th.autograd.functional.hvp(of_logits(False), logits, direction)
    assert expected.abs().max() > 1e-3
    th.testing.assert_close(got, expected, rtol=0.0, atol=1e-12)

    def of_means(fused: bool):
        return lambda m: gmm_entropy(logits, m, stds, method=method, fused=fused, **options)

    tangent = th.randn_like(means)
    _, got = th.autograd.functional.jvp(of_means(True), means, tangent)
    _, expected = th.autograd.functional.jvp(of_means(False), means, tangent)
    th.testing.assert_close(got, expected, rtol=0.0, atol=1e-12)


@pytest.mark.parametrize("method,options", FUSED_METHODS[:1] + FUSED_METHODS[2:3], ids=["qmc", "sigma_points"])
def test_gmm_entropy_passes_gradgradcheck(method: str, options: Dict[str, Any]):
    inputs = tuple(tensor.requires_grad_(True) for tensor in mixture((2,), 3, 2, seed=4))
    assert th.autograd.gradgradcheck(lambda *args: gmm_entropy(*args, method=method, **options), inputs)


@pytest.mark.parametrize("method", sorted(ESTIMATORS))
def test_every_method_is_twice_differentiable(method: str):
    """The promise of gmm_entropy's docstring: second derivatives of every method are autograd's, and a gradient
    taken with a graph equals the plain one."""
    options = {"seed": 0, "n_samples": 8} if method == "monte_carlo" else {}
    inputs = tuple(tensor.requires_grad_(True) for tensor in mixture((2,), 3, 2, seed=11))

    def estimate(*args: th.Tensor) -> th.Tensor:
        return gmm_entropy(*args, method=method, **options)

    with_graph = th.autograd.grad(estimate(*inputs).sum(), inputs, create_graph=True, allow_unused=True)
    plain = th.autograd.grad(estimate(*inputs).sum(), inputs, allow_unused=True)
    for got, expected in zip(with_graph, plain):
        assert (got is None) == (expected is None)
        if got is not None:
            th.testing.assert_close(got, expected, rtol=0.0, atol=1e-12)
    # gradgradcheck over the inputs the method depends on (component_average ignores the means).
    used = [index for index, grad in enumerate(plain) if grad is not None]

    def of_used(*used_inputs: th.Tensor) -> th.Tensor:
        args = [tensor.detach() for tensor in inputs]
        for index, tensor in zip(used, used_inputs):
            args[index] = tensor
        return estimate(*args)

    assert th.autograd.gradgradcheck(of_used, tuple(inputs[index] for index in used))


# ----------------------------------------------------------------------------------------------------------------------
# 2. Half precision, autocast and tiny stds.


def std_floor_mixture(dtype: th.dtype) -> Mixture:
    """A policy at its std floor: stds 0.0067 (log std -5), means in [-2, 2], K = 8, D = 6."""
    generator = th.Generator().manual_seed(5)
    logits = th.randn(16, 8, generator=generator, dtype=th.float64)
    means = th.empty(16, 8, 6, dtype=th.float64).uniform_(-2.0, 2.0, generator=generator)
    stds = th.full((16, 8, 6), 0.0067, dtype=th.float64)
    return logits.to(dtype), means.to(dtype), stds.to(dtype)


# Half the spacing of representable numbers at |H| ~ 16-32 nats, plus float32 rounding of the computation.
HALF_TOLERANCE = {th.float16: 0.5 * 2**-6 + 1e-4, th.bfloat16: 0.5 * 2**-3 + 1e-4}


@pytest.mark.parametrize("dtype", [th.float16, th.bfloat16], ids=str)
def test_half_precision_at_the_std_floor_matches_float64(dtype: th.dtype):
    """float16 returned NaN in every row here (squared distances in stds reach ~4e5 > 65504); now the inputs are
    evaluated in float32 and the result is the float64 one rounded to the input dtype."""
    logits, means, stds = (tensor.requires_grad_(True) for tensor in std_floor_mixture(dtype))
    value = gmm_entropy(logits, means, stds)
    assert value.dtype == dtype
    reference = gmm_entropy(*(tensor.detach().double() for tensor in (logits, means, stds)))
    assert th.isfinite(value).all()
    assert float((value.detach().double() - reference).abs().max()) <= HALF_TOLERANCE[dtype]
    value.float().sum().backward()
    for tensor in (logits, means, stds):
        assert tensor.grad.dtype == dtype and th.isfinite(tensor.grad).all()


@pytest.mark.parametrize("method", ["qmc", "sigma_points", "pairwise_kl", "huber_lower", "taylor"])
def test_autocast_does_not_change_the_estimate(method: str):
    """Under CPU autocast the matrix products would run in bfloat16: the estimators switch it off inside."""
    logits, means, stds = std_floor_mixture(th.float32)
    stds = stds * th.linspace(1.0, 30.0, 8).unsqueeze(-1)  # widths that overlap, so the estimate is not trivial
    plain = gmm_entropy(logits, means, stds, method=method)
    with th.autocast("cpu", dtype=th.bfloat16):
        autocast = gmm_entropy(logits, means, stds, method=method)
        half_inputs = gmm_entropy(logits.bfloat16(), means.bfloat16(), stds.bfloat16(), method=method)
    assert autocast.dtype == th.float32 and half_inputs.dtype == th.bfloat16
    th.testing.assert_close(autocast, plain, rtol=0.0, atol=0.0)
    # bfloat16 inputs under autocast: the float64 value of the rounded inputs, rounded to bfloat16.
    rounded = (tensor.bfloat16().double() for tensor in (logits, means, stds))
    reference = gmm_entropy(*rounded, method=method)
    assert float((half_inputs.double() - reference).abs().max()) <= HALF_TOLERANCE[th.bfloat16]


TINY_METHODS = sorted(name for name, info in ESTIMATORS.items() if info.deterministic)
TINY_STDS = [1e-20, 1e-30, smallest_std(th.float32)]
TINY_IDS = ["1e-20", "1e-30", "smallest"]
# These two reach sb3_gmm.mixture (component_log_joint, diag_gaussian_kl), whose (mu_i - mu_j) / s overflows to inf at
# the smallest stds, so their gradients are checked only down to 1e-30 (see the xfail below).
MIXTURE_MODULE_METHODS = ("huber_taylor", "pairwise_kl")


def tiny_mixture(std: float) -> Mixture:
    """The issue's case: float32 stds far below any policy's floor, means in [-2, 2], K = 8, D = 6."""
    generator = th.Generator().manual_seed(6)
    logits = th.randn(4, 8, generator=generator).requires_grad_(True)
    means = th.empty(4, 8, 6).uniform_(-2.0, 2.0, generator=generator).requires_grad_(True)
    return logits, means, th.full((4, 8, 6), std).requires_grad_(True)


def finite_gradients(value: th.Tensor, inputs: Mixture) -> bool:
    grads = th.autograd.grad(value.sum(), inputs, allow_unused=True)
    return all(grad is None or bool(th.isfinite(grad).all()) for grad in grads)


@pytest.mark.parametrize("method", TINY_METHODS)
@pytest.mark.parametrize("std", TINY_STDS, ids=TINY_IDS)
def test_tiny_float32_stds_are_finite_and_correct(method: str, std: float):
    """Valid float32 stds of 1e-20 gave NaN (their squares underflow, distances in stds overflow when squared);
    now values match float64 on the same inputs and gradients are finite."""
    inputs = tiny_mixture(std)
    value = gmm_entropy(*inputs, method=method)
    reference = gmm_entropy(*(tensor.detach().double() for tensor in inputs), method=method)
    assert th.isfinite(value).all()
    th.testing.assert_close(value.double(), reference, rtol=1e-6, atol=1e-4)
    if method != "huber_taylor" and (method not in MIXTURE_MODULE_METHODS or std >= 1e-30):
        assert finite_gradients(value, inputs)


@pytest.mark.xfail(
    strict=True,
    reason="sb3_gmm.mixture.component_log_joint divides by the stds: the backward of (x - mu) / s forms "
    "(x - mu) / s^2 = inf for s = 1e-20 in float32, times a zero weight = NaN (multiplying by exp(-log_stds) "
    "would not)",
)
@pytest.mark.parametrize("std", TINY_STDS[:1], ids=TINY_IDS[:1])
def test_huber_taylor_gradients_at_tiny_stds(std: float):
    inputs = tiny_mixture(std)
    assert finite_gradients(gmm_entropy(*inputs, method="huber_taylor"), inputs)


def test_subnormal_stds_are_refused_with_the_smallest_supported_value():
    logits, means, stds = mixture((2,), 3, 2, seed=7, dtype=th.float32)
    with pytest.raises(ValueError, match=r"stds must be at least 1.18e-38 \(the smallest normal float32 number"):
        gmm_entropy(logits, means, th.full_like(stds, 1e-40))


# ----------------------------------------------------------------------------------------------------------------------
# 3. The series memory guard counts every intermediate.


@pytest.mark.parametrize("method", ["taylor", "taylor_limit", "legendre"])
def test_series_guard_refuses_the_pair_count_matrix_quickly(method: str):
    """K = 300 at order 1 has only 45,150 terms but a [terms x 44,850 pairs] pair-count matrix of 15 GiB."""
    generator = th.Generator().manual_seed(8)
    logits, means, stds = th.zeros(1, 300), th.randn(1, 300, 1, generator=generator), th.ones(1, 300, 1)
    # taylor_limit needs order >= 2, whose 4.6 million terms only pass with max_terms raised.
    options = {"order": 2, "max_terms": 10**7} if method == "taylor_limit" else {"order": 1}
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"K=300 .*44,850 component pairs\] pair counts alone would take [\d.]+ GiB"):
        gmm_entropy(logits, means, stds, method=method, **options)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("n_components,order", [(3, 2), (5, 4), (8, 3)])
def test_series_guard_counts_the_real_intermediates(n_components: int, order: int):
    """The sizes the guard checks are those of the tensors the moments are built from."""
    counts = series.count_vectors(n_components, order + 1)[0]
    pair_counts = series._pair_counts(n_components, order + 1)[0]
    sizes = list(series.series_intermediates(n_components, order, batch_elements=7, dim=3).values())
    terms, pairs = counts.shape[0], pair_counts.shape[1]
    assert sizes == [counts.numel(), pair_counts.numel(), 7 * terms * 3, 7 * pairs * 3]


def test_series_error_names_the_default_method():
    assert repr(DEFAULT_METHOD) + " (the default)" in series.CHEAPER_METHODS
    assert series.CHEAPER_METHODS.count(repr(DEFAULT_METHOD)) == 1


# ----------------------------------------------------------------------------------------------------------------------
# 4. Validation switched off in one thread does not switch it off in another.


def test_validation_off_in_one_thread_keeps_checks_in_another():
    logits, means, stds = mixture((3,), 2, 2, seed=9, dtype=th.float32)
    nan_means = means.clone()
    nan_means[1, 0, 0] = math.nan
    inside_block, checked_elsewhere = threading.Event(), threading.Event()
    results: Dict[str, Any] = {}

    def unchecked_worker() -> None:
        with validation(False):
            inside_block.set()
            # The other thread checks while this one is inside its block.
            checked_elsewhere.wait(timeout=10)
            results["worker_setting"] = get_validate_args()
            results["worker_value"] = gmm_entropy(logits, nan_means, stds)

    worker = threading.Thread(target=unchecked_worker)
    worker.start()
    assert inside_block.wait(timeout=10)
    try:
        assert get_validate_args()
        with pytest.raises(ValueError, match="means contains NaN"):
            gmm_entropy(logits, nan_means, stds)
    finally:
        checked_elsewhere.set()
        worker.join(timeout=10)
    assert results["worker_setting"] is False
    assert th.isnan(results["worker_value"][1])  # unchecked, as asked, in that thread only


def test_global_switch_is_the_default_of_every_thread():
    logits, means, stds = mixture((3,), 2, 2, seed=10, dtype=th.float32)
    nan_means = means.clone()
    nan_means[0, 0, 0] = math.nan
    seen: Dict[str, bool] = {}

    def read(name: str) -> None:
        seen[name] = get_validate_args()

    try:
        set_validate_args(False)
        thread = threading.Thread(target=read, args=("off",))
        thread.start()
        thread.join()
        with validation(True):  # this thread opts back in regardless of the process-wide default
            with pytest.raises(ValueError, match="means"):
                gmm_entropy(logits, nan_means, stds)
    finally:
        set_validate_args(True)
    thread = threading.Thread(target=read, args=("on",))
    thread.start()
    thread.join()
    assert seen == {"off": False, "on": True}
