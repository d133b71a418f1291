"""Polynomial series of Dahlke & Pacheco (NeurIPS 2023): convergent Taylor, Taylor limit and Legendre.

All three need the power moments ``M_k = integral p(x)^k dx`` for ``k = 2 .. N + 1``, which have a closed form for a
Gaussian mixture through the multinomial expansion over count vectors ``j`` (``sum_i j_i = k``):

    M_k = sum_j k! / prod_i j_i! * prod_i w_i^{j_i} * integral prod_i N(x; mu_i, S_i)^{j_i} dx.

The count vectors are enumerated once per (K, N) and cached as an integer matrix, so every per-term statistic is a
matrix product. Moments and the alternating series sums run in float64 whatever the input dtype, because the
binomial sums cancel catastrophically in float32.
"""

import itertools
import math
from functools import lru_cache
from typing import Dict, Optional, Tuple

import torch as th

from sb3_gmm.entropy._common import DEFAULT_METHOD, LOG_2PI, MixtureParams, component_log_normalisers
from sb3_gmm.entropy.registry import Option, positive_int, register

MAX_ORDER = 20
DEFAULT_MAX_TERMS = 50_000
# Elements of any one float64 intermediate (512 MiB); above this we refuse rather than swap or crash.
MAX_ELEMENTS = 2**26
CHEAPER_METHODS = (
    ", ".join(
        [f"{DEFAULT_METHOD!r} (the default)"]
        + [repr(name) for name in ("pairwise_bhattacharyya", "pairwise_kl") if name != DEFAULT_METHOD]
    )
    + " or a lower order"
)


def count_terms(n_components: int, order: int) -> int:
    """Number of count vectors needed by a series of this order: ``sum_{k=2}^{N+1} C(k + K - 1, K - 1)``."""
    return sum(math.comb(k + n_components - 1, n_components - 1) for k in range(2, order + 2))


@lru_cache(maxsize=32)
def count_vectors(n_components: int, max_power: int) -> Tuple[th.Tensor, th.Tensor, Tuple[int, ...]]:
    """All count vectors with ``sum_i j_i = k`` for ``k = 2 .. max_power``, grouped by ``k``.

    :return: ``counts [T, K]`` (float64), ``log_multinomial [T]`` = ``log k! - sum_i log j_i!``, and the row offsets
        where each ``k`` starts (``len = max_power``; group ``k`` is ``offsets[k-2]:offsets[k-1]``)
    """
    rows, log_coefficients, offsets = [], [], [0]
    for power in range(2, max_power + 1):
        # Stars and bars: choose K - 1 bar positions among power + K - 1 slots.
        for bars in itertools.combinations(range(power + n_components - 1), n_components - 1):
            edges = (-1, *bars, power + n_components - 1)
            counts = [edges[i + 1] - edges[i] - 1 for i in range(n_components)]
            rows.append(counts)
            log_coefficients.append(math.lgamma(power + 1) - sum(math.lgamma(c + 1) for c in counts))
        offsets.append(len(rows))
    return th.tensor(rows, dtype=th.float64), th.tensor(log_coefficients, dtype=th.float64), tuple(offsets)


@lru_cache(maxsize=32)
def _pair_counts(n_components: int, max_power: int) -> Tuple[th.Tensor, th.Tensor, th.Tensor]:
    """``j_i j_k`` of every count vector for every pair ``i < k``, ``[T, K(K-1)/2]`` (float64), and the pair indices."""
    counts = count_vectors(n_components, max_power)[0]
    first, second = th.triu_indices(n_components, n_components, offset=1)
    return counts[:, first] * counts[:, second], first, second


def series_intermediates(n_components: int, order: int, batch_elements: int, dim: int) -> Dict[str, int]:
    """Element count of every intermediate of :func:`log_power_moments` that grows with the term count ``T``.

    Keys describe the shapes: the cached count vectors ``[T, K]`` and their pair products ``[T, K(K-1)/2]``, and the
    per-mixture ``[batch, T, D]`` statistics (total precision, spread) and ``[batch, K(K-1)/2, D]`` pair spreads.
    """
    terms = count_terms(n_components, order)
    pairs = n_components * (n_components - 1) // 2
    batch = max(batch_elements, 1)
    return {
        f"[{terms:,} terms x {n_components} components] count vectors": terms * n_components,
        f"[{terms:,} terms x {pairs:,} component pairs] pair counts": terms * pairs,
        f"[{batch:,} mixtures x {terms:,} terms x D={dim}] moment statistics": batch * terms * dim,
        f"[{batch:,} mixtures x {pairs:,} component pairs x D={dim}] pair spreads": batch * pairs * dim,
    }


