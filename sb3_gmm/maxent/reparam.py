"""Pathwise gradients through a diagonal Gaussian mixture sample.

A mixture sample draws a component index, which has no gradient: with ``a = mu_k + s_k * eps`` the weights never
learn from ``f(a)``. Implicit reparameterization (Graves 2016, "Stochastic backpropagation through mixture density
distributions"; Figurnov et al. 2018, "Implicit reparameterization gradients") differentiates the sample through
its CDF instead. Written autoregressively over dimensions, the conditional of coordinate ``d`` given the earlier ones
is a 1-D mixture with responsibilities ``pi_k(x_<d) ∝ w_k prod_{j<d} N(x_j; mu_kj, s_kj)``, CDF
``F_d = sum_k pi_k Phi((x_d - mu_kd) / s_kd)`` and density ``p_d``. Holding ``F_d(x_d | x_<d; theta) = u_d`` fixed
gives the exact pathwise derivative ``dx_d/dtheta = -(dF_d/dtheta + dF_d/dx_<d . dx_<d/dtheta) / p_d``, which
:func:`implicit_mixture_surrogate` builds into a tensor whose value is the sample itself.

:func:`marginalized_mixture_expectation` is the per-component estimator of He et al. 2026 ("Revisiting Mixture
Policies in Entropy-Regularized Actor-Critic"), kept as a variance reference: it evaluates ``f`` at a sample of every
component, so a loss built on it sees K actions per state, which stock SAC's actor loss does not.

Pure torch. Shapes follow :mod:`sb3_gmm.mixture`: ``log_weights [..., K]``, ``means [..., K, D]``, ``stds [..., K, D]``
(or anything broadcasting to it).
"""

import math
from typing import Any, Callable, Optional, Tuple

import torch as th
from torch.autograd.function import once_differentiable

from sb3_gmm.mixture import LOG_2PI

# log_ndtr's backward loses accuracy, then returns inf or NaN, far out in the tails (float32 at z = -1e3 is 5 % off,
# z = -1e30 gives NaN); a component that far from the sample has a CDF and density below exp(-2e4) relative to any
# other, so freezing its argument changes nothing but keeps a 0 * NaN out of the backward pass.
_CDF_ARGUMENT_LIMIT = 200.0

# Fraction of log(dtype max) allowed for |log(T_d / p_d)| (T_d the smaller tail mass): e^22 ~ 4e9 in float32, e^177 in
# float64. The ratio is a length (below 1.25 s for a single Gaussian); it only exceeds the cap where the mixture
# density is tiny next to the tail mass, deep in a gap between components (about 13 stds wide for unit components)
# that samples essentially never reach. There the cap keeps the gradient finite at the price of a bias.
_LOG_RATIO_CAP_FRACTION = 0.25


def _check_shapes(log_weights: th.Tensor, means: th.Tensor, stds: th.Tensor) -> Tuple[int, int]:
    """Return ``(K, D)`` or raise a ValueError that names the inconsistent argument."""
    if means.dim() < 2:
        raise ValueError(f"means must have shape [..., K, D], got shape {tuple(means.shape)}; add the component axis")
    n_components, action_dim = means.shape[-2], means.shape[-1]
    if log_weights.dim() < 1 or log_weights.shape[-1] != n_components:
        raise ValueError(
            f"log_weights must have shape [..., K] with K={n_components} (from means {tuple(means.shape)}), "
            f"got shape {tuple(log_weights.shape)}; pass th.log_softmax(logits, dim=-1)"
        )
    try:
        th.broadcast_shapes(means.shape, stds.shape)
    except RuntimeError as error:
        raise ValueError(
            f"stds of shape {tuple(stds.shape)} does not broadcast to means of shape {tuple(means.shape)}; "
            "pass stds as [..., K, D] or a shared [K, D]"
        ) from error
    return n_components, action_dim


