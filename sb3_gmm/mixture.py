"""Diagonal Gaussian mixture math written once: the action head's layout, log densities and the Gaussian KL.

Pure torch (no SB3), shared by the distributions, the policies and the entropy estimators. Shapes follow
``log_weights [..., K]``, ``means [..., K, D]``, ``stds [..., K, D]`` (or anything broadcasting to it).
"""

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional, Tuple

import torch as th

from sb3_gmm import native

LOG_2PI = math.log(2.0 * math.pi)


@lru_cache(maxsize=16)
def max_scaled_distance(dtype: th.dtype, power: int = 2) -> float:
    """A cap on distances in std units, ``|mu_i - mu_j| / s``, whose ``power``-th powers stay finite in ``dtype``.

    Beyond the cap (1.4e9 stds in float32 for squares, 6.6e4 for fourth powers) a Gaussian kernel ``exp(-z^2 / 2)``
    is exactly 0 in every float format, so capping changes no value. It keeps ``z^power`` finite where tiny stds would
    overflow it to inf, which the zero weight of the pair would then turn into ``0 * inf = NaN``.
    """
    return th.finfo(dtype).max ** (1.0 / (2.0 * power))


@dataclass(frozen=True)
class MixtureHeadLayout:
    """Where each mixture parameter sits in an action head's output vector.

    Per state the head outputs ``K`` logits, then ``K * D`` means (component-major), then, with
    ``state_dependent_std``, ``K * D`` raw log stds.

    :param n_components: number of components K
    :param action_dim: action dimension D
    :param state_dependent_std: the head also outputs the log stds
    """

    n_components: int
    action_dim: int
    state_dependent_std: bool = False

    @property
    def means_slice(self) -> slice:
        """The head outputs holding the component means."""
        return slice(self.n_components, self.n_components * (1 + self.action_dim))

    @property
    def log_stds_slice(self) -> slice:
        """The head outputs holding the raw log stds (empty without ``state_dependent_std``)."""
        return slice(self.means_slice.stop, self.n_params)

    @property
    def n_params(self) -> int:
        """Outputs of the action head per state."""
        per_component = self.action_dim * (2 if self.state_dependent_std else 1)
        return self.n_components * (1 + per_component)

    def check(self, action_params: th.Tensor) -> None:
        """Raise a ValueError naming the expected layout when ``action_params``' last size is not :attr:`n_params`."""
        if action_params.shape[-1] != self.n_params:
            stds_part = f" + {self.n_components * self.action_dim} log stds" if self.state_dependent_std else ""
            raise ValueError(
                f"action_params must have {self.n_params} columns ({self.n_components} logits + "
                f"{self.n_components * self.action_dim} means{stds_part} for K={self.n_components}, "
                f"D={self.action_dim}), got shape {tuple(action_params.shape)}; build the head with "
                "proba_distribution_net() of the same distribution"
            )

    def split(self, action_params: th.Tensor) -> Tuple[th.Tensor, th.Tensor, Optional[th.Tensor]]:
        """Cut a head output ``[..., n_params]`` into ``logits [..., K]``, ``means [..., K, D]`` and raw log stds.

        :param action_params: the head output; its last size must be :attr:`n_params`
        :return: logits, means, and the raw log stds ``[..., K, D]`` (None without ``state_dependent_std``)
        """
        self.check(action_params)
        batch_shape = action_params.shape[:-1]
        component_shape = (*batch_shape, self.n_components, self.action_dim)
        logits = action_params[..., : self.n_components]
        means = action_params[..., self.means_slice].reshape(component_shape)
        raw_log_stds = None
        if self.state_dependent_std:
            raw_log_stds = action_params[..., self.log_stds_slice].reshape(component_shape)
        return logits, means, raw_log_stds


def component_log_joint(
    x: th.Tensor, log_weights: th.Tensor, means: th.Tensor, stds: th.Tensor, log_stds: Optional[th.Tensor] = None
) -> th.Tensor:
    """``log w_k + log N(x; mu_k, diag(s_k^2))`` for every component: ``x [..., D]`` gives ``[..., K]``.

    :param x: points ``[..., D]``
    :param log_weights: normalised log weights ``[..., K]``
    :param means: component means ``[..., K, D]``
    :param stds: component stds, ``[..., K, D]`` or anything broadcasting to it (e.g. a shared ``[K, D]``)
    :param log_stds: ``stds.log()`` when the caller has it
    """
    if log_stds is None:
        log_stds = stds.log()
    scaled = (x.unsqueeze(-2) - means) / stds
    # The normaliser is computed at the stds' own (possibly unbatched) shape before broadcasting.
    log_normalisers = log_stds.sum(-1) + 0.5 * means.shape[-1] * LOG_2PI
    return log_weights - log_normalisers - 0.5 * scaled.square().sum(-1)


