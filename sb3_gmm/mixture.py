"""Diagonal Gaussian mixture math written once: the action head's layout, log densities and the Gaussian KL.

Pure torch (no SB3), shared by the distributions, the policies and the entropy estimators. Shapes follow
``log_weights [..., K]``, ``means [..., K, D]``, ``stds [..., K, D]`` (or anything broadcasting to it).
"""

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch as th

LOG_2PI = math.log(2.0 * math.pi)


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

    def split(self, action_params: th.Tensor) -> Tuple[th.Tensor, th.Tensor, Optional[th.Tensor]]:
        """Cut a head output ``[..., n_params]`` into ``logits [..., K]``, ``means [..., K, D]`` and raw log stds.

        :param action_params: the head output; its last size must be :attr:`n_params`
        :return: logits, means, and the raw log stds ``[..., K, D]`` (None without ``state_dependent_std``)
        """
        if action_params.shape[-1] != self.n_params:
            stds_part = f" + {self.n_components * self.action_dim} log stds" if self.state_dependent_std else ""
            raise ValueError(
                f"action_params must have {self.n_params} columns ({self.n_components} logits + "
                f"{self.n_components * self.action_dim} means{stds_part} for K={self.n_components}, "
                f"D={self.action_dim}), got shape {tuple(action_params.shape)}; build the head with "
                "proba_distribution_net() of the same distribution"
            )
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

    :param x: points ``[..., D]``
    :param log_weights: normalised log weights ``[..., K]``
    :param means: component means ``[..., K, D]``
    :param stds: component stds, ``[..., K, D]`` or anything broadcasting to it (e.g. a shared ``[K, D]``)
    :param log_stds: ``stds.log()`` when the caller has it
    """
    return th.logsumexp(component_log_joint(x, log_weights, means, stds, log_stds), dim=-1)


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
