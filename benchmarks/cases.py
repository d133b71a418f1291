"""Diagonal Gaussian mixtures and their ground truth, shared by the tests and the benchmarks.

Reusable from scratch experiments::

    from benchmarks.cases import make_suite, ground_truth
    cases = make_suite(dims=(6,), components=(4,))
    truth = ground_truth(cases[0])  # truth.entropy, truth.standard_error, truth.gradient

The truth is written independently of ``sb3_gmm.entropy`` (it shares only the constant ``LOG_2PI``), so it can check
that library. Gradients are always flattened as ``[d/dlogits (K), d/dmeans (K*D), d/dlog_stds (K*D)]``.
"""

import math
from dataclasses import dataclass, replace
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch as th

from sb3_gmm.mixture import LOG_2PI

LOG_2PI_E = LOG_2PI + 1.0
Params = Tuple[th.Tensor, th.Tensor, th.Tensor]  # logits [K], means [K, D], stds [K, D]

DIMS: Tuple[int, ...] = (1, 2, 3, 6, 10, 17, 32)
COMPONENTS: Tuple[int, ...] = (1, 2, 4, 8, 16)
MAX_STD_RATIO = 4.0
ONE_HOT_LOGIT_GAP = 8.0
# "far" components sit at least this many typical stds apart along a line: disjoint to float64 precision.
FAR_GAP = 40.0
# narrow_heavy: the dominant component's weight, and how much narrower it is than the others in one dimension (a
# policy that has converged in one action dimension but not the others). Narrowing every dimension is the easy case:
# the heavy component then decouples from the wide ones (docs/qmc_design.md, narrow inside wide).
NARROW_HEAVY_WEIGHT = 0.7
NARROW_STD_RATIO = 32.0
# Every kind, in a fixed order: the position seeds the kind's random stream, so append new kinds at the end.
# sep<s>: means offset by s typical stds (stds differ); concentric: one centre, widths 1x..MAX_STD_RATIO x;
# one_hot*: one logit ONE_HOT_LOGIT_GAP above the rest; coincident: identical components; far: disjoint ones
# (these two draw from the streams of sep0 and sep8: the same mixtures made identical or pulled apart);
# narrow_heavy: one heavy component (weight NARROW_HEAVY_WEIGHT), NARROW_STD_RATIO x narrower in one dimension, inside
# light, wide ones (means 0.5 typical stds apart).
ALL_KINDS: Tuple[str, ...] = (
    *("sep0", "sep0.5", "sep2", "sep8", "concentric", "one_hot", "one_hot_concentric"),
    *("single", "coincident", "far", "narrow_heavy"),
)
FULL_KINDS: Tuple[str, ...] = (*ALL_KINDS[:7], "narrow_heavy")  # the benchmark suite per (D, K > 1)
QUICK_KINDS: Tuple[str, ...] = ("sep0.5", "concentric", "one_hot")


@dataclass(frozen=True, eq=False)
class MixtureCase:
    """One diagonal GMM (float64, no batch axis).

    :param name: unique label, e.g. ``"D6-K4-sep2"`` (``-s<seed>`` appended for seeds other than 0)
    :param kind: one of :data:`ALL_KINDS`
    :param separation: mean-offset scale in units of the typical std (0 for concentric kinds)
    :param logits: unnormalised log weights ``[K]``
    :param means: component means ``[K, D]``
    :param stds: component standard deviations ``[K, D]``
    :param seed: the seed it was made from
    """

    name: str
    kind: str
    separation: float
    logits: th.Tensor
    means: th.Tensor
    stds: th.Tensor
    seed: int = 0

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    @property
    def n_components(self) -> int:
        return self.means.shape[-2]

    @property
    def params(self) -> Params:
        return self.logits, self.means, self.stds


@dataclass(frozen=True)
class GroundTruth:
    """Monte Carlo truth for one mixture.

    :param entropy: the estimate in nats (mean of the replicates)
    :param standard_error: its standard error in nats (pooled over all samples)
    :param plain_variance: ``sum_i w_i^2 Var_{N_i}[log p]``: plain stratified Monte Carlo with ``n`` samples per
        component has standard error ``sqrt(plain_variance / n)``
    :param gradient: flattened gradient ``[K + 2 K D]`` (mean of the replicates), None when not asked for
    :param gradient_seed_cosine: cosine between the first two replicates' gradients (nan with one replicate)
    :param mixing_seed_cosine: the same restricted to the ``[d/dlogits, d/dmeans]`` part (nan when it is ~0)
    :param samples_per_component: total samples per component over all replicates
    """

    entropy: float
    standard_error: float
    plain_variance: float = math.nan
    gradient: Optional[th.Tensor] = None
    gradient_seed_cosine: float = math.nan
    mixing_seed_cosine: float = math.nan
    samples_per_component: int = 0


