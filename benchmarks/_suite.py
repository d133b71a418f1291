"""A deterministic suite of diagonal Gaussian mixtures and their Monte Carlo ground truth (entropy and gradient).

Reusable from scratch experiments::

    from benchmarks._suite import make_suite, ground_truth
    cases = make_suite(dims=(6,), components=(4,))
    truth = ground_truth(cases[0])  # truth.entropy, truth.standard_error, truth.gradient

The truth is written independently of ``sb3_gmm.entropy`` (it only shares the math), so it can check that library.
Gradients are always flattened as ``[d/dlogits (K), d/dmeans (K*D), d/dlog_stds (K*D)]``.
"""

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch as th

DIMS: Tuple[int, ...] = (1, 2, 3, 6, 10, 17, 32)
COMPONENTS: Tuple[int, ...] = (1, 2, 4, 8, 16)
# Mean offsets are drawn as separation * typical_std * N(0, I): 0 is coincident, 8 is far apart.
SEPARATIONS: Tuple[float, ...] = (0.0, 0.5, 2.0, 8.0)
MAX_STD_RATIO = 4.0
ONE_HOT_LOGIT_GAP = 6.0
# The per-(D, K) case kinds for K > 1; K = 1 has the single kind "single".
FULL_KINDS: Tuple[str, ...] = ("sep0", "sep0.5", "sep2", "sep8", "concentric", "one_hot", "one_hot_concentric")
QUICK_KINDS: Tuple[str, ...] = ("sep0.5", "concentric", "one_hot")
ALL_KINDS: Tuple[str, ...] = (*FULL_KINDS, "single")

LOG_2PI = math.log(2.0 * math.pi)
LOG_2PI_E = math.log(2.0 * math.pi * math.e)


@dataclass(frozen=True)
class MixtureCase:
    """One diagonal GMM of the suite (float64, no batch axis).

    :param name: unique label, e.g. ``"D6-K4-sep2"``
    :param kind: how it was made: ``sep<s>``, ``concentric``, ``one_hot``, ``one_hot_concentric`` or ``single``
    :param separation: mean-offset scale in units of the typical std (0 for concentric kinds)
    :param logits: unnormalised log weights ``[K]``
    :param means: component means ``[K, D]``
    :param stds: component standard deviations ``[K, D]``
    """

    name: str
    kind: str
    separation: float
    logits: th.Tensor
    means: th.Tensor
    stds: th.Tensor

    @property
    def dim(self) -> int:
        return self.means.shape[-1]

    @property
    def n_components(self) -> int:
        return self.means.shape[-2]


@dataclass(frozen=True)
class GroundTruth:
    """Monte Carlo truth for one mixture.

    :param entropy: the estimate in nats (mean of the replicates)
    :param standard_error: its standard error in nats (pooled over all samples)
    :param gradient: flattened gradient ``[K + 2 K D]`` (mean of the replicates)
    :param gradient_seed_cosine: cosine between the gradients of the first two independent replicates (1 if K = 1)
    :param mixing_seed_cosine: the same restricted to the ``[d/dlogits, d/dmeans]`` part (nan when it is ~0)
    :param samples_per_component: total samples per component over all replicates
    """

    entropy: float
    standard_error: float
    gradient: th.Tensor
    gradient_seed_cosine: float
    mixing_seed_cosine: float
    samples_per_component: int


def _case_rng(seed: int, dim: int, n_components: int, kind: str) -> np.random.Generator:
    # One independent stream per (seed, D, K, kind): adding or removing other cases never changes this one.
    return np.random.default_rng([seed, dim, n_components, ALL_KINDS.index(kind)])


def make_case(dim: int, n_components: int, kind: str, seed: int = 0) -> MixtureCase:
    """Build one mixture of the suite deterministically from ``(seed, D, K, kind)``.

    :param dim: action dimension D
    :param n_components: number of components K
    :param kind: one of :data:`ALL_KINDS` (``single`` needs K = 1, the others K > 1)
    :param seed: suite seed
    """
    if kind not in ALL_KINDS:
        raise ValueError(f"kind must be one of {ALL_KINDS}, got {kind!r}")
    if (kind == "single") != (n_components == 1):
        raise ValueError(
            f"kind 'single' is for K = 1 and every other kind for K > 1; got kind={kind!r}, K={n_components}"
        )
    rng = _case_rng(seed, dim, n_components, kind)
    typical_std = math.exp(rng.uniform(math.log(0.3), math.log(1.0)))
    logits = rng.normal(size=n_components)
    centre = rng.normal(size=dim)
    if kind.endswith("concentric"):
        separation = 0.0
        # Widths log-spaced from 1x to MAX_STD_RATIO x, in random order, with a little per-dimension jitter.
        ratios = MAX_STD_RATIO ** (np.arange(n_components) / max(n_components - 1, 1))
        ratios = rng.permutation(ratios)
        stds = typical_std * ratios[:, None] * np.exp(0.1 * rng.normal(size=(n_components, dim)))
        means = np.repeat(centre[None, :], n_components, axis=0)
    else:
        separation = 2.0 if kind in ("one_hot", "single") else float(kind[3:])
        stds = typical_std * np.exp(0.3 * rng.normal(size=(n_components, dim)))
        means = centre + separation * typical_std * rng.normal(size=(n_components, dim))
    if kind.startswith("one_hot"):
        dominant = int(rng.integers(n_components))
        logits = logits - logits.max()
        logits[dominant] = ONE_HOT_LOGIT_GAP
    return MixtureCase(
        name=f"D{dim}-K{n_components}-{kind}",
        kind=kind,
        separation=separation,
        logits=th.tensor(logits, dtype=th.float64),
        means=th.tensor(means, dtype=th.float64),
        stds=th.tensor(stds, dtype=th.float64),
    )


