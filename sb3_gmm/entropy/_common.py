"""Pieces shared by every estimator: argument checks, Gaussian closed forms and pairwise statistics.

Everything here is pure torch and works on explicit batch shapes: ``logits [..., K]``, ``means [..., K, D]``,
``stds [..., K, D]`` (diagonal covariances).
"""

import math
from functools import lru_cache
from typing import NamedTuple

import torch as th

from sb3_gmm.mixture import (  # noqa: F401  (re-exported)
    LOG_2PI,
    diag_gaussian_kl,
    max_scaled_distance,
    mixture_log_prob,
)

LOG_2PI_E = math.log(2.0 * math.pi * math.e)
# The estimator used when none is named. Kept here, below every estimator module, so that their error messages can
# name it (series.CHEAPER_METHODS) without importing the package; sb3_gmm.entropy re-exports it.
DEFAULT_METHOD = "qmc"  # 64 points per component; see docs/entropy_accuracy.md for why
# Half-precision inputs are evaluated in float32: at a policy's std floor (0.0067) the squared distances in std units
# reach ~4e5, beyond float16's largest number (65504), and bfloat16's 8 mantissa bits make exponents of that size
# meaningless.
HALF_DTYPES = (th.float16, th.bfloat16)


def compute_dtype(dtype: th.dtype) -> th.dtype:
    """The dtype the estimators compute in for inputs of ``dtype``: float32 for float16 / bfloat16, else ``dtype``."""
    return th.float32 if dtype in HALF_DTYPES else dtype


@lru_cache(maxsize=16)  # th.finfo costs about a microsecond, every call
def smallest_std(dtype: th.dtype) -> float:
    """The smallest std the estimators support for inputs of ``dtype``: the smallest normal number of the dtype they
    compute in (1.2e-38 for float32 and half inputs). Below it ``1 / std`` and ``exp(-log std)`` overflow to inf,
    which the estimators' zero weights would turn into ``0 * inf = NaN``."""
    return th.finfo(compute_dtype(dtype)).tiny


class MixtureParams(NamedTuple):
    """The parameters every estimator receives, in the form they all need.

    :param log_weights: normalised log mixture weights ``[..., K]``
    :param means: component means ``[..., K, D]``
    :param stds: component standard deviations ``[..., K, D]``
    :param log_stds: ``stds.log()``, computed once because nearly every estimator needs it
    """

    log_weights: th.Tensor
    means: th.Tensor
    stds: th.Tensor
    log_stds: th.Tensor

    @property
    def n_components(self) -> int:
        return self.means.shape[-2]

    @property
    def dim(self) -> int:
        return self.means.shape[-1]


