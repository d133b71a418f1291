"""Closed-form brackets: O(K D) and O(K^2 D) estimators built from Gaussian closed forms.

Huber et al. (2008) give the Jensen lower bound and the weight-entropy upper bound; Kolchinsky & Tracey (2017) give
the pairwise-distance family, a lower bound for any Chernoff alpha-divergence and an upper bound for KL.
"""

import torch as th

from sb3_gmm.entropy._common import (
    LOG_2PI_E,
    MixtureParams,
    gaussian_entropies,
    log_pairwise_overlaps,
    pairwise_chernoff,
    pairwise_estimate,
    pairwise_kl,
    weight_entropy,
    weighted_sum,
)
from sb3_gmm.entropy.registry import Option, register, unit_interval


@register(
    "component_average",
    bound="lower",
    cost="O(K D)",
    summary="sum_i w_i H_i: what DPPO logs; ignores the spread of the components",
)
def component_average(params: MixtureParams) -> th.Tensor:
    """``sum_i w_i H(N_i)``: a lower bound by concavity of entropy, blind to where the components sit."""
    return weighted_sum(params.log_weights, gaussian_entropies(params.log_stds))


@register(
    "huber_upper",
    bound="upper",
    cost="O(K D)",
    summary="sum_i w_i H_i + H(w): exact only for disjoint components",
)
def huber_upper(params: MixtureParams) -> th.Tensor:
    """``sum_i w_i (H_i - log w_i)``: the entropy of the joint (component index, x) upper-bounds that of x."""
    return component_average(params) + weight_entropy(params.log_weights)


@register(
    "moment_matched",
    bound="upper",
    cost="O(K D^2 + D^3)",
    summary="entropy of the Gaussian with the mixture's full covariance (max-entropy bound)",
)
def moment_matched(params: MixtureParams) -> th.Tensor:
    """``0.5 log((2 pi e)^D |S|)`` with the mixture's full covariance ``S``: Gaussians maximise entropy.

    Evaluated in float64 (O(K D^2 + D^3), cheap): squared float32 stds below ~1e-19 are subnormal or 0, which would
    leave ``S`` singular wherever the means do not span every direction.
    """
    log_weights, means, stds = params.log_weights.double(), params.means.double(), params.stds.double()
    weights = log_weights.exp().unsqueeze(-1)
    mean = (weights * means).sum(-2)
    centred = means - mean.unsqueeze(-2)
    between = th.einsum("...k,...ki,...kj->...ij", weights.squeeze(-1), centred, centred)
    within = th.diag_embed((weights * stds.square()).sum(-2))
    entropy = 0.5 * (params.dim * LOG_2PI_E + th.linalg.slogdet(between + within)[1])
    return entropy.to(params.means.dtype)


@register(
    "huber_lower",
    bound="lower",
    cost="O(K^2 D)",
    summary="Huber et al. 2008 Jensen bound -sum_i w_i log sum_j w_j N(mu_i; mu_j, S_i+S_j); loose in high D",
    exact_for_single_gaussian=False,
)
def huber_lower(params: MixtureParams) -> th.Tensor:
    """``-sum_i w_i log sum_j w_j N(mu_i; mu_j, S_i + S_j)``, i.e. ``-log E_p[p(x)]`` (Jensen).

    It is the Renyi-2 entropy, so it stays (D/2)(1 - log 2) below the truth even for one Gaussian.
    """
    inner = th.logsumexp(params.log_weights.unsqueeze(-2) + log_pairwise_overlaps(params), dim=-1)
    return -weighted_sum(params.log_weights, inner)


@register(
    "pairwise_kl",
    bound="upper",
    cost="O(K^2 D)",
    summary="Kolchinsky & Tracey pairwise estimator with KL (upper bound)",
)
def pairwise_kl_estimate(params: MixtureParams) -> th.Tensor:
    return pairwise_estimate(params, -pairwise_kl(params))


@register(
    "pairwise_bhattacharyya",
    bound="lower",
    cost="O(K^2 D)",
    summary="Kolchinsky & Tracey pairwise estimator with the Bhattacharyya distance (lower bound)",
)
def pairwise_bhattacharyya(params: MixtureParams) -> th.Tensor:
    return pairwise_estimate(params, -pairwise_chernoff(params, 0.5))


@register(
    "pairwise_chernoff",
    bound="lower",
    cost="O(K^2 D)",
    summary="Kolchinsky & Tracey pairwise estimator with a Chernoff alpha-divergence (lower bound)",
    options={"alpha": Option(0.5, unit_interval, "the Chernoff exponent in [0, 1]; 0.5 is Bhattacharyya")},
)
def pairwise_chernoff_estimate(params: MixtureParams, alpha: float = 0.5) -> th.Tensor:
    return pairwise_estimate(params, -pairwise_chernoff(params, float(alpha)))
