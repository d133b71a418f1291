"""Deterministic, differentiable entropy estimates for batches of diagonal Gaussian mixtures (pure torch).

>>> import torch as th
>>> from sb3_gmm.entropy import gmm_entropy
>>> logits, means, stds = th.zeros(8, 3), th.randn(8, 3, 2), th.ones(8, 3, 2)
>>> gmm_entropy(logits, means, stds).shape
torch.Size([8])

``ESTIMATORS`` maps every method name to its function and properties (bound, cost, options).
"""

import contextlib
import threading
from typing import Any, ContextManager, Iterator, Optional

import torch as th

from sb3_gmm.entropy import bounds, huber_taylor, quadrature, series  # noqa: F401  (registers the estimators)
from sb3_gmm.entropy._common import (
    DEFAULT_METHOD,
    MixtureParams,
    check_mixture_args,
    compute_dtype,
    mixture_log_prob,
    mixture_params,
    smallest_std,
)
from sb3_gmm.entropy.registry import ESTIMATORS, EstimatorInfo, Option

# The process-wide default of the argument checks; a thread may override it with `validation(...)`.
_validate_args = True
_thread_state = threading.local()


def set_validate_args(value: bool) -> None:
    """Switch argument checks of :func:`gmm_entropy` on or off for the whole process (off saves a device sync per
    call). Threads inside :func:`validation` keep their own setting; to change it in one thread only, use that."""
    global _validate_args
    _validate_args = bool(value)


def get_validate_args() -> bool:
    """Whether :func:`gmm_entropy` checks its arguments when not told per call: this thread's :func:`validation`
    setting if one is active, else the process-wide default of :func:`set_validate_args`."""
    override = getattr(_thread_state, "validate_args", None)
    return _validate_args if override is None else override


@contextlib.contextmanager
def validation(enabled: bool) -> Iterator[None]:
    """Switch argument checks on or off in this thread only, for the duration of a ``with`` block.

    >>> with validation(False):  # e.g. a hot loop whose inputs are known to be valid
    ...     pass

    Other threads keep their own setting (the process-wide default unless they are inside a ``validation`` block).
    Blocks nest; leaving one restores the setting it found.

    :param enabled: check the arguments inside the block
    """
    previous = getattr(_thread_state, "validate_args", None)
    _thread_state.validate_args = bool(enabled)
    try:
        yield
    finally:
        _thread_state.validate_args = previous


def get_estimator(method: Optional[str]) -> EstimatorInfo:
    """The registry entry for ``method`` (None means the library default), with a helpful error for a typo."""
    name = DEFAULT_METHOD if method is None else method
    if name not in ESTIMATORS:
        raise ValueError(f"unknown entropy method {name!r}; choose one of: {', '.join(sorted(ESTIMATORS))}")
    return ESTIMATORS[name]


def _autocast_off(device: th.device) -> ContextManager[Any]:
    # Under autocast the matrix products would run in bfloat16 / float16, too coarse for exponents of ~1e5 (see
    # compute_dtype): the estimators pick their own precision.
    if device.type in ("cpu", "cuda") and th.is_autocast_enabled(device.type):
        return th.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


def _evaluate(estimator: EstimatorInfo, params: MixtureParams, options: dict, output_dtype: th.dtype) -> th.Tensor:
    """Run an estimator in the compute dtype (float32 for half inputs) and return ``output_dtype``."""
    dtype = compute_dtype(params.means.dtype)
    with _autocast_off(params.means.device):
        if dtype != params.means.dtype:
            params = MixtureParams(*(tensor.to(dtype) for tensor in params))
        value = estimator.fn(params, **options)
    return value if value.dtype == output_dtype else value.to(output_dtype)


def gmm_entropy(
    logits: th.Tensor,
    means: th.Tensor,
    stds: th.Tensor,
    method: Optional[str] = None,
    validate_args: Optional[bool] = None,
    **options: Any,
) -> th.Tensor:
    """Entropy in nats of a batch of diagonal Gaussian mixtures.

    float16 and bfloat16 inputs are evaluated in float32 (also under ``torch.autocast``) and the result is returned
    in the inputs' dtype. Second derivatives (``torch.autograd.functional.hessian``, ``create_graph=True``) are
    supported by every method.

    :param logits: unnormalised log mixture weights ``[..., K]``
    :param means: component means ``[..., K, D]``
    :param stds: component standard deviations ``[..., K, D]``, strictly positive and at least
        :func:`smallest_std` (the smallest normal number of the dtype computed in: 1.2e-38 for float32 and half)
    :param method: a name from :data:`ESTIMATORS`; None selects the library default
    :param validate_args: check shapes and values (None follows :func:`validation` / :func:`set_validate_args`)
    :param options: the method's options, e.g. ``order=4`` for ``taylor``
    :return: ``[...]``, same dtype and device as the inputs, differentiable w.r.t. all three
    """
    estimator = get_estimator(method)
    resolved = estimator.resolve_options(options)
    if get_validate_args() if validate_args is None else validate_args:
        check_mixture_args(logits, means, stds)
    dtype = compute_dtype(means.dtype)
    if dtype != means.dtype:
        # Normalise the weights and take the log stds in float32 too, not only the estimator's arithmetic.
        with _autocast_off(means.device):
            params = mixture_params(logits.to(dtype), means.to(dtype), stds.to(dtype))
    else:
        params = mixture_params(logits, means, stds)
    return _evaluate(estimator, params, resolved, means.dtype)


def mixture_entropy(
    params: MixtureParams, method: Optional[str] = None, validate_args: Optional[bool] = None, **options: Any
) -> th.Tensor:
    """:func:`gmm_entropy` for parameters already prepared as :class:`MixtureParams`.

    For callers that also need the normalised log weights and log stds themselves (a policy computing log_prob
    and entropy of one batch): they are computed once and shared instead of again per call.

    :param params: ``MixtureParams(log_weights, means, stds, log_stds)`` with ``log_weights`` normalised
    :param method: a name from :data:`ESTIMATORS`; None selects the library default
    :param validate_args: check shapes and values (None follows :func:`validation` / :func:`set_validate_args`)
    :param options: the method's options
    """
    estimator = get_estimator(method)
    resolved = estimator.resolve_options(options)
    if get_validate_args() if validate_args is None else validate_args:
        check_mixture_args(params.log_weights, params.means, params.stds)
        if params.log_stds.shape != params.stds.shape:
            raise ValueError(
                f"params.log_stds must have the shape of params.stds {tuple(params.stds.shape)}, "
                f"got {tuple(params.log_stds.shape)}"
            )
    return _evaluate(estimator, params, resolved, params.means.dtype)


__all__ = [
    "DEFAULT_METHOD",
    "ESTIMATORS",
    "EstimatorInfo",
    "MixtureParams",
    "Option",
    "get_estimator",
    "get_validate_args",
    "gmm_entropy",
    "mixture_entropy",
    "mixture_log_prob",
    "set_validate_args",
    "smallest_std",
    "validation",
]