def check_mixture_args(logits: th.Tensor, means: th.Tensor, stds: th.Tensor) -> None:
    """Raise a ValueError naming the argument when the mixture parameters are malformed.

    :param logits: unnormalised log weights ``[..., K]``
    :param means: component means ``[..., K, D]``
    :param stds: component standard deviations ``[..., K, D]``
    """
    for name, value in (("logits", logits), ("means", means), ("stds", stds)):
        if not isinstance(value, th.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {value.dtype}; call .float() first")
    if logits.dim() < 1:
        raise ValueError(f"logits must have shape [..., K], got a scalar (shape {tuple(logits.shape)})")
    if means.dim() < 2:
        raise ValueError(f"means must have shape [..., K, D], got shape {tuple(means.shape)}")
    if stds.shape != means.shape:
        raise ValueError(
            f"stds must have the same shape as means [..., K, D]: got stds {tuple(stds.shape)} and means "
            f"{tuple(means.shape)}; expand a shared std with stds.expand_as(means)"
        )
    if logits.shape != means.shape[:-1]:
        raise ValueError(
            f"logits must have shape means.shape[:-1] = {tuple(means.shape[:-1])} (batch shape and K components), "
            f"got {tuple(logits.shape)}"
        )
    if means.shape[-2] < 1 or means.shape[-1] < 1:
        raise ValueError(f"means needs at least one component and one dimension, got shape {tuple(means.shape)}")
    if not (logits.dtype == means.dtype == stds.dtype):
        raise ValueError(
            f"logits, means and stds must share one dtype, got {logits.dtype}, {means.dtype}, {stds.dtype}"
        )
    if not (logits.device == means.device == stds.device):
        raise ValueError(
            f"logits, means and stds must be on one device, got {logits.device}, {means.device}, {stds.device}"
        )
    smallest = smallest_std(stds.dtype)
    with th.no_grad():
        # One fused test on the happy path, read with a single device sync: NaN, inf, stds <= 0 and stds below the
        # supported minimum all make this sum non-finite (the log of s - smallest / 2 is NaN or -inf below half of
        # it; in [smallest / 2, smallest) the estimators still work). The per-argument checks below run only to name
        # the culprit, and pass if the sum merely overflowed. Half precision sums in float32 so that a large batch
        # does not overflow float16.
        accumulate = compute_dtype(stds.dtype)
        if accumulate != stds.dtype:
            logits, means, stds = logits.to(accumulate), means.to(accumulate), stds.to(accumulate)
        log_margins = (stds - 0.5 * smallest).log()
        total = logits.sum() + means.sum() + log_margins.sum()
        if bool(th.isfinite(total)):
            return
        if not th.isfinite(logits).all():
            raise ValueError(
                "logits contains NaN or inf; switch a component off with a large negative finite logit (e.g. -50)"
            )
        if not th.isfinite(means).all():
            raise ValueError("means contains NaN or inf")
        if not th.isfinite(stds).all():
            raise ValueError("stds contains NaN or inf")
        if not (stds > 0).all():
            raise ValueError(
                f"stds must be strictly positive, got a minimum of {stds.min().item():.3g}; "
                "parameterise them as log_std.exp() or softplus(x) + min_std"
            )
        if not th.isfinite(log_margins).all():
            dtype_name = str(accumulate).replace("torch.", "")
            raise ValueError(
                f"stds must be at least {smallest:.3g} (the smallest normal {dtype_name} number: below it 1 / std "
                f"overflows), got a minimum of {stds.min().item():.3g}; raise the std floor, e.g. "
                "log_std.clamp(min=-20).exp()"
            )


def mixture_params(logits: th.Tensor, means: th.Tensor, stds: th.Tensor) -> MixtureParams:
    """Normalise the weights and take the log of the stds once for all estimators."""
    return MixtureParams(th.log_softmax(logits, dim=-1), means, stds, stds.log())


def gaussian_entropies(log_stds: th.Tensor) -> th.Tensor:
    """Entropy of each diagonal Gaussian component: ``0.5 D log(2 pi e) + sum_d log s_d``, shape ``[..., K]``."""
    return 0.5 * log_stds.shape[-1] * LOG_2PI_E + log_stds.sum(-1)


def component_log_normalisers(log_stds: th.Tensor) -> th.Tensor:
    """``log N(mu_i; mu_i, S_i) = -0.5 D log(2 pi) - sum_d log s_d`` (the peak log density), shape ``[..., K]``."""
    return -0.5 * log_stds.shape[-1] * LOG_2PI - log_stds.sum(-1)


def weighted_sum(log_weights: th.Tensor, values: th.Tensor) -> th.Tensor:
    """``sum_i w_i values_i`` over the component axis (the last one)."""
    return (log_weights.exp() * values).sum(-1)


def weight_entropy(log_weights: th.Tensor) -> th.Tensor:
    """Entropy of the mixture weights ``H(w) = -sum_i w_i log w_i`` (0 log 0 = 0 holds numerically)."""
    return -weighted_sum(log_weights, log_weights)


def pairwise_differences(means: th.Tensor) -> th.Tensor:
    """``mu_i - mu_j`` for every ordered pair, shape ``[..., K, K, D]`` (index i then j)."""
    return means.unsqueeze(-2) - means.unsqueeze(-3)


def _scaled_pairwise_differences(params: MixtureParams, log_variances: th.Tensor) -> th.Tensor:
    """``(mu_i - mu_j) / sqrt(V_ij)`` from ``log V_ij`` ``[..., K, K, D]``, capped by :func:`max_scaled_distance`.

    Scaling the difference before squaring (rather than dividing its square by ``V``) keeps a coincident pair at 0
    instead of ``0 * inf`` when the stds are so small that ``V`` underflows.
    """
    limit = max_scaled_distance(params.means.dtype)
    return (pairwise_differences(params.means) * th.exp(-0.5 * log_variances)).clamp(-limit, limit)


def log_pairwise_overlaps(params: MixtureParams) -> th.Tensor:
    """``log N(mu_i; mu_j, S_i + S_j)`` for every pair, shape ``[..., K, K]`` (the Gaussian product integral).

    Written in log stds: squared stds underflow in float32 below ~1e-19 (``log(s_i^2 + s_j^2)`` does not).
    """
    log_variances = 2.0 * params.log_stds
    log_summed_variances = th.logaddexp(log_variances.unsqueeze(-2), log_variances.unsqueeze(-3))
    scaled = _scaled_pairwise_differences(params, log_summed_variances)
    return -0.5 * (params.dim * LOG_2PI + log_summed_variances.sum(-1) + scaled.square().sum(-1))


def pairwise_kl(params: MixtureParams) -> th.Tensor:
    """``KL(N_i || N_j)`` for every pair, shape ``[..., K, K]``."""
    means, log_stds = params.means, params.log_stds
    return diag_gaussian_kl(
        means.unsqueeze(-2), log_stds.unsqueeze(-2), means.unsqueeze(-3), log_stds.unsqueeze(-3)
    ).sum(-1)


def pairwise_chernoff(params: MixtureParams, alpha: float) -> th.Tensor:
    """Chernoff alpha-divergence ``C_a(N_i || N_j) = -log integral N_i^(1-a) N_j^a dx``, shape ``[..., K, K]``.

    ``S_a = (1 - a) S_i + a S_j``; the determinant exponents follow the same convention (``|S_i|^(1-a) |S_j|^a``).
    Checked against quadrature of that integral in the tests; the mirrored reading swaps ``a`` and ``1 - a``.
    Written in log stds like :func:`log_pairwise_overlaps`.
    """
    log_variances = 2.0 * params.log_stds
    # log S_a = logaddexp(log(1 - a) + log S_i, log a + log S_j); a weight of 0 drops its term (log 0 = -inf).
    log_share_i = math.log(1.0 - alpha) if alpha < 1.0 else -math.inf
    log_share_j = math.log(alpha) if alpha > 0.0 else -math.inf
    log_mixed = th.logaddexp(log_variances.unsqueeze(-2) + log_share_i, log_variances.unsqueeze(-3) + log_share_j)
    scaled = _scaled_pairwise_differences(params, log_mixed)
    log_det_term = log_mixed - 2.0 * (
        (1.0 - alpha) * params.log_stds.unsqueeze(-2) + alpha * params.log_stds.unsqueeze(-3)
    )
    return (0.5 * alpha * (1.0 - alpha) * scaled.square() + 0.5 * log_det_term).sum(-1)


def pairwise_estimate(params: MixtureParams, log_kernel: th.Tensor) -> th.Tensor:
    """Kolchinsky & Tracey's pairwise family: ``sum_i w_i H_i - sum_i w_i logsumexp_j(log w_j + log_kernel_ij)``.

    :param log_kernel: ``-Dist(p_i || p_j)`` for every pair, shape ``[..., K, K]``
    """
    inner = th.logsumexp(params.log_weights.unsqueeze(-2) + log_kernel, dim=-1)
    return weighted_sum(params.log_weights, gaussian_entropies(params.log_stds) - inner)