def make_suite(
    dims: Sequence[int] = DIMS,
    components: Sequence[int] = COMPONENTS,
    seed: int = 0,
    quick: bool = False,
) -> List[MixtureCase]:
    """All suite mixtures for the given dimensions and component counts, in a fixed order.

    :param dims: action dimensions D
    :param components: component counts K
    :param seed: suite seed (same seed, same mixtures)
    :param quick: a few kinds per (D, K) (:data:`QUICK_KINDS`) instead of all (:data:`FULL_KINDS`)
    """
    kinds = QUICK_KINDS if quick else FULL_KINDS
    cases = []
    for dim in dims:
        for n_components in components:
            for kind in ("single",) if n_components == 1 else kinds:
                cases.append(make_case(dim, n_components, kind, seed))
    return cases


def leaf_parameters(case: MixtureCase, dtype: th.dtype = th.float64) -> Tuple[th.Tensor, th.Tensor, th.Tensor]:
    """Fresh leaf tensors ``(logits, means, log_stds)`` of a case that require gradients."""
    return (
        case.logits.to(dtype).clone().requires_grad_(True),
        case.means.to(dtype).clone().requires_grad_(True),
        case.stds.log().to(dtype).clone().requires_grad_(True),
    )


def flat_gradient(logits: th.Tensor, means: th.Tensor, log_stds: th.Tensor) -> th.Tensor:
    """``[d/dlogits, d/dmeans, d/dlog_stds]`` flattened (missing gradients count as zero), float64."""
    parts = [th.zeros_like(p) if p.grad is None else p.grad for p in (logits, means, log_stds)]
    return th.cat([part.reshape(-1) for part in parts]).double()