def check_series_size(n_components: int, order: int, batch_elements: int, dim: int, max_terms: int) -> None:
    """Refuse a (K, order, batch) whose term count or any intermediate would exhaust memory, naming cheaper methods.

    Runs before the count vectors are enumerated (in Python, as slow as they are large).
    """
    terms = count_terms(n_components, order)
    if terms > max_terms:
        raise ValueError(
            f"order={order} with K={n_components} components needs {terms:,} moment terms (max_terms={max_terms:,}); "
            f"lower the order, raise max_terms if you have the memory, or use {CHEAPER_METHODS}"
        )
    sizes = series_intermediates(n_components, order, batch_elements, dim)
    name, largest = max(sizes.items(), key=lambda item: item[1])
    if largest > MAX_ELEMENTS:
        raise ValueError(
            f"order={order} with K={n_components} needs {terms:,} terms for each of {batch_elements:,} mixtures in "
            f"D={dim}: its {name} alone would take {8 * largest / 2**30:.1f} GiB "
            f"(limit {8 * MAX_ELEMENTS / 2**30:.1f} GiB); evaluate a smaller batch, lower the order, or use "
            f"{CHEAPER_METHODS}"
        )


def log_power_moments(params: MixtureParams, max_power: int) -> th.Tensor:
    """``log M_k`` for ``k = 2 .. max_power`` in float64, shape ``[..., max_power - 1]``."""
    counts, log_multinomial, offsets = count_vectors(params.n_components, max_power)
    device = params.means.device
    counts, log_multinomial = counts.to(device), log_multinomial.to(device)
    pair_counts, first, second = _pair_counts(params.n_components, max_power)
    pair_counts = pair_counts.to(device)
    log_weights = params.log_weights.double()
    means = params.means.double()
    log_stds = params.log_stds.double()
    precisions = th.exp(-2.0 * log_stds)  # [..., K, D]
    total_precision = counts @ precisions  # [..., T, D]
    # q - eta^2 / L = sum_{i<k} j_i j_k P_i P_k (mu_i - mu_k)^2 / L: a sum of non-negative terms of mean differences.
    # The direct form cancels catastrophically once components sit many stds apart (or far from the origin): at
    # 1e3 stds a relative error of 1e-10 in M_k, which the high-order Legendre sums turn into whole nats.
    pair_spread = (
        precisions[..., first, :] * precisions[..., second, :] * (means[..., first, :] - means[..., second, :]).square()
    )  # [..., K(K-1)/2, D]
    spread = (pair_counts @ pair_spread) / total_precision
    powers = counts.sum(-1)  # k of each row
    log_integral = (
        -0.5 * (powers - 1.0) * params.dim * LOG_2PI
        - (counts @ log_stds.sum(-1).unsqueeze(-1)).squeeze(-1)
        - 0.5 * (total_precision.log() + spread).sum(-1)
    )
    log_terms = log_multinomial + (counts @ log_weights.unsqueeze(-1)).squeeze(-1) + log_integral  # [..., T]
    return th.stack(
        [th.logsumexp(log_terms[..., offsets[i] : offsets[i + 1]], dim=-1) for i in range(len(offsets) - 1)], dim=-1
    )


def log_centre(params: MixtureParams) -> th.Tensor:
    """``log a`` with ``a = sum_i w_i N(mu_i; mu_i, S_i) >= max_x p(x)``: the centre that makes Taylor a lower bound."""
    return th.logsumexp(params.log_weights + component_log_normalisers(params.log_stds), dim=-1).double()


def scaled_moments(params: MixtureParams, order: int, max_terms: int) -> Tuple[th.Tensor, th.Tensor]:
    """``rho_k = M_{k+1} / a^k`` for ``k = 0 .. order`` (``rho_0 = 1``) in float64, and ``log a``."""
    check_series_size(params.n_components, order, params.log_weights[..., 0].numel(), params.dim, max_terms)
    log_a = log_centre(params)
    if order == 0:
        return th.ones_like(log_a).unsqueeze(-1), log_a
    log_moments = log_power_moments(params, order + 1)  # k = 2 .. order + 1
    powers = th.arange(1, order + 1, dtype=th.float64, device=log_a.device)
    rho = th.exp(log_moments - powers * log_a.unsqueeze(-1))
    return th.cat([th.ones_like(rho[..., :1]), rho], dim=-1), log_a


@lru_cache(maxsize=8)
def _binomial_matrix(order: int) -> th.Tensor:
    """``B[n, k] = C(n, k) (-1)^k`` so that ``E[u^n] = B @ rho``."""
    return th.tensor(
        [[math.comb(n, k) * (-1) ** k if k <= n else 0 for k in range(order + 1)] for n in range(order + 1)],
        dtype=th.float64,
    )


def taylor_terms(params: MixtureParams, order: int, max_terms: int) -> Tuple[th.Tensor, th.Tensor]:
    """The non-negative series terms ``E_p[u^n] / n`` for ``n = 1 .. order`` and ``log a``."""
    rho, log_a = scaled_moments(params, order, max_terms)
    if order == 0:
        return rho[..., :0], log_a
    binomial = _binomial_matrix(order).to(rho.device)
    # Each E_p[u^n] is >= 0 exactly; clamping removes round-off that would break the lower-bound guarantee.
    central = (rho @ binomial.T)[..., 1:].clamp_min(0.0)
    return central / th.arange(1, order + 1, dtype=th.float64, device=rho.device), log_a