def _draw_geometry(rng: np.random.Generator, kind: str, n_components: int, centre: np.ndarray, typical_std: float):
    """Means ``[K, D]``, stds ``[K, D]`` and the separation of one kind."""
    dim = centre.shape[0]
    if kind.endswith("concentric"):
        # Widths log-spaced from 1x to MAX_STD_RATIO x, in random order, with a little per-dimension jitter.
        ratios = rng.permutation(MAX_STD_RATIO ** (np.arange(n_components) / max(n_components - 1, 1)))
        stds = typical_std * ratios[:, None] * np.exp(0.1 * rng.normal(size=(n_components, dim)))
        return np.repeat(centre[None, :], n_components, axis=0), stds, 0.0
    stds = typical_std * np.exp(0.3 * rng.normal(size=(n_components, dim)))
    if kind == "coincident":
        return np.repeat(centre[None, :], n_components, axis=0), np.repeat(stds[:1], n_components, axis=0), 0.0
    if kind == "far":
        direction = rng.normal(size=dim)
        offsets = FAR_GAP * typical_std * np.arange(n_components)[:, None] * direction / np.linalg.norm(direction)
        means = centre + rng.permutation(offsets)
        return means + 0.5 * typical_std * rng.normal(size=(n_components, dim)), stds, FAR_GAP
    if kind == "narrow_heavy":
        # Component 0 is the heavy, narrow one (make_case sets its weight).
        stds[0, rng.integers(dim)] /= NARROW_STD_RATIO
        return centre + 0.5 * typical_std * rng.normal(size=(n_components, dim)), stds, 0.5
    separation = 2.0 if kind in ("one_hot", "single") else float(kind[3:])
    return centre + separation * typical_std * rng.normal(size=(n_components, dim)), stds, separation


def make_case(dim: int, n_components: int, kind: str, seed: int = 0) -> MixtureCase:
    """Build one mixture deterministically from ``(seed, D, K, kind)``.

    :param dim: action dimension D
    :param n_components: number of components K
    :param kind: one of :data:`ALL_KINDS` (``single`` needs K = 1, the others K > 1)
    :param seed: suite seed
    """
    if kind not in ALL_KINDS:
        raise ValueError(f"kind must be one of {ALL_KINDS}, got {kind!r}")
    if (kind == "single") != (n_components == 1):
        raise ValueError(f"kind 'single' is for K = 1 and every other kind for K > 1; got {kind!r}, K={n_components}")
    # One independent stream per (seed, D, K, kind): adding or removing other cases never changes this one.
    stream = ALL_KINDS.index({"coincident": "sep0", "far": "sep8"}.get(kind, kind))
    rng = np.random.default_rng([seed, dim, n_components, stream])
    typical_std = math.exp(rng.uniform(math.log(0.3), math.log(1.0)))
    logits = rng.normal(size=n_components)
    means, stds, separation = _draw_geometry(rng, kind, n_components, rng.normal(size=dim), typical_std)
    if kind.startswith("one_hot"):
        dominant = int(rng.integers(n_components))
        logits = logits - logits.max()
        logits[dominant] = ONE_HOT_LOGIT_GAP
    if kind == "narrow_heavy":
        # Weight NARROW_HEAVY_WEIGHT on component 0, the rest shared as their drawn logits say.
        light = np.log1p(-NARROW_HEAVY_WEIGHT) + logits[1:] - np.logaddexp.reduce(logits[1:])
        logits = np.concatenate([[math.log(NARROW_HEAVY_WEIGHT)], light])
    return MixtureCase(
        name=f"D{dim}-K{n_components}-{kind}" + (f"-s{seed}" if seed else ""),
        kind=kind,
        separation=separation,
        logits=th.tensor(logits, dtype=th.float64),
        means=th.tensor(means, dtype=th.float64),
        stds=th.tensor(stds, dtype=th.float64),
        seed=seed,
    )


def make_suite(
    dims: Sequence[int] = DIMS,
    components: Sequence[int] = COMPONENTS,
    seed: int = 0,
    quick: bool = False,
    kinds: Optional[Sequence[str]] = None,
) -> List[MixtureCase]:
    """All mixtures for the given dimensions and component counts, in a fixed order (one ``single`` for K = 1).

    :param dims: action dimensions D
    :param components: component counts K
    :param seed: suite seed (same seed, same mixtures)
    :param quick: :data:`QUICK_KINDS` instead of :data:`FULL_KINDS`
    :param kinds: the kinds per (D, K > 1), overriding ``quick``
    """
    kinds = tuple(kinds or (QUICK_KINDS if quick else FULL_KINDS))
    return [
        make_case(dim, n_components, kind, seed)
        for dim in dims
        for n_components in components
        for kind in (("single",) if n_components == 1 else kinds)
    ]