def value_and_gradient(
    entropy_fn: Callable[[th.Tensor, th.Tensor, th.Tensor], th.Tensor],
    case: MixtureCase,
    dtype: th.dtype = th.float32,
) -> Tuple[float, th.Tensor]:
    """Evaluate ``entropy_fn(logits, means, stds)`` on one case and its flattened gradient (w.r.t. log stds).

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
    if norm_a == 0.0 and norm_b == 0.0:
        return 1.0
    if norm_a == 0.0 or norm_b == 0.0:
        return 0.0
    return float(a.double() @ b.double()) / (norm_a * norm_b)


def mixing_part(gradient: th.Tensor, n_components: int, dim: int) -> th.Tensor:
    """The ``[d/dlogits, d/dmeans]`` slice of a flattened gradient (the part that moves or reweights components)."""
    return gradient[: n_components + n_components * dim]


def _replicate(case: MixtureCase, n_samples: int, generator: th.Generator) -> Tuple[float, th.Tensor, th.Tensor]:
    """One stratified Monte Carlo estimate with the Gaussian control variate.

    ``H = sum_i w_i [H_i - E_{N_i}[log p(x) - log N_i(x)]]`` with ``x = mu_i + s_i eps``; ``E_{N_i}[log N_i] = -H_i``
    is exact, so only the bounded log-responsibility term is sampled. The gradient is autograd on the estimate with
    the ``eps`` held fixed (reparameterised), one backward pass per component to bound memory.

    :return: estimate, per-component sample variances ``[K]`` of the sampled term, flattened gradient
    """
    logits, means, log_stds = leaf_parameters(case, th.float64)
    dim, n_components = case.dim, case.n_components
    # Entropy is translation invariant; centring keeps the expanded quadratic forms below free of cancellation.
    centre = case.means.mean(0)
    variances = []
    estimate = 0.0
    for i in range(n_components):
        log_weights = th.log_softmax(logits, dim=-1)
        centred = means - centre
        precisions = th.exp(-2.0 * log_stds)  # [K, D]
        log_normalisers = -0.5 * dim * LOG_2PI - log_stds.sum(-1)  # [K]
        constants = log_weights + log_normalisers - 0.5 * (centred.square() * precisions).sum(-1)
        eps = th.randn(n_samples, dim, generator=generator, dtype=th.float64)
        x = centred[i] + log_stds[i].exp() * eps  # [n, D]
        log_joint = constants - 0.5 * (x.square() @ precisions.T) + x @ (centred * precisions).T  # log w_j N_j(x)
        log_own = log_normalisers[i] - 0.5 * eps.square().sum(-1)  # log N_i(x), exact through eps
        sampled = th.logsumexp(log_joint, dim=-1) - log_own  # log p(x) - log N_i(x)
        own_entropy = 0.5 * dim * LOG_2PI_E + log_stds[i].sum()
        contribution = log_weights[i].exp() * (own_entropy - sampled.mean())
        contribution.backward()
        estimate += float(contribution.item())
        variances.append(float(sampled.detach().var()))
    return estimate, th.tensor(variances, dtype=th.float64), flat_gradient(logits, means, log_stds)


def ground_truth(
    case: MixtureCase,
    samples_per_component: int = 2**16,
    n_replicates: int = 2,
    seed: int = 12345,
) -> GroundTruth:
    """High-sample Monte Carlo entropy, its standard error and its gradient for one mixture (float64).

    :param case: the mixture
    :param samples_per_component: samples per component in each replicate
    :param n_replicates: independent replicates (different seeds); the truth is their mean, and the first two give
        the gradient-noise cosine
    :param seed: base seed of the replicates (the case name is mixed in, so each case gets its own noise)
    """
    if n_replicates < 1:
        raise ValueError(f"n_replicates must be >= 1, got {n_replicates}")
    estimates, variances, gradients = [], [], []
    case_salt = sum((index + 1) * ord(char) for index, char in enumerate(case.name))
    for replicate in range(n_replicates):
        generator = th.Generator().manual_seed(seed * 1_000_003 + case_salt * 101 + replicate)
        estimate, variance, gradient = _replicate(case, samples_per_component, generator)
        estimates.append(estimate)
        variances.append(variance)
        gradients.append(gradient)
    weights = th.softmax(case.logits, dim=-1)
    total_samples = samples_per_component * n_replicates
    pooled_variance = th.stack(variances).mean(0)
    standard_error = math.sqrt(float((weights.square() * pooled_variance).sum()) / total_samples)
    split = case.n_components + case.n_components * case.dim
    if n_replicates >= 2:
        seed_cosine = cosine(gradients[0], gradients[1])
        mix_a, mix_b = gradients[0][:split], gradients[1][:split]
        mixing_cosine = cosine(mix_a, mix_b) if max(float(mix_a.norm()), float(mix_b.norm())) > 1e-9 else math.nan
    else:
        seed_cosine, mixing_cosine = math.nan, math.nan
    return GroundTruth(
        entropy=float(np.mean(estimates)),
        standard_error=standard_error,
        gradient=th.stack(gradients).mean(0),
        gradient_seed_cosine=seed_cosine,
        mixing_seed_cosine=mixing_cosine,
        samples_per_component=total_samples,
    )


def timing_batch(
    dim: int,
    n_components: int,
    batch_size: int,
    seed: int = 0,
    dtype: th.dtype = th.float32,
    base: Optional[MixtureCase] = None,
) -> Tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor]:
    """A batch of ``batch_size`` perturbed copies of one representative mixture, plus one action per state.

    The representative is the suite's ``sep2`` case (``single`` for K = 1) unless ``base`` is given; the perturbations
    (0.1 on logits, 0.1 std on means, 0.05 on log stds) keep the batch realistic without changing the cost.

    :return: ``logits [B, K]``, ``means [B, K, D]``, ``log_stds [B, K, D]``, ``actions [B, D]`` (no gradients)
    """
    if base is None:
        base = make_case(dim, n_components, "single" if n_components == 1 else "sep2", seed)
    generator = th.Generator().manual_seed(seed + 7919 * dim + 104729 * n_components + batch_size)
    shape = (batch_size, n_components, dim)
    logits = base.logits + 0.1 * th.randn(batch_size, n_components, generator=generator, dtype=th.float64)
    log_stds = base.stds.log() + 0.05 * th.randn(shape, generator=generator, dtype=th.float64)
    means = base.means + 0.1 * base.stds * th.randn(shape, generator=generator, dtype=th.float64)
    # One action per state, drawn from that state's mixture.
    chosen = th.multinomial(th.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)
    rows = th.arange(batch_size)
    noise = th.randn(batch_size, dim, generator=generator, dtype=th.float64)
    actions = means[rows, chosen] + log_stds[rows, chosen].exp() * noise
    return logits.to(dtype), means.to(dtype), log_stds.to(dtype), actions.to(dtype)