def mixture_log_prob(
    x: th.Tensor, log_weights: th.Tensor, means: th.Tensor, stds: th.Tensor, log_stds: Optional[th.Tensor] = None
) -> th.Tensor:
    """Exact log density of a diagonal GMM: ``x [..., D]`` against parameters with batch shape ``[...]``.

    On the CPU a batch whose parameters share x's batch shape (stds may also be one shared ``[K, D]``) goes to the
    compiled kernel of :mod:`sb3_gmm.native` where it is available: the forward and first derivative in one call
    instead of ~20 eager ops. Values and gradients equal the torch formula's up to rounding; second derivatives are
    autograd's through the formula either way.

    :param x: points ``[..., D]``
    :param log_weights: normalised log weights ``[..., K]``
    :param means: component means ``[..., K, D]``
    :param stds: component stds, ``[..., K, D]`` or anything broadcasting to it (e.g. a shared ``[K, D]``)
    :param log_stds: ``stds.log()`` when the caller has it
    """
    kernels = _log_prob_kernels(x, log_weights, means, stds, log_stds)
    if kernels is not None:
        if log_stds is None:
            log_stds = stds.log()
        with_gradient = native.records_graph((x, log_weights, means, stds, log_stds))
        return _CompiledLogProb.apply(x, log_weights, means, stds, log_stds, kernels, with_gradient)
    return _torch_log_prob(x, log_weights, means, stds, log_stds)


def _torch_log_prob(
    x: th.Tensor, log_weights: th.Tensor, means: th.Tensor, stds: th.Tensor, log_stds: Optional[th.Tensor] = None
) -> th.Tensor:
    return th.logsumexp(component_log_joint(x, log_weights, means, stds, log_stds), dim=-1)


def _log_prob_kernels(
    x: th.Tensor, log_weights: th.Tensor, means: th.Tensor, stds: th.Tensor, log_stds: Optional[th.Tensor]
) -> Any:
    """The compiled kernels where they apply to these inputs, else None (the torch formula)."""
    if not x.is_cpu or x.dim() < 1 or means.dim() < 2 or th.compiler.is_compiling():
        return None
    dtype = x.dtype
    tensors = (log_weights, means, stds) if log_stds is None else (log_weights, means, stds, log_stds)
    if any(tensor.dtype != dtype or not tensor.is_cpu for tensor in tensors):
        return None
    batch_shape, event_shape = x.shape[:-1], means.shape[-2:]
    if means.shape[:-2] != batch_shape or log_weights.shape != means.shape[:-1] or event_shape[1] != x.shape[-1]:
        return None
    for tensor in (stds,) if log_stds is None else (stds, log_stds):
        if tensor.shape != means.shape and tensor.shape != event_shape:
            return None
    return native.library(dtype)


class _CompiledLogProb(th.autograd.Function):
    """:func:`mixture_log_prob` through the compiled kernel; the gradient is computed in the forward (for an incoming
    gradient of one) and only scaled in the backward. A backward that records a graph differentiates the torch
    formula instead, so second derivatives are exact."""

    @staticmethod
    def forward(ctx, x, log_weights, means, stds, log_stds, kernels, with_gradient):  # type: ignore[override]
        n_components, dim = means.shape[-2:]
        batch_shape = x.shape[:-1]
        n_batch = batch_shape.numel()

        def flat(tensor: th.Tensor) -> th.Tensor:
            if tensor.dim() == 2:  # one [K, D] for the whole batch: read in place (batch stride 0)
                return tensor.expand(n_batch, n_components, dim)
            return tensor.reshape(n_batch, n_components, dim)

        value, buffer = native.mixture_log_prob(
            kernels,
            x.reshape(n_batch, dim),
            log_weights.reshape(n_batch, n_components),
            means.reshape(n_batch, n_components, dim),
            flat(stds),
            flat(log_stds),
            max_scaled_distance(x.dtype),
            with_gradient,
        )
        ctx.dims = (n_components, dim)
        saved = () if buffer is None else (buffer.view(*batch_shape, buffer.shape[-1]),)
        ctx.save_for_backward(*saved, x, log_weights, means, stds, log_stds)
        return value.view(batch_shape)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        if th.is_grad_enabled():
            inputs = ctx.saved_tensors[-5:]
            return native.differentiable_gradients(_torch_log_prob, inputs, ctx.needs_input_grad, grad_output, 7)
        scaled = grad_output.unsqueeze(-1) * ctx.saved_tensors[0]
        # stds / log_stds shared as [K, D] get [..., K, D] gradients: autograd sums them over the batch.
        return (*native.split_log_prob_gradient(scaled, *ctx.dims), None, None)


def diag_gaussian_kl(means_p: th.Tensor, log_stds_p: th.Tensor, means_q: th.Tensor, log_stds_q: th.Tensor) -> th.Tensor:
    """``KL(N(mu_p, s_p^2) || N(mu_q, s_q^2))`` per coordinate (sum the last axis for a diagonal Gaussian).

    Written in log stds so that it is finite and twice differentiable wherever its inputs are finite.
    """
    log_variance_ratio = 2.0 * (log_stds_q - log_stds_p)  # log s_q^2 / s_p^2
    scaled_difference = (means_p - means_q) * th.exp(-log_stds_q)
    return 0.5 * (th.exp(-log_variance_ratio) + scaled_difference.square() - 1.0 + log_variance_ratio)


def spread_component_levels(n_components: int, dim: int, spread: float) -> th.Tensor:
    """``[K, D]`` initial component means: K evenly spaced levels of ``[-spread, spread]``, shuffled per dimension.

    With SB3's head init (small weights, zero bias) every component would start at the same mean, get the same
    gradient and stay identical. Shuffled levels make components differ in every dimension without lining up on the
    diagonal. Uses the global torch random stream (one permutation per dimension).

    :param n_components: number of components K
    :param dim: action dimension D
    :param spread: half-width of the levels; 0 puts every level at 0
    """
    levels = th.linspace(-spread, spread, n_components)
    return th.stack([levels[th.randperm(n_components)] for _ in range(dim)], dim=-1)