def random_mixture(rng: np.random.Generator, dim: int) -> Params:
    """A mixture with K in 1..4, separation log-uniform over 1e-2..10 stds, std ratios up to ~e^2, spread logits."""
    n_components = int(rng.integers(1, 5))
    separation = math.exp(rng.uniform(math.log(1e-2), math.log(10.0)))
    stds = np.exp(rng.uniform(-1.0, 1.0) + 0.7 * rng.normal(size=(n_components, dim)))
    means = separation * rng.normal(size=(n_components, dim))
    logits = 2.0 * rng.normal(size=n_components)
    return tuple(th.tensor(value, dtype=th.float64) for value in (logits, means, stds))


def random_batch(dim: int, n_components: int, batch: int, seed: int) -> Params:
    """A batch ``[batch, ...]`` of mixtures spanning coincident to far apart (per-element separation), in float64."""
    generator = th.Generator().manual_seed(seed)
    log_separation = th.empty(batch, 1, 1, dtype=th.float64).uniform_(
        math.log(1e-3), math.log(20.0), generator=generator
    )
    means = log_separation.exp() * th.randn(batch, n_components, dim, generator=generator, dtype=th.float64)
    stds = th.exp(0.8 * th.randn(batch, n_components, dim, generator=generator, dtype=th.float64))
    logits = 2.5 * th.randn(batch, n_components, generator=generator, dtype=th.float64)
    return logits, means, stds


def timing_batch(dim: int, n_components: int, batch_size: int, seed: int = 0, dtype: th.dtype = th.float32):
    """``batch_size`` perturbed copies of the suite's ``sep2`` case (``single`` for K = 1), one action per state.

    The perturbations (0.1 on logits, 0.1 std on means, 0.05 on log stds) keep the batch realistic without changing
    the cost.

    :return: ``logits [B, K]``, ``means [B, K, D]``, ``log_stds [B, K, D]``, ``actions [B, D]`` (no gradients)
    """
    base = make_case(dim, n_components, "single" if n_components == 1 else "sep2", seed)
    generator = th.Generator().manual_seed(seed + 7919 * dim + 104729 * n_components + batch_size)
    shape = (batch_size, n_components, dim)
    logits = base.logits + 0.1 * th.randn(batch_size, n_components, generator=generator, dtype=th.float64)
    log_stds = base.stds.log() + 0.05 * th.randn(shape, generator=generator, dtype=th.float64)
    means = base.means + 0.1 * base.stds * th.randn(shape, generator=generator, dtype=th.float64)
    chosen = th.multinomial(th.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)
    rows = th.arange(batch_size)
    noise = th.randn(batch_size, dim, generator=generator, dtype=th.float64)
    actions = means[rows, chosen] + log_stds[rows, chosen].exp() * noise
    return logits.to(dtype), means.to(dtype), log_stds.to(dtype), actions.to(dtype)


# ----------------------------------------------------------------------------------------------------------------------
# Ground truth


def gaussian_entropy(stds: th.Tensor) -> th.Tensor:
    """Closed form ``0.5 log((2 pi e)^D |S|)`` of diagonal Gaussians, ``stds [..., D] -> [...]``."""
    return 0.5 * stds.shape[-1] * LOG_2PI_E + stds.log().sum(-1)


def log_joint_reference(x: th.Tensor, logits: th.Tensor, means: th.Tensor, stds: th.Tensor) -> th.Tensor:
    """``log w_j N_j(x)`` for every component: ``x [n, D]`` gives ``[n, K]``; written apart from ``sb3_gmm``.

    The quadratic form is expanded into two matrix products (no ``[n, K, D]`` tensor, so 2^17 samples of a K = 16,
    D = 32 mixture fit in memory); entropy is translation invariant, and centring on the mean of the means keeps the
    expansion free of cancellation.
    """
    centre = means.detach().mean(-2)
    x, means = x - centre, means - centre
    precisions = stds.pow(-2)  # [K, D]
    log_weights = logits - th.logsumexp(logits, dim=-1)
    constants = log_weights - stds.log().sum(-1) - 0.5 * means.shape[-1] * LOG_2PI
    constants = constants - 0.5 * (means.square() * precisions).sum(-1)
    return constants - 0.5 * (x.square() @ precisions.T) + x @ (means * precisions).T


