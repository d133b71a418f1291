"""Bad input to ``sb3_gmm.entropy.gmm_entropy``: every mistake is a ValueError that names the argument.

Also: validation can be switched off per call, per thread and globally (and the switch really skips the checks).
"""

import math
from typing import Any, Dict, Iterator

import pytest
import torch as th

import sb3_gmm.entropy as entropy
from sb3_gmm.entropy import ESTIMATORS, get_validate_args, gmm_entropy, set_validate_args, smallest_std, validation

BATCH, K, D = 4, 3, 2


def valid_inputs(dtype: th.dtype = th.float32):
    generator = th.Generator().manual_seed(0)
    logits = th.randn(BATCH, K, generator=generator).to(dtype)
    means = th.randn(BATCH, K, D, generator=generator).to(dtype)
    stds = (th.rand(BATCH, K, D, generator=generator) + 0.5).to(dtype)
    return logits, means, stds


@pytest.fixture
def restore_validate_args() -> Iterator[None]:
    previous = entropy._validate_args
    try:
        yield
    finally:
        set_validate_args(previous)


def with_value(tensor: th.Tensor, index: Any, value: float) -> th.Tensor:
    changed = tensor.clone()
    changed[index] = value
    return changed


logits, means, stds = valid_inputs()
SHAPE_ERRORS = {
    "stds with a different D": ((logits, means, stds[..., :1]), "stds"),
    "stds with a different K": ((logits, means, stds[:, :2]), "stds"),
    "means with a different D": ((logits, means[..., :1], stds), "stds"),
    "logits with a different K": ((logits[:, :2], means, stds), "logits"),
    "logits with a different batch": ((logits[:2], means, stds), "logits"),
    "logits without the batch": ((logits[0], means, stds), "logits"),
    "logits broadcast over a batch": ((logits, means[0], stds[0]), "logits"),
    "scalar logits": ((th.tensor(0.0), means, stds), "logits"),
    "means without D": ((logits, means[..., 0], stds[..., 0]), "logits|means"),
    "1-D means": ((logits[0, :1], means[0, 0], stds[0, 0]), "means"),
    "no components": ((logits[:, :0], means[:, :0], stds[:, :0]), "means"),
    "no dimensions": ((logits, means[..., :0], stds[..., :0]), "means"),
    "numpy logits": ((logits.numpy(), means, stds), "logits"),
    "list means": ((logits, means.tolist(), stds), "means"),
    "integer stds": ((logits, means, th.ones(BATCH, K, D, dtype=th.int64)), "stds"),
    "mixed dtypes": ((logits.double(), means, stds), "logits, means and stds"),
    "mixed devices": ((logits.to("meta"), means, stds), "logits, means and stds"),
}
VALUE_ERRORS = {
    "zero std": ((logits, means, with_value(stds, (1, 2, 0), 0.0)), "stds"),
    "negative std": ((logits, means, with_value(stds, (0, 0, 1), -0.5)), "stds"),
    "inf std": ((logits, means, with_value(stds, (3, 1, 1), math.inf)), "stds"),
    "nan std": ((logits, means, with_value(stds, (2, 0, 0), math.nan)), "stds"),
    "subnormal std": ((logits, means, with_value(stds, (2, 1, 0), 1e-40)), "stds must be at least 1.18e-38"),
    "nan mean": ((logits, with_value(means, (2, 1, 0), math.nan), stds), "means"),
    "inf mean": ((logits, with_value(means, (0, 1, 1), -math.inf), stds), "means"),
    "nan logit": ((with_value(logits, (1, 1), math.nan), means, stds), "logits"),
    "inf logit": ((with_value(logits, (1, 0), -math.inf), means, stds), "logits"),
}


@pytest.mark.parametrize("inputs,argument", SHAPE_ERRORS.values(), ids=SHAPE_ERRORS.keys())
def test_malformed_inputs_name_the_argument(inputs, argument: str):
    with pytest.raises(ValueError, match=argument):
        gmm_entropy(*inputs)


@pytest.mark.parametrize("inputs,argument", VALUE_ERRORS.values(), ids=VALUE_ERRORS.keys())
@pytest.mark.parametrize("method", sorted(ESTIMATORS))
def test_bad_values_name_the_argument(inputs, argument: str, method: str):
    with pytest.raises(ValueError, match=argument):
        gmm_entropy(*inputs, method=method)