def _order_option(default: int, minimum: int) -> Option:
    return Option(
        default,
        positive_int(maximum=MAX_ORDER, minimum=minimum),
        f"series order in [{minimum}, {MAX_ORDER}]; the alternating sums lose all float64 digits beyond that",
    )


_MAX_TERMS_OPTION = Option(
    DEFAULT_MAX_TERMS, positive_int(), "refuse (K, order) pairs with more moment terms than this (memory guard)"
)


@register(
    "taylor",
    bound="lower",
    cost="O(C(N+K, K) D) moment terms",
    summary="Dahlke & Pacheco convergent Taylor series of log p about a >= max p; each truncation is a lower bound",
    options={"order": _order_option(4, 0), "max_terms": _MAX_TERMS_OPTION},
    exact_for_single_gaussian=False,
)
def taylor(params: MixtureParams, order: int = 4, max_terms: int = DEFAULT_MAX_TERMS) -> th.Tensor:
    """``H_N = -log a + sum_{n=1}^N E_p[(1 - p/a)^n] / n``: non-decreasing in N, converging to H from below."""
    terms, log_a = taylor_terms(params, order, max_terms)
    return (terms.sum(-1) - log_a).to(params.means.dtype)


@register(
    "taylor_limit",
    bound=None,
    cost="O(C(N+K, K) D) moment terms",
    summary="Taylor partial sums N-2, N-1, N extrapolated to the limit (Aitken delta-squared, our reading of Sec. 4.4)",
    options={"order": _order_option(4, 2), "max_terms": _MAX_TERMS_OPTION},
    exact_for_single_gaussian=False,
)
def taylor_limit(params: MixtureParams, order: int = 4, max_terms: int = DEFAULT_MAX_TERMS) -> th.Tensor:
    """Aitken's delta-squared on the last three partial sums: add the geometric tail ``t_N r / (1 - r)``.

    ``r = t_N / t_{N-1}`` is the ratio of the last two (non-negative) terms; it is capped at 0.99 and the tail is
    dropped where ``t_{N-1} = 0``, so the result is finite and never below the plain Taylor bound.
    """
    terms, log_a = taylor_terms(params, order, max_terms)
    partial_sum = terms.sum(-1) - log_a
    last, previous = terms[..., -1], terms[..., -2]
    safe_previous = th.where(previous > 0, previous, th.ones_like(previous))
    ratio = th.where(previous > 0, last / safe_previous, th.zeros_like(previous)).clamp(0.0, 0.99)
    return (partial_sum + last * ratio / (1.0 - ratio)).to(params.means.dtype)


@lru_cache(maxsize=8)
def _legendre_coefficients(order: int) -> th.Tensor:
    """``v_j = sum_{n=1}^N c_n Pt_n[j]``: the constant part of the Legendre estimate, dotted with ``rho``."""
    coefficients = [0.0] * (order + 1)
    for n in range(1, order + 1):
        c_n = (-1) ** (n + 1) * (2 * n + 1) / (n * (n + 1))
        for j in range(n + 1):
            shifted = (-1) ** (n + j) * math.factorial(n + j) / (math.factorial(n - j) * math.factorial(j) ** 2)
            coefficients[j] += c_n * shifted
    return th.tensor(coefficients, dtype=th.float64)


@register(
    "legendre",
    bound=None,
    cost="O(C(N+K, K) D) moment terms",
    summary="Dahlke & Pacheco Legendre series of log on [0, a]; not a bound",
    options={"order": _order_option(6, 0), "max_terms": _MAX_TERMS_OPTION},
    exact_for_single_gaussian=False,
)
def legendre(params: MixtureParams, order: int = 6, max_terms: int = DEFAULT_MAX_TERMS) -> th.Tensor:
    """``H ~= -sum_n c_n E_p[Pt_n(p / a)]`` with shifted Legendre polynomials ``Pt_n`` on ``[0, 1]``.

    ``c_0 = log a - 1`` and ``c_n = (-1)^(n+1) (2n+1) / (n(n+1))``; ``E_p[(p/a)^j] = rho_j``.
    """
    rho, log_a = scaled_moments(params, order, max_terms)
    constant = rho @ _legendre_coefficients(order).to(rho.device)
    return (1.0 - log_a - constant).to(params.means.dtype)


def series_partial_sums(params: MixtureParams, order: int, max_terms: Optional[int] = None) -> th.Tensor:
    """Taylor partial sums ``H_0 .. H_order``, shape ``[..., order + 1]`` (for tests and benchmarks)."""
    terms, log_a = taylor_terms(params, order, max_terms or DEFAULT_MAX_TERMS)
    zero = th.zeros_like(log_a).unsqueeze(-1)
    return th.cat([zero, terms.cumsum(-1)], dim=-1) - log_a.unsqueeze(-1)
