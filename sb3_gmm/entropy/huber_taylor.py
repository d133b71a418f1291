"""Huber et al. (2008) component-wise Taylor expansion of log p around each component mean.

    H ~= -sum_i w_i E_{t ~ N(0, S_i)}[ T_N(t) ],   T_N = Taylor polynomial of log p(mu_i + t) of degree N.

Odd orders vanish under the symmetric Gaussian, so the orders are 0, 2 and 4. The derivatives come in closed form
from the cumulant expansion of ``log p(x + t) = log E_r[exp(A_j(t) + B_j(t))]``, where ``r`` are the responsibilities
at ``x``, ``A_j = g_j . t`` (gradient of ``log w_j N_j``) and ``B_j = 0.5 t^T H_j t`` (its constant Hessian): the
degree-2 part is ``E_r[B] + Var_r(A) / 2`` and the degree-4 part is
``kappa_4(A) / 24 + E_r[A'^2 B'] / 2 + Var_r(B) / 2`` (primes: centred under ``r``). Not a bound; for well-separated
components it is accurate, for overlapping ones the series can diverge (the point of Dahlke & Pacheco).
"""

import torch as th

from sb3_gmm.entropy._common import MixtureParams, max_scaled_distance, pairwise_differences, weighted_sum
from sb3_gmm.entropy.registry import Option, one_of, register
from sb3_gmm.mixture import component_log_joint


def _expected_taylor_log_density(params: MixtureParams, order: int) -> th.Tensor:
    """``E_{t ~ N(0, S_i)}[T_order(t)]`` for every component ``i``, shape ``[..., K]``.

    Worked in units of component ``i``'s stds (``t = s_i u``, ``u ~ N(0, I)``): the gradient of ``log N_j`` at
    ``mu_i`` becomes ``g_j = -z_ij r_ij`` and its Hessian ``-r_ij^2``, with ``z = (mu_i - mu_j) / s_j`` and
    ``r = s_i / s_j``, so no precision ``1 / s^2`` (inf in float32 below ~1e-19) is ever formed.
    """
    # log w_j N_j(mu_i), [..., K(i), K(j)]: the component means are the points, the components a new axis.
    log_joint = component_log_joint(
        params.means,
        params.log_weights.unsqueeze(-2),
        params.means.unsqueeze(-3),
        params.stds.unsqueeze(-3),
        params.log_stds.unsqueeze(-3),
    )
    log_density = th.logsumexp(log_joint, dim=-1)
    if order == 0:
        return log_density
    inv_std_j = th.exp(-params.log_stds).unsqueeze(-3)
    # The order-4 terms hold fourth powers of z: capped so that they stay finite (such pairs weigh exactly 0).
    limit = max_scaled_distance(params.means.dtype, power=4)
    scaled_diff = (pairwise_differences(params.means) * inv_std_j).clamp(-limit, limit)  # z_ij
    std_ratio = params.stds.unsqueeze(-2) * inv_std_j  # r_ij
    responsibilities = th.softmax(log_joint, dim=-1).unsqueeze(-1)  # [..., K(i), K(j), 1]
    gradient = -scaled_diff * std_ratio  # s_i d/dx log N_j at mu_i
    hessian = -std_ratio.square()  # s_i^2 d^2/dx^2 log N_j
    gradient_c = gradient - (responsibilities * gradient).sum(-2, keepdim=True)
    hessian_c = hessian - (responsibilities * hessian).sum(-2, keepdim=True)
    r = responsibilities.squeeze(-1)
    spread_a = gradient_c.square().sum(-1)  # E_u[A'_j^2], [..., K(i), K(j)]
    second = 0.5 * ((r * hessian.sum(-1)).sum(-1) + (r * spread_a).sum(-1))
    if order == 2:
        return log_density + second
    trace_b = hessian_c.sum(-1)  # sum_d h'_jd
    var_b = 0.25 * (trace_b.square() + 2.0 * hessian_c.square().sum(-1))
    mixed = 0.5 * (spread_a * trace_b + 2.0 * (gradient_c.square() * hessian_c).sum(-1))
    fourth_moment = 3.0 * spread_a.square()
    # E_u[(E_r A'^2)^2] = (tr M)^2 + 2 tr(M M), M = sum_j r_j g'_j g'_j^T.
    gram = th.einsum("...jd,...kd->...jk", gradient_c, gradient_c)
    trace_ms = (r * spread_a).sum(-1)
    trace_msms = th.einsum("...j,...k,...jk->...", r, r, gram.square())
    cumulant_4 = (r * fourth_moment).sum(-1) - 3.0 * (trace_ms.square() + 2.0 * trace_msms)
    fourth = cumulant_4 / 24.0 + 0.5 * (r * mixed).sum(-1) + 0.5 * (r * var_b).sum(-1)
    return log_density + second + fourth


@register(
    "huber_taylor",
    bound=None,
    cost="O(K^2 D) for order <= 2, O(K^3 D) for order 4",
    summary="Huber et al. 2008 Taylor expansion of log p around each mean (order 0, 2 or 4); can diverge",
    options={"order": Option(2, one_of(0, 2, 4), "Taylor order: 0, 2 or 4 (odd orders vanish)")},
    exact_for_single_gaussian=True,
)
def huber_taylor(params: MixtureParams, order: int = 2) -> th.Tensor:
    """``-sum_i w_i E_{N(0, S_i)}[T_N(log p)(mu_i + t)]``; exact for one Gaussian from order 2 on."""
    return -weighted_sum(params.log_weights, _expected_taylor_log_density(params, order))