@pytest.mark.parametrize("dtype", [th.float32, th.float64], ids=str)
def test_bad_values_are_caught_in_every_dtype(dtype: th.dtype):
    logits, means, stds = valid_inputs(dtype)
    with pytest.raises(ValueError, match="stds must be strictly positive"):
        gmm_entropy(logits, means, -stds)
    with pytest.raises(ValueError, match="means contains NaN"):
        gmm_entropy(logits, with_value(means, (0, 0, 0), math.nan), stds)


def test_large_finite_inputs_are_accepted():
    """The fused finiteness check must not reject valid inputs whose plain sum overflows."""
    logits, means, stds = valid_inputs()
    huge_means = th.full_like(means, 3.0e38)
    value = gmm_entropy(logits, huge_means, stds, method="component_average")
    assert th.isfinite(value).all()


def test_unknown_method_lists_the_choices():
    with pytest.raises(ValueError, match="unknown entropy method 'qcm'.*qmc"):
        gmm_entropy(*valid_inputs(), method="qcm")


BAD_OPTIONS = [
    ("taylor", {"order": 21}, "order"),
    ("taylor", {"order": -1}, "order"),
    ("taylor", {"order": 2.0}, "order"),
    ("taylor", {"order": True}, "order"),
    ("taylor", {"max_terms": 0}, "max_terms"),
    ("taylor_limit", {"order": 1}, "order"),
    ("legendre", {"order": 25}, "order"),
    ("huber_taylor", {"order": 3}, "order"),
    ("huber_taylor", {"order": 2.0}, "order"),
    ("huber_taylor", {"order": False}, "order"),
    ("pairwise_chernoff", {"alpha": 1.5}, "alpha"),
    ("pairwise_chernoff", {"alpha": -0.1}, "alpha"),
    ("pairwise_chernoff", {"alpha": math.nan}, "alpha"),
    ("pairwise_chernoff", {"alpha": "half"}, "alpha"),
    ("qmc", {"n_points": 1}, "n_points"),
    ("qmc", {"n_points": 10**6}, "n_points"),
    ("qmc", {"seed": -1}, "seed"),
    ("qmc", {"integrand": "entropy"}, "integrand"),
    ("sigma_points", {"integrand": None}, "integrand"),
    ("sigma_points", {"degree": 4}, "degree"),
    ("sigma_points", {"degree": 3.0}, "degree"),
    ("sigma_points", {"kappa": -1.0}, "kappa"),
    ("sigma_points", {"kappa": math.inf}, "kappa"),
    ("monte_carlo", {"n_samples": 0}, "n_samples"),
    ("monte_carlo", {"seed": "a"}, "seed"),
    ("monte_carlo", {"seed": 1.5}, "seed"),
]


@pytest.mark.parametrize(
    "method,options,argument",
    [pytest.param(*bad, id=f"{bad[0]}-{bad[1]}") for bad in BAD_OPTIONS],
)
def test_out_of_range_options_name_the_option(method: str, options: Dict[str, Any], argument: str):
    with pytest.raises(ValueError, match=f"option '{argument}' of method '{method}'"):
        gmm_entropy(*valid_inputs(), method=method, **options)


@pytest.mark.parametrize("method", sorted(ESTIMATORS))
def test_unknown_options_are_named(method: str):
    with pytest.raises(ValueError, match=f"method '{method}' got unknown option.*'n_point'"):
        gmm_entropy(*valid_inputs(), method=method, n_point=8)


def test_options_of_the_default_method_are_checked():
    with pytest.raises(ValueError, match="unknown option.*'order'"):
        gmm_entropy(*valid_inputs(), order=4)


@pytest.mark.parametrize("method", ["taylor", "taylor_limit", "legendre"])
def test_series_refuse_term_counts_that_exhaust_memory(method: str):
    logits, means, stds = th.zeros(2, 16), th.zeros(2, 16, 3), th.ones(2, 16, 3)
    with pytest.raises(ValueError, match=r"order=8 with K=16 components needs 2,042,958 moment terms.*qmc"):
        gmm_entropy(logits, means, stds, method=method, order=8)
    # A batch whose intermediates alone would take GiBs is refused too, even with max_terms raised.
    logits, means, stds = th.zeros(4096, 8), th.zeros(4096, 8, 6), th.ones(4096, 8, 6)
    with pytest.raises(ValueError, match="order=8 with K=8 needs .* moment statistics alone would take .* GiB"):
        gmm_entropy(logits, means, stds, method=method, order=8, max_terms=10**6)


