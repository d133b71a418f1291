"""Estimators that average over points: Monte Carlo, quasi-Monte Carlo and sigma-point (cubature) rules.

All of them rest on one identity. With ``x = mu_i + s_i * eps`` (``eps ~ N(0, I)``, reparameterised),

    H(p) = sum_i w_i E_eps[-log p(x)]
         = sum_i w_i ( H_i - E_eps[ logsumexp_j( log w_j + Delta_ij(eps) ) ] ),
    Delta_ij(eps) = log N_j(x) - log N_i(x) = sum_d c_ijd + b_ijd eps_d + a_ijd eps_d^2.

The Gaussian part ``H_i`` is exact, so only the bounded correction (``log r_i``, the log responsibility) is averaged:
the control variate of the notes. It vanishes for far-apart components and is constant for coincident ones, so every
point set is exact in both limits and for K = 1. Because ``Delta`` is a quadratic form in ``eps``, evaluating it at
``n`` shared points is one matrix product ``[..., K, K, 2D] @ [2D, n]``: the cost of a few log_probs, not ``n`` of them.
"""

import math
from functools import lru_cache
from typing import Optional, Tuple

import torch as th

from sb3_gmm.entropy._common import LOG_2PI, MixtureParams, gaussian_entropies, pairwise_differences, weighted_sum
from sb3_gmm.entropy.registry import Option, one_of, optional_seed, positive_int, register


def _quadratic_form_coefficients(params: MixtureParams) -> Tuple[th.Tensor, th.Tensor]:
    """Coefficients of ``Delta_ij(eps)``: the constant ``[..., K, K]`` and ``[b, a]`` stacked as ``[..., K, K, 2D]``."""
    log_std_ratio = params.log_stds.unsqueeze(-2) - params.log_stds.unsqueeze(-3)  # log s_i / s_j
    std_j = params.stds.unsqueeze(-3)
    scaled_diff = pairwise_differences(params.means) / std_j  # (mu_i - mu_j) / s_j
    std_ratio = log_std_ratio.exp()
    constant = (log_std_ratio - 0.5 * scaled_diff.square()).sum(-1)
    linear = -scaled_diff * std_ratio
    quadratic = 0.5 * (1.0 - std_ratio.square())
    return constant, th.cat([linear, quadratic], dim=-1)


def quadrature_entropy(
    params: MixtureParams,
    points: th.Tensor,
    point_weights: th.Tensor,
    control_variate: bool = True,
) -> th.Tensor:
    """Entropy from standard-normal points, stratified per component (the core of every method in this module).

    :param params: the mixture
    :param points: ``[n, D]`` points shared by all components, or ``[..., K, n, D]`` points of their own
    :param point_weights: ``[n]`` quadrature weights summing to one
    :param control_variate: keep the exact Gaussian part (True) or average the plain ``-log p`` (False: plain MC)
    :return: entropy ``[...]``
    """
    constant, coefficients = _quadratic_form_coefficients(params)
    features = th.cat([points, points.square()], dim=-1).transpose(-1, -2)  # [2D, n] or [..., K, 2D, n]
    if features.dim() > 2:
        # Own points per (batch, component i): contract over the feature axis for each i.
        delta = th.matmul(coefficients, features)
    else:
        delta = coefficients @ features
    delta = delta + constant.unsqueeze(-1)  # [..., K(i), K(j), n]
    log_mixture_ratio = th.logsumexp(params.log_weights.unsqueeze(-1).unsqueeze(-3) + delta, dim=-2)  # [..., K, n]
    correction = (log_mixture_ratio * point_weights).sum(-1)
    per_component = gaussian_entropies(params.log_stds) - correction
    if not control_variate:
        # -log N_i(x) averaged over the points instead of its exact expectation H_i.
        half_squared_norm = 0.5 * (points.square().sum(-1) * point_weights).sum(-1)
        per_component = per_component + half_squared_norm - 0.5 * params.dim
    return weighted_sum(params.log_weights, per_component)