class _ImplicitMixtureGradient(th.autograd.Function):
    """Identity on the samples whose backward is the implicit-reparameterization gradient (see the surrogate).

    Written by hand rather than left to autograd: the forward is ~40 small tensor operations, and autograd's
    bookkeeping for them (and its backward, twice as many) cost several times the arithmetic at SAC's batch sizes.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, samples: th.Tensor, log_weights: th.Tensor, means: th.Tensor, stds: th.Tensor, log_stds: th.Tensor
    ) -> th.Tensor:
        standardized = (samples.unsqueeze(-2) - means) / stds  # [..., K, D]
        # Per-coordinate component log densities (up to the constant) and the responsibilities given each prefix x_<d.
        log_component_densities = -0.5 * standardized.square() - log_stds
        log_prefix = th.cat(
            [th.zeros_like(log_component_densities[..., :1]), log_component_densities[..., :-1].cumsum(-1)], dim=-1
        )
        log_responsibilities = th.log_softmax(log_weights.unsqueeze(-1) + log_prefix, dim=-2)

        # log Phi(z) and log Phi(-z) from one log_ndtr: the smaller tail directly, the larger as log1p(-smaller),
        # which is accurate since the smaller tail is at most 1/2. Beyond the clamp the tail is frozen (see above).
        clamped = standardized.clamp(-_CDF_ARGUMENT_LIMIT, _CDF_ARGUMENT_LIMIT)
        log_smaller_tail = th.special.log_ndtr(-clamped.abs())
        log_larger_tail = th.log1p(-log_smaller_tail.exp())
        below_mean = clamped < 0
        log_component_cdfs = th.where(below_mean, log_smaller_tail, log_larger_tail)
        log_component_survivals = th.where(below_mean, log_larger_tail, log_smaller_tail)
        log_cdf = th.logsumexp(log_responsibilities + log_component_cdfs, dim=-2)  # [..., D]
        log_survival = th.logsumexp(log_responsibilities + log_component_survivals, dim=-2)

        # T_d: whichever of F_d and 1 - F_d is smaller, the one stored accurately (dT = dF or -dF).
        use_cdf = log_cdf <= log_survival
        log_tail = th.where(use_cdf, log_cdf, log_survival)
        use_cdf_per_component = use_cdf.unsqueeze(-2)
        log_component_tails = th.where(use_cdf_per_component, log_component_cdfs, log_component_survivals)
        # rho_kd: component k's share of T_d; pi_kd: its responsibility given x_<d.
        tail_shares = th.exp(log_responsibilities + log_component_tails - log_tail.unsqueeze(-2))
        responsibilities = log_responsibilities.exp()

        # A = d log T / dx, lower triangular. Diagonal: +-p_d / T_d (the sign is that of dT_d/dx_d). Below it:
        # dlog T_e/dx_d = sum_k (rho_ke - pi_ke) dlog N_kd/dx_d for d < e.
        log_density = th.logsumexp(log_responsibilities + log_component_densities, dim=-2) - 0.5 * LOG_2PI
        log_ratio_cap = _LOG_RATIO_CAP_FRACTION * math.log(th.finfo(samples.dtype).max)
        density_over_tail = (log_density - log_tail).clamp(-log_ratio_cap, log_ratio_cap).exp()
        scores = -standardized / stds  # dlog N_kd / dx_d
        jacobian = th.einsum("...ke,...kd->...ed", tail_shares - responsibilities, scores).tril(-1)
        jacobian = jacobian + th.diag_embed(th.where(use_cdf, density_over_tail, -density_over_tail))

        # dlog T_kd / dz_kd of each component's tail: +-N(z) / Phi(+-z), zero beyond the clamp.
        hazards = th.exp(-0.5 * clamped.square() - 0.5 * LOG_2PI - log_component_tails)
        hazards = th.where(use_cdf_per_component, hazards, -hazards)
        hazards = th.where(standardized.abs() <= _CDF_ARGUMENT_LIMIT, hazards, th.zeros_like(hazards))

        ctx.save_for_backward(standardized, stds, responsibilities, tail_shares, hazards, jacobian)
        ctx.input_shapes = (log_weights.shape, means.shape, stds.shape, log_stds.shape)
        return samples.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_samples: th.Tensor) -> Tuple[Optional[th.Tensor], ...]:  # type: ignore[override]
        standardized, stds, responsibilities, tail_shares, hazards, jacobian = ctx.saved_tensors
        log_weights_shape, means_shape, stds_shape, log_stds_shape = ctx.input_shapes
        # x_sur = x - A^{-1} (log T - stop_grad(log T)), so dL/dlog T = -A^{-T} dL/dx.
        grad_log_tail = -th.linalg.solve_triangular(
            jacobian.transpose(-1, -2), grad_samples.unsqueeze(-1), upper=True
        ).squeeze(-1)
        grad_log_tail = grad_log_tail.unsqueeze(-2)  # [..., 1, D]
        # log T_d = logsumexp_k(a_kd - logsumexp_j a_jd + log T_kd), with a_kd = log w_k + sum_{j<d} log N_kj:
        # its derivative is rho_kd - pi_kd in a_kd and rho_kd in log T_kd.
        grad_prefix_terms = grad_log_tail * (tail_shares - responsibilities)  # dL/da_kd
        # a_kd holds log N_kj for every j < d: the gradient reaching log N_kj sums over the later d.
        grad_log_densities = grad_prefix_terms.flip(-1).cumsum(-1).flip(-1) - grad_prefix_terms
        # z enters through log T_kd (hazard) and through log N_kz = -z^2/2 - log s.
        grad_standardized = grad_log_tail * tail_shares * hazards - standardized * grad_log_densities
        grad_means = -grad_standardized / stds
        grad_stds = grad_means * standardized
        return (
            None,
            grad_prefix_terms.sum(-1).sum_to_size(log_weights_shape),
            grad_means.sum_to_size(means_shape),
            grad_stds.sum_to_size(stds_shape),
            (-grad_log_densities).sum_to_size(log_stds_shape),
        )


def implicit_mixture_surrogate(
    samples: th.Tensor,
    log_weights: th.Tensor,
    means: th.Tensor,
    stds: th.Tensor,
    log_stds: Optional[th.Tensor] = None,
) -> th.Tensor:
    """Attach the implicit-reparameterization gradient to given mixture samples.

    The value returned equals ``samples`` exactly; its gradient with respect to ``log_weights``, ``means``, ``stds``
    (and ``log_stds``) is the pathwise derivative of the sample holding its conditional CDFs fixed (the gradient
    reaching ``log_weights`` is that of the normalised weights: it sums to zero over K). Unbiased when ``samples``
    are draws from the mixture with these parameters. Cost: O(K D^2) per sample, with no loop over dimensions.
    First derivatives only (no double backward).

    How: with ``T_d`` the smaller of the conditional CDF ``F_d`` and survival function ``1 - F_d`` (the one stored
    accurately in a tail), the D equations ``log T_d(x, theta) = const`` define ``x(theta)``. Their Jacobian in ``x``
    is lower triangular, ``A``, so ``dx/dtheta = -A^{-1} dlog T/dtheta``: the value of
    ``x - A^{-1} (log T - stop_grad(log T))`` is ``x`` and its gradient is exactly this. Every entry of ``A`` is a
    difference of responsibilities times a score, or the ratio ``p_d / T_d``: all computed in log space, so far tails,
    near-one-hot weights and far-apart components keep finite gradients.

    :param samples: mixture draws ``[..., D]``, with the parameters' full batch shape (their own gradient is ignored)
    :param log_weights: normalised log weights ``[..., K]``
    :param means: component means ``[..., K, D]``
    :param stds: component stds ``[..., K, D]`` or anything broadcasting to it
    :param log_stds: ``stds.log()`` when the caller has it (the gradient then also flows through it)
    :return: ``samples`` with the pathwise gradient, ``[..., D]``
    """
    _check_shapes(log_weights, means, stds)
    batch_shape = th.broadcast_shapes(log_weights.shape[:-1], means.shape[:-2], stds.shape[:-2])
    if (
        samples.shape[-1] != means.shape[-1]
        or th.broadcast_shapes(samples.shape[:-1], batch_shape) != samples.shape[:-1]
    ):
        raise ValueError(
            f"samples must have shape [..., D] with D={means.shape[-1]} and a batch shape that the parameters' "
            f"{tuple(batch_shape)} broadcasts to, got shape {tuple(samples.shape)}"
        )
    samples = samples.detach()
    parameters = (log_weights, means, stds, log_stds)
    if not th.is_grad_enabled() or not any(tensor is not None and tensor.requires_grad for tensor in parameters):
        # Nothing to differentiate (e.g. SAC's soft target under no_grad, or predict): the plain sample is the value.
        return samples
    if log_stds is None:
        log_stds = stds.log()
    return _ImplicitMixtureGradient.apply(samples, log_weights, means, stds, log_stds)


def implicit_mixture_sample(
    log_weights: th.Tensor,
    means: th.Tensor,
    stds: th.Tensor,
    log_stds: Optional[th.Tensor] = None,
) -> th.Tensor:
    """Draw from a diagonal Gaussian mixture, with the implicit-reparameterization gradient.

    The value is an exact draw: a component per batch entry by Gumbel-max on the detached weights, then
    ``mean + std * eps`` of that component. The gradient reaches the weights as well as the means and stds (see
    :func:`implicit_mixture_surrogate`). With K = 1 no component is drawn and the result is exactly
    ``Normal(means[..., 0, :], stds[..., 0, :]).rsample()`` (same random stream, same value, same gradient), so a
    one-component mixture actor reproduces SB3's Gaussian SAC actor.

    :param log_weights: normalised log weights ``[..., K]`` (e.g. ``th.log_softmax(logits, dim=-1)``)
    :param means: component means ``[..., K, D]``
    :param stds: component stds ``[..., K, D]`` or anything broadcasting to it
    :param log_stds: ``stds.log()`` when the caller has it
    :return: samples ``[..., D]``
    """
    n_components, action_dim = _check_shapes(log_weights, means, stds)
    if n_components == 1:
        # Exactly torch's Normal.rsample: eps of the broadcast shape from empty().normal_(), then loc + eps * scale.
        component_means, component_stds = th.broadcast_tensors(means[..., 0, :], stds[..., 0, :])
        eps = th.empty(component_means.shape, dtype=component_means.dtype, device=component_means.device).normal_()
        return component_means + eps * component_stds
    batch_shape = th.broadcast_shapes(log_weights.shape[:-1], means.shape[:-2], stds.shape[:-2])
    means = means.expand(*batch_shape, n_components, action_dim)
    stds = stds.expand(*batch_shape, n_components, action_dim)
    if log_stds is not None:
        log_stds = log_stds.expand(*batch_shape, n_components, action_dim)
    log_weights = log_weights.expand(*batch_shape, n_components)
    with th.no_grad():
        # Gumbel-max as in GMMDistribution.sample: argmax(log w - log E), E ~ Exp(1), is an exact categorical draw.
        negative_gumbel = th.empty_like(log_weights).exponential_().log_()
        components = (log_weights - negative_gumbel).argmax(-1)
        index = components.view(*batch_shape, 1, 1).expand(*batch_shape, 1, action_dim)
        component_means = means.gather(-2, index).squeeze(-2)
        component_stds = stds.gather(-2, index).squeeze(-2)
        samples = component_means + component_stds * th.randn_like(component_means)
    return implicit_mixture_surrogate(samples, log_weights, means, stds, log_stds)


def marginalized_mixture_expectation(
    fn: Callable[[th.Tensor], th.Tensor],
    log_weights: th.Tensor,
    means: th.Tensor,
    stds: th.Tensor,
    n_samples: int = 1,
) -> th.Tensor:
    """He et al.'s marginalized estimate of ``E_pi[fn]``: ``sum_k w_k mean_s fn(mu_k + s_k eps_ks)``.

    Every component is sampled, so no index is drawn: logit k gets ``w_k (f_k - sum_j w_j f_j)`` (``f_k`` the mean
    of ``fn`` over component k's draws), bounded by the range of ``fn``, and the means and stds an ordinary
    reparameterization gradient. It costs ``K * n_samples`` evaluations of
    ``fn`` per batch entry: a loss built on it needs K actions per state (K critic calls), which is why it cannot
    replace the sample inside stock SAC's actor loss. Here it is a reference for gradient-variance measurements.

    :param fn: maps points ``[..., D]`` to values ``[...]``
    :param log_weights: normalised log weights ``[..., K]``
    :param means: component means ``[..., K, D]``
    :param stds: component stds ``[..., K, D]`` or anything broadcasting to it
    :param n_samples: Gaussian draws per component
    :return: the estimate, ``[...]`` (the batch shape)
    """
    _check_shapes(log_weights, means, stds)
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    component_means, component_stds = th.broadcast_tensors(means, stds)
    eps = th.randn((n_samples, *component_means.shape), dtype=component_means.dtype, device=component_means.device)
    values = fn(component_means + component_stds * eps)  # [n_samples, ..., K]
    return (log_weights.exp() * values.mean(0)).sum(-1)