def quadrature_rule_1d(means: th.Tensor, stds: th.Tensor) -> Tuple[th.Tensor, th.Tensor]:
    """Nodes and weights for integrals against a 1-D mixture: 10-point Gauss-Legendre panels of a tenth of the
    narrowest covering std over the windows +-12 std around the components (gaps between disjoint windows, where the
    density is below e^-72, are skipped). Accurate to ~1e-12 for these smooth integrands."""
    lows = (means[:, 0] - 12.0 * stds[:, 0]).tolist()
    highs = (means[:, 0] + 12.0 * stds[:, 0]).tolist()
    breaks = sorted(set(lows) | set(highs))
    unit_nodes, unit_weights = np.polynomial.legendre.leggauss(10)
    nodes, weights = [], []
    for start, stop in zip(breaks[:-1], breaks[1:]):
        covering = [std for std, low, high in zip(stds[:, 0].tolist(), lows, highs) if low <= start and high >= stop]
        if not covering:
            continue
        edges = np.linspace(start, stop, math.ceil((stop - start) / (0.1 * min(covering))) + 1)
        half, middle = 0.5 * np.diff(edges), 0.5 * (edges[1:] + edges[:-1])
        nodes.append((middle[:, None] + half[:, None] * unit_nodes).reshape(-1))
        weights.append((half[:, None] * unit_weights).reshape(-1))
    return th.tensor(np.concatenate(nodes)), th.tensor(np.concatenate(weights))


def quadrature_entropy_1d(logits: th.Tensor, means: th.Tensor, stds: th.Tensor) -> th.Tensor:
    """Deterministic 1-D truth ``-int p log p`` by :func:`quadrature_rule_1d`; differentiable (the nodes cover the
    support, so they are held fixed)."""
    nodes, weights = quadrature_rule_1d(means.detach(), stds.detach())
    log_density = th.logsumexp(log_joint_reference(nodes.unsqueeze(-1), logits, means, stds), dim=-1)
    return (weights * -log_density.exp() * log_density).sum()


def _replicate(params: Params, n_samples: int, generator: th.Generator, with_gradient: bool):
    """One stratified Monte Carlo estimate with the Gaussian control variate.

    ``H = sum_i w_i [H_i - E_{N_i}[log p(x) - log N_i(x)]]`` with ``x = mu_i + s_i eps``; ``E_{N_i}[log N_i] = -H_i``
    is exact, so only the bounded log-responsibility term is sampled. The gradient is autograd on the estimate with
    the ``eps`` held fixed (reparameterised), one backward pass per component to bound memory.

    :return: estimate, per-component variances ``[K]`` of the sampled term and of ``log p``, flattened gradient
    """
    logits, means, stds = params
    logits, means, log_stds = (t.double().clone().requires_grad_(with_gradient) for t in (logits, means, stds.log()))
    dim, n_components = means.shape[-1], means.shape[-2]
    estimate, variances, plain_variances = 0.0, [], []
    for i in range(n_components):
        with th.set_grad_enabled(with_gradient):
            log_weights = th.log_softmax(logits, dim=-1)
            eps = th.randn(n_samples, dim, generator=generator, dtype=th.float64)
            log_density = th.logsumexp(
                log_joint_reference(means[i] + log_stds[i].exp() * eps, logits, means, log_stds.exp()), -1
            )
            log_own = -0.5 * dim * LOG_2PI - log_stds[i].sum() - 0.5 * eps.square().sum(-1)  # exact through eps
            sampled = log_density - log_own
            contribution = log_weights[i].exp() * (0.5 * dim * LOG_2PI_E + log_stds[i].sum() - sampled.mean())
        if with_gradient:
            contribution.backward()
        estimate += float(contribution.detach())
        variances.append(float(sampled.detach().var()))
        plain_variances.append(float(log_density.detach().var()))
    gradient = flat_gradient(logits, means, log_stds) if with_gradient else None
    return estimate, th.tensor(variances, dtype=th.float64), th.tensor(plain_variances, dtype=th.float64), gradient