# --------------------------------------------------------------------------------------------------------------------
# Point sets. Cached per (kind, D, n): they are constants, built once and moved to the inputs' dtype/device.


def _standard_normal_icdf(uniform: th.Tensor) -> th.Tensor:
    return math.sqrt(2.0) * th.erfinv(2.0 * uniform - 1.0)


@lru_cache(maxsize=64)
def sobol_points(dim: int, n_points: int, seed: int = 0, antithetic: bool = True) -> th.Tensor:
    """Fixed scrambled-Sobol points mapped to N(0, I), float64 ``[n, D]``.

    With ``antithetic`` the set is ``{z, -z}`` and each coordinate is rescaled to unit mean square, so the point set
    reproduces the first two moments of every coordinate exactly: the mean of ``Delta_ij`` over the points is then
    exactly ``-KL(N_i || N_j)`` and only the curvature of the integrand is left to quadrature error.
    """
    base = n_points // 2 if antithetic else n_points
    engine = th.quasirandom.SobolEngine(dimension=dim, scramble=True, seed=seed)
    uniform = engine.draw(base, dtype=th.float64)
    # Centre each Sobol cell so no point sits at 0 or 1 (infinite normal quantile).
    uniform = uniform.clamp(1e-10, 1.0 - 1e-10)
    z = _standard_normal_icdf(uniform)
    if antithetic:
        z = th.cat([z, -z], dim=0)
        z = z / z.square().mean(0, keepdim=True).sqrt()
    return z


@lru_cache(maxsize=64)
def gauss_hermite_points(n_points: int) -> Tuple[th.Tensor, th.Tensor]:
    """Gauss-Hermite nodes and weights for N(0, 1) (probabilists'), float64, exact for polynomials up to 2n-1."""
    # Golub-Welsch: eigenvalues of the Jacobi matrix of the probabilists' Hermite polynomials.
    off_diagonal = th.sqrt(th.arange(1, n_points, dtype=th.float64))
    jacobi = th.diag(off_diagonal, 1) + th.diag(off_diagonal, -1)
    nodes, vectors = th.linalg.eigh(jacobi)
    weights = vectors[0].square()
    return nodes.unsqueeze(-1), weights / weights.sum()


@lru_cache(maxsize=64)
def sigma_point_rule(dim: int, degree: int, kappa: Optional[float]) -> Tuple[th.Tensor, th.Tensor]:
    """Fully symmetric cubature rules for N(0, I), float64 points ``[n, D]`` and weights ``[n]``.

    degree 3: the unscented transform, ``{0, +-sqrt(D + kappa) e_d}`` (2D + 1 points).
    degree 5: Stroud's rule, ``{0, +-sqrt(3) e_d, +-sqrt(3) e_d +- sqrt(3) e_e}`` (2D^2 + 1 points), exact for
    every polynomial of degree <= 5.
    """
    eye = th.eye(dim, dtype=th.float64)
    if degree == 3:
        spread = dim + (kappa if kappa is not None else max(3.0 - dim, 0.0))
        points = th.cat([th.zeros(1, dim, dtype=th.float64), math.sqrt(spread) * eye, -math.sqrt(spread) * eye])
        centre_weight = 1.0 - dim / spread
        weights = th.cat([th.tensor([centre_weight], dtype=th.float64), th.full((2 * dim,), 0.5 / spread, dtype=th.float64)])
        return points, weights
    root3 = math.sqrt(3.0)
    pairs = [
        root3 * (sign_a * eye[a] + sign_b * eye[b])
        for a in range(dim)
        for b in range(a + 1, dim)
        for sign_a in (1.0, -1.0)
        for sign_b in (1.0, -1.0)
    ]
    points = [th.zeros(1, dim, dtype=th.float64), root3 * eye, -root3 * eye]
    if pairs:
        points.append(th.stack(pairs))
    weights = [
        th.tensor([1.0 + (dim * dim - 7.0 * dim) / 18.0], dtype=th.float64),
        th.full((2 * dim,), (4.0 - dim) / 18.0, dtype=th.float64),
        th.full((len(pairs),), 1.0 / 36.0, dtype=th.float64),
    ]
    return th.cat(points), th.cat(weights)


