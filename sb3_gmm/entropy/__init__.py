"""Deterministic, differentiable entropy estimates for batches of diagonal Gaussian mixtures (pure torch).

>>> import torch as th
>>> from sb3_gmm.entropy import gmm_entropy
>>> logits, means, stds = th.zeros(8, 3), th.randn(8, 3, 2), th.ones(8, 3, 2)
>>> gmm_entropy(logits, means, stds).shape
torch.Size([8])

``ESTIMATORS`` maps every method name to its function and properties (bound, cost, options).
"""

from typing import Any, Optional

import torch as th

from sb3_gmm.entropy import bounds, huber_taylor, quadrature, series  # noqa: F401  (registers the estimators)
from sb3_gmm.entropy._common import MixtureParams, check_mixture_args, mixture_log_prob, mixture_params
from sb3_gmm.entropy.registry import ESTIMATORS, EstimatorInfo, Option

DEFAULT_METHOD = "qmc"  # 64 points per component; see docs/entropy_accuracy.md for why

_validate_args = True


def set_validate_args(value: bool) -> None:
    """Switch argument checks of :func:`gmm_entropy` on or off globally (off saves a device sync per call)."""
    global _validate_args
    _validate_args = bool(value)


def get_estimator(method: Optional[str]) -> EstimatorInfo:
    """The registry entry for ``method`` (None means the library default), with a helpful error for a typo."""
    name = DEFAULT_METHOD if method is None else method
    if name not in ESTIMATORS:
        raise ValueError(f"unknown entropy method {name!r}; choose one of: {', '.join(sorted(ESTIMATORS))}")
    return ESTIMATORS[name]


def gmm_entropy(
    logits: th.Tensor,
    means: th.Tensor,
    stds: th.Tensor,
    method: Optional[str] = None,
    validate_args: Optional[bool] = None,
    **options: Any,
) -> th.Tensor:
    """Entropy in nats of a batch of diagonal Gaussian mixtures.

    :param logits: unnormalised log mixture weights ``[..., K]``
    :param means: component means ``[..., K, D]``
    :param stds: component standard deviations ``[..., K, D]`` (strictly positive)
    :param method: a name from :data:`ESTIMATORS`; None selects the library default
    :param validate_args: check shapes and values (None follows :func:`set_validate_args`)
    :param options: the method's options, e.g. ``order=4`` for ``taylor``
    :return: ``[...]``, same dtype and device as the inputs, differentiable w.r.t. all three
    """
    estimator = get_estimator(method)
    resolved = estimator.resolve_options(options)
    if _validate_args if validate_args is None else validate_args:
        check_mixture_args(logits, means, stds)
    return estimator.fn(mixture_params(logits, means, stds), **resolved)


def mixture_entropy(
    params: MixtureParams, method: Optional[str] = None, validate_args: Optional[bool] = None, **options: Any
) -> th.Tensor:
    """:func:`gmm_entropy` for parameters already prepared as :class:`MixtureParams`.

    For callers that also need the normalised log weights and log stds themselves (a policy computing log_prob
    and entropy of one batch): they are computed once and shared instead of again per call.

    :param params: ``MixtureParams(log_weights, means, stds, log_stds)`` with ``log_weights`` normalised
    :param method: a name from :data:`ESTIMATORS`; None selects the library default
    :param validate_args: check shapes and values (None follows :func:`set_validate_args`)
    :param options: the method's options
    """
    estimator = get_estimator(method)
    resolved = estimator.resolve_options(options)
    if _validate_args if validate_args is None else validate_args:
        check_mixture_args(params.log_weights, params.means, params.stds)
        if params.log_stds.shape != params.stds.shape:
            raise ValueError(
                f"params.log_stds must have the shape of params.stds {tuple(params.stds.shape)}, "
                f"got {tuple(params.log_stds.shape)}"
            )
    return estimator.fn(params, **resolved)


__all__ = [
    "DEFAULT_METHOD",
    "ESTIMATORS",
    "EstimatorInfo",
    "MixtureParams",
    "Option",
    "get_estimator",
    "gmm_entropy",
    "mixture_entropy",
    "mixture_log_prob",
    "set_validate_args",
]