def monte_carlo_truth(
    params: Params, samples_per_component: int = 2**16, n_replicates: int = 2, seed: int = 0, with_gradient: bool = True
) -> GroundTruth:
    """High-sample Monte Carlo entropy, its standard error and (optionally) its gradient for one mixture (float64).

    :param params: ``(logits [K], means [K, D], stds [K, D])``
    :param samples_per_component: samples per component in each replicate
    :param n_replicates: independent replicates; the truth is their mean, the first two give the gradient-noise cosine
    :param seed: seed of the first replicate (replicate r uses ``seed + r``)
    :param with_gradient: also compute the gradient (autograd through the samples)
    """
    if n_replicates < 1:
        raise ValueError(f"n_replicates must be >= 1, got {n_replicates}")
    runs = [
        _replicate(params, samples_per_component, th.Generator().manual_seed(seed + r), with_gradient)
        for r in range(n_replicates)
    ]
    weights_squared = th.softmax(params[0].double(), dim=-1).square()
    total_samples = samples_per_component * n_replicates
    variance = float((weights_squared * th.stack([run[1] for run in runs]).mean(0)).sum())
    truth = GroundTruth(
        entropy=float(np.mean([run[0] for run in runs])),
        standard_error=math.sqrt(variance / total_samples),
        plain_variance=float((weights_squared * th.stack([run[2] for run in runs]).mean(0)).sum()),
        samples_per_component=total_samples,
    )
    if not with_gradient:
        return truth
    gradients = [run[3] for run in runs]
    seed_cosine, mixing_cosine = math.nan, math.nan
    if n_replicates >= 2:
        seed_cosine = cosine(gradients[0], gradients[1])
        n_components, dim = params[1].shape
        mix_a, mix_b = (mixing_part(gradient, n_components, dim) for gradient in gradients[:2])
        if max(float(mix_a.norm()), float(mix_b.norm())) > 1e-9:
            mixing_cosine = cosine(mix_a, mix_b)
    gradient = th.stack(gradients).mean(0)
    return replace(truth, gradient=gradient, gradient_seed_cosine=seed_cosine, mixing_seed_cosine=mixing_cosine)


def ground_truth(
    case: MixtureCase,
    samples_per_component: int = 2**16,
    n_replicates: int = 2,
    seed: int = 12345,
    with_gradient: bool = True,
) -> GroundTruth:
    """:func:`monte_carlo_truth` of a case, its noise seeded from ``seed`` and the case name (each case its own)."""
    case_salt = sum((index + 1) * ord(char) for index, char in enumerate(case.name))
    return monte_carlo_truth(
        case.params, samples_per_component, n_replicates, seed * 1_000_003 + case_salt * 101, with_gradient
    )


# ----------------------------------------------------------------------------------------------------------------------
# Gradients


def leaf_parameters(case_or_params, dtype: th.dtype = th.float64) -> Tuple[th.Tensor, th.Tensor, th.Tensor]:
    """Fresh leaf tensors ``(logits, means, log_stds)`` of a case (or its params) that require gradients."""
    logits, means, stds = case_or_params.params if isinstance(case_or_params, MixtureCase) else case_or_params
    return tuple(tensor.to(dtype).clone().requires_grad_(True) for tensor in (logits, means, stds.log()))


def flat_gradient(logits: th.Tensor, means: th.Tensor, log_stds: th.Tensor) -> th.Tensor:
    """``[d/dlogits, d/dmeans, d/dlog_stds]`` flattened (missing gradients count as zero), float64."""
    parts = [th.zeros_like(p) if p.grad is None else p.grad for p in (logits, means, log_stds)]
    return th.cat([part.reshape(-1) for part in parts]).double()


def value_and_gradient(
    entropy_fn: Callable[[th.Tensor, th.Tensor, th.Tensor], th.Tensor], case: MixtureCase, dtype: th.dtype = th.float32
) -> Tuple[float, th.Tensor]:
    """``entropy_fn(logits, means, stds)`` on one case and its flattened gradient (w.r.t. log stds).

    :param entropy_fn: returns a scalar (or one-element) tensor
    :param case: the mixture
    :param dtype: dtype of the inputs handed to ``entropy_fn``
    """
    logits, means, log_stds = leaf_parameters(case, dtype)
    value = entropy_fn(logits, means, log_stds.exp()).sum()
    value.backward()
    return float(value.item()), flat_gradient(logits, means, log_stds)


def cosine(a: th.Tensor, b: th.Tensor) -> float:
    """Cosine similarity of two flat vectors; 1 when both are zero, 0 when exactly one is."""
    norm_a, norm_b = float(a.norm()), float(b.norm())
    if norm_a == 0.0 or norm_b == 0.0:
        return float(norm_a == norm_b)
    return float(a.double() @ b.double()) / (norm_a * norm_b)


def mixing_part(gradient: th.Tensor, n_components: int, dim: int) -> th.Tensor:
    """The ``[d/dlogits, d/dmeans]`` slice of a flattened gradient (the part that moves or reweights components)."""
    return gradient[: n_components + n_components * dim]