def _as_input(tensor: th.Tensor, like: th.Tensor) -> th.Tensor:
    return tensor.to(dtype=like.dtype, device=like.device)


# --------------------------------------------------------------------------------------------------------------------
# Registered estimators.


def _check_kappa(value: object) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or not math.isfinite(value):
        return "must be None or a finite number >= 0"
    return None


@register(
    "monte_carlo",
    bound=None,
    cost="O(n K^2 D)",
    summary="plain Monte Carlo of -log p, n_samples per component, reparameterised (the seeds' noisy baseline)",
    options={
        "n_samples": Option(64, positive_int(maximum=1_000_000), "samples per component and batch element"),
        "seed": Option(None, optional_seed, "None draws fresh noise every call; an int makes the estimate repeatable"),
    },
    deterministic=False,
    exact_for_single_gaussian=False,
)
def monte_carlo(params: MixtureParams, n_samples: int = 64, seed: Optional[int] = None) -> th.Tensor:
    """Unbiased, noisy: ``sum_i w_i mean_n[-log p(mu_i + s_i eps_in)]`` with fresh ``eps`` per batch element."""
    generator = None
    if seed is not None:
        generator = th.Generator(device=params.means.device)
        generator.manual_seed(seed)
    shape = (*params.means.shape[:-1], n_samples, params.dim)
    eps = th.randn(shape, generator=generator, dtype=params.means.dtype, device=params.means.device)
    point_weights = th.full((n_samples,), 1.0 / n_samples, dtype=params.means.dtype, device=params.means.device)
    return quadrature_entropy(params, eps, point_weights, control_variate=False)


@register(
    "qmc",
    bound=None,
    cost="O(n K^2 D)",
    summary="fixed scrambled-Sobol points per component with the Gaussian control variate (deterministic)",
    options={
        "n_points": Option(64, positive_int(maximum=65536, minimum=2), "points per component (a power of 2 is best)"),
        "antithetic": Option(True, one_of(True, False), "use {z, -z} pairs with unit second moments"),
        "seed": Option(0, positive_int(minimum=0), "scrambling seed of the fixed point set"),
    },
)
def qmc(params: MixtureParams, n_points: int = 64, antithetic: bool = True, seed: int = 0) -> th.Tensor:
    points = _as_input(sobol_points(params.dim, n_points, seed, antithetic), params.means)
    point_weights = th.full((points.shape[0],), 1.0 / points.shape[0], dtype=points.dtype, device=points.device)
    return quadrature_entropy(params, points, point_weights)


@register(
    "sigma_points",
    bound=None,
    cost="O(D K^2 D) for degree 3, O(D^2 K^2 D) for degree 5",
    summary="unscented sigma points (degree 3) or Stroud's degree-5 rule, with the Gaussian control variate",
    options={
        "degree": Option(3, one_of(3, 5), "3: 2D+1 points (unscented); 5: 2D^2+1 points"),
        "kappa": Option(None, _check_kappa, "unscented spread; None uses max(3 - D, 0)"),
    },
)
def sigma_points(params: MixtureParams, degree: int = 3, kappa: Optional[float] = None) -> th.Tensor:
    points, point_weights = sigma_point_rule(params.dim, degree, None if kappa is None else float(kappa))
    return quadrature_entropy(params, _as_input(points, params.means), _as_input(point_weights, params.means))


__all__ = ["LOG_2PI", "quadrature_entropy", "sobol_points", "gauss_hermite_points", "sigma_point_rule"]
