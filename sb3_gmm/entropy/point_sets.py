"""Standard-normal point sets of the quadrature estimators: scrambled Sobol, Gauss-Hermite, sinh-spaced (1-D) and
sigma-point rules.

Cached per (kind, D, n): they are constants, built once in float64; :mod:`sb3_gmm.entropy.quadrature` converts them
to the inputs' dtype and device.
"""

import math
from functools import lru_cache
from typing import Optional, Tuple

import torch as th


def _standard_normal_icdf(uniform: th.Tensor) -> th.Tensor:
    return math.sqrt(2.0) * th.erfinv(2.0 * uniform - 1.0)


@lru_cache(maxsize=64)
def sobol_points(n_components: int, dim: int, n_points: int, seed: int = 0) -> th.Tensor:
    """Fixed scrambled-Sobol points mapped to N(0, I), one differently scrambled set per component, float64
    ``[K, n, D]``.

    Each set is shifted and rescaled per coordinate to mean exactly 0 and mean square exactly 1, so the mean of
    ``Delta_ij`` over the points is exactly ``-KL(N_i || N_j)`` and only the curvature of the integrand is left to
    quadrature error. Independent scrambles per component decorrelate the components' errors, which then partly
    cancel in the weighted sum. Antithetic pairs ``{z, -z}`` duplicate every ``z^2``, the part that matters for
    components of different widths. Both choices are measured against the alternatives in docs/qmc_design.md.
    """
    sets = []
    for component in range(n_components):
        engine = th.quasirandom.SobolEngine(dimension=dim, scramble=True, seed=seed * 7919 + component)
        # Clamping keeps the normal quantile finite if a scrambled point lands on 0.
        uniform = engine.draw(n_points, dtype=th.float64).clamp(1e-12, 1.0 - 1e-12)
        z = _standard_normal_icdf(uniform)
        if n_points > 1:
            z = z - z.mean(0, keepdim=True)
            z = z / z.square().mean(0, keepdim=True).sqrt()
        sets.append(z)
    return th.stack(sets)


@lru_cache(maxsize=64)
def gauss_hermite_points(n_points: int) -> Tuple[th.Tensor, th.Tensor]:
    """Gauss-Hermite nodes and weights for N(0, 1) (probabilists'), float64, exact for polynomials up to 2n-1."""
    # Golub-Welsch: eigenvalues of the Jacobi matrix of the probabilists' Hermite polynomials.
    off_diagonal = th.sqrt(th.arange(1, n_points, dtype=th.float64))
    jacobi = th.diag(off_diagonal, 1) + th.diag(off_diagonal, -1)
    nodes, vectors = th.linalg.eigh(jacobi)
    weights = vectors[0].square()
    return nodes.unsqueeze(-1), weights / weights.sum()


# Half-width of the sinh rule: N(0, 1) puts 3.8e-8 of its mass beyond +-5.5, below float32 resolution of a bounded
# integrand; every node spent further out widens the spacing everywhere else.
SINH_RULE_HALF_WIDTH = 5.5


@lru_cache(maxsize=64)
def sinh_normal_points(
    n_points: int, scale: float = 1.0, half_width: float = SINH_RULE_HALF_WIDTH
) -> Tuple[th.Tensor, th.Tensor]:
    """A sinh-spaced trapezoid rule for N(0, 1): nodes ``eps = a sinh(t)`` with ``t`` evenly spaced on
    ``[-asinh(L / a), asinh(L / a)]``, weights ``phi(eps) a cosh(t)`` normalised to sum to one; float64 nodes
    ``[n, 1]`` and weights ``[n]``, symmetric about 0.

    The spacing is ``~ a dt`` near 0 and grows like ``|eps| dt`` in the tails. Gauss-Hermite's central spacing shrinks
    only like ``pi / sqrt(n)`` while many of its nodes sit in tails of negligible weight; this rule spends its nodes
    where a wide component sees the sharp features of a narrower one (its responsibility switching over a fraction
    of the wide std, within a few stds of the centre), and the trapezoid rule in ``t`` stays geometrically accurate
    for smooth integrands (docs/qmc_design.md, one-dimensional rules).

    :param n_points: number of nodes (>= 2)
    :param scale: ``a``, the central spacing in units of ``dt``; smaller is denser at the centre, sparser outside
    :param half_width: ``L``, the outermost node
    """
    if isinstance(n_points, bool) or not isinstance(n_points, int) or n_points < 2:
        raise ValueError(f"n_points must be an int >= 2, got {n_points!r}")
    for name, value in (("scale", scale), ("half_width", half_width)):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    extent = math.asinh(half_width / scale)
    t = th.linspace(-extent, extent, n_points, dtype=th.float64)
    nodes = scale * th.sinh(t)
    # The trapezoid rule of the whole line in t, truncated: the integrand decays like phi, so the ends are not halved.
    weights = th.exp(-0.5 * nodes.square()) * th.cosh(t)
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
        weights = th.cat(
            [th.tensor([centre_weight], dtype=th.float64), th.full((2 * dim,), 0.5 / spread, dtype=th.float64)]
        )
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