@pytest.mark.parametrize("method", sorted(ESTIMATORS))
def test_validation_can_be_switched_off_per_call(method: str):
    logits, means, stds = valid_inputs()
    negative = with_value(stds, (0, 0, 0), -1.0)
    options = {"seed": 0} if method == "monte_carlo" else {}
    gmm_entropy(logits, means, negative, method=method, validate_args=False, **options)  # no ValueError
    # Options are still checked: they cost nothing and a typo there is never intended.
    with pytest.raises(ValueError, match="unknown option"):
        gmm_entropy(logits, means, negative, method=method, validate_args=False, bogus=1)


def test_validation_can_be_switched_off_globally(restore_validate_args):
    logits, means, stds = valid_inputs()
    negative = with_value(stds, (0, 0, 0), -1.0)
    set_validate_args(False)
    for method in sorted(ESTIMATORS):
        gmm_entropy(logits, means, negative, method=method)  # no ValueError
    with pytest.raises(ValueError, match="stds"):
        gmm_entropy(logits, means, negative, validate_args=True)  # an explicit argument wins over the global flag
    set_validate_args(True)
    with pytest.raises(ValueError, match="stds"):
        gmm_entropy(logits, means, negative)
    gmm_entropy(logits, means, negative, validate_args=False)


def test_validation_context_is_scoped_and_nests(restore_validate_args):
    logits, means, stds = valid_inputs()
    negative = with_value(stds, (0, 0, 0), -1.0)
    with validation(False):
        assert not get_validate_args()
        gmm_entropy(logits, means, negative)  # no ValueError
        with validation(True):
            with pytest.raises(ValueError, match="stds"):
                gmm_entropy(logits, means, negative)
        gmm_entropy(logits, means, negative)  # the outer block's setting is back
        with pytest.raises(ValueError, match="stds"):
            gmm_entropy(logits, means, negative, validate_args=True)  # an explicit argument wins
    assert get_validate_args()
    with pytest.raises(ValueError, match="stds"):
        gmm_entropy(logits, means, negative)
    # A block in this thread overrides the process-wide default; leaving it falls back to that default.
    set_validate_args(False)
    with validation(True):
        with pytest.raises(ValueError, match="stds"):
            gmm_entropy(logits, means, negative)
    gmm_entropy(logits, means, negative)


@pytest.mark.parametrize("dtype", [th.float16, th.bfloat16, th.float32, th.float64], ids=str)
def test_smallest_supported_std_is_named_per_dtype(dtype: th.dtype):
    """Below the smallest normal number of the compute dtype (float32 for half inputs) 1 / std overflows: refused
    with that value. The smallest std itself is accepted and gives a finite estimate."""
    compute = th.float32 if dtype in (th.float16, th.bfloat16) else dtype
    smallest = smallest_std(dtype)
    assert smallest == th.finfo(compute).tiny
    logits, means, stds = valid_inputs(dtype)
    # float16 cannot hold 1.2e-38 at all: its smallest normal number stands in.
    floor = th.full_like(stds, max(smallest, th.finfo(dtype).tiny))
    assert th.isfinite(gmm_entropy(logits, means, floor)).all()
    if dtype != th.float16:
        with pytest.raises(ValueError, match=f"stds must be at least {smallest:.3g}"):
            gmm_entropy(logits, means, th.full_like(stds, smallest / 4))


def test_validation_does_not_change_valid_results():
    logits, means, stds = valid_inputs(th.float64)
    for method in sorted(name for name, info in ESTIMATORS.items() if info.deterministic):
        checked = gmm_entropy(logits, means, stds, method=method)
        unchecked = gmm_entropy(logits, means, stds, method=method, validate_args=False)
        assert th.equal(checked, unchecked), method


@pytest.mark.parametrize("method", ["qmc", "component_average", "pairwise_kl"])
def test_mixture_entropy_equals_gmm_entropy_and_validates(method):
    from sb3_gmm.entropy import MixtureParams, gmm_entropy, mixture_entropy

    th.manual_seed(0)
    logits, means, stds = th.randn(5, 3), th.randn(5, 3, 2), th.rand(5, 3, 2) + 0.2
    params = MixtureParams(th.log_softmax(logits, -1), means, stds, stds.log())
    assert th.allclose(mixture_entropy(params, method=method), gmm_entropy(logits, means, stds, method=method))
    with pytest.raises(ValueError, match="means"):
        mixture_entropy(params._replace(means=means.clone().fill_(float("nan"))), method=method)
    with pytest.raises(ValueError, match="log_stds"):
        mixture_entropy(params._replace(log_stds=stds.log()[0]), method=method)
