"""Estimators that average over points: Monte Carlo, quasi-Monte Carlo and sigma-point (cubature) rules.

All of them rest on one identity. With ``x = mu_i + s_i * eps`` (``eps ~ N(0, I)``, reparameterised),

    H(p) = sum_i w_i E_eps[-log p(x)]
         = sum_i w_i ( H_i - E_eps[ logsumexp_j( log w_j + Delta_ij(eps) ) ] ),
    Delta_ij(eps) = log N_j(x) - log N_i(x) = sum_d c_ijd + b_ijd eps_d + a_ijd eps_d^2.

The Gaussian part ``H_i`` is exact, so only the correction is averaged: the control variate of the notes. Two
integrands give the same exact value and different quadrature errors:

- ``"log_responsibility"``: ``sum_i w_i (H_i - log w_i + E_i[log r_i(x)])``, ``r_i`` the posterior weight of component
  ``i`` at ``x``. ``log r_i`` is unbounded below: it falls quadratically wherever another component dominates, so a
  narrow component inside a wide one is a deep, narrow dip under the wide one's points.
- ``"responsibility_entropy"`` (the default): ``H(w) + sum_i w_i H_i - E_p[h(x)]`` with
  ``h(x) = -sum_j r_j(x) log r_j(x)`` in ``[0, log K]``: the identity ``H(X) = H(Z) + H(X | Z) - H(Z | X)`` for the
  component label ``Z``. The integrand is bounded, so with positive point weights the estimate always lies between
  Huber's upper bound ``H(w) + sum_i w_i H_i`` and that bound minus ``log K``, and it is the more accurate of the
  two on the same points (docs/estimators.md, measured in docs/qmc_design.md).

Both vanish for far-apart components and are constant for coincident ones, so every point set is exact in both limits
and for K = 1. qmc's default pools the components' points instead of integrating per component
(:func:`widened_mis_entropy`): pooled, both integrands are one function.

Because ``log w_j + Delta_ij`` is a quadratic form in ``eps``, evaluating it at ``n`` shared points is
one matrix product ``[..., K, K, 2D + 1] @ [2D + 1, n]``: the cost of a few log_probs, not ``n`` of them. The first
derivative is written by hand (:class:`_FusedQuadratureEntropy`); second derivatives are autograd's. On the CPU, a
batch under the memory budget (:data:`CHUNK_BYTES`: every RL minibatch) goes to a compiled C kernel that does the
forward and the first derivative in one call (:mod:`sb3_gmm.native`, built on first use; without a compiler
the torch path below serves); above the budget the batch is evaluated in torch chunks, so memory stays bounded at
any batch size.
"""

import math
from functools import lru_cache
from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple

import torch as th

from sb3_gmm import native
from sb3_gmm.entropy._common import (
    MixtureParams,
    gaussian_entropies,
    max_scaled_distance,
    pairwise_differences,
    weighted_sum,
)
from sb3_gmm.entropy.point_sets import gauss_hermite_points, sigma_point_rule, sinh_normal_points, sobol_points
from sb3_gmm.entropy.registry import Option, one_of, optional_seed, positive_int, register

# Gauss-Hermite nodes of lower weight are skipped: even an integrand of 1e3 nats there moves the estimate by < 1e-9.
NEGLIGIBLE_NODE_WEIGHT = 1e-12
# qmc's 1-D rule: sinh-spaced nodes (central spacing SINH_RULE_SCALE in units of the trapezoid step) from this many
# nodes on, chosen by benchmarks/rule_1d.py over Gauss-Hermite, uniform and composite Gauss-Legendre rules.
SINH_RULE_MIN_NODES = 8
SINH_RULE_SCALE = 0.5
# Memory budget of the fused kernel, in bytes of its largest intermediate ``[batch, K, K, n]`` (every point's exponent
# for every pair of components; 4 K^2 n bytes per batch element in float32, 16 KiB at K = 8, n = 64). A batch over it
# is processed in chunks of batch elements that each fit it, so the kernel's peak stays a few times the budget however
# large the batch; a batch under it (a PPO minibatch of the usual sizes) takes the one-pass path unchanged. On the CPU
# a few MiB is also the fastest setting (the chunks stay in cache); docs/memory.md has the measurements and how to
# choose. math.inf turns chunking off. Both are read at every call, so they can be changed at run time.
CHUNK_BYTES: float = 4 * 2**20
# The same for tensors on any other device (CUDA, MPS). Not measured yet: a GPU pays a kernel launch per op and
# chunk, so it wants far larger chunks than the CPU's cache does; 256 MiB keeps the peak near 1 GB.
GPU_CHUNK_BYTES: float = 256 * 2**20
# Above CHUNK_BYTES the compiled kernel (one thread, memory bounded by its per-block workspace) still serves a CPU
# batch when torch computes with at most this many threads: on the 2-core test machine it took 0.3-0.56 of the time
# of torch's chunks with 1 or 2 threads (B = 2048 to 16384, K = 4 to 8). More threads keep torch's chunks (not
# measured on a machine with more cores).
KERNEL_MAX_THREADS_LARGE_BATCH = 2
INTEGRANDS = ("responsibility_entropy", "log_responsibility")
# qmc's rules in one dimension: one composite rule on the sorted union of every component's nodes (the default,
# union_rule_entropy), each component's integral with its own nodes, or every component's nodes pooled
# (widened_mis_entropy, the default in D >= 2). Per component, a wide component's nodes must resolve the sharp switch
# of the responsibilities at a narrow one with their own coarse spacing (worst gradient cosine 0.84 on the 1-D suite
# of benchmarks/rule_1d.py); the union serves every integral with the narrow component's nodes (0.997), at 1.1-1.3x
# the per-component rule's one-call cost at K = 2 to 8 (benchmarks/entropy_cost.py). The pooled rule is as accurate
# (0.991) but its kernel runs over the 36 nodes where the others run over the batch: as the 1-D default it brought
# PPO's throughput at K = 8 from 0.94 to about 0.72 of MlpPolicy's (benchmarks/throughput.py).
RULES_1D = ("union", "per_component", "widened_mis")
# The union rule's outermost nodes: each component's mean +- this many stds, so the trapezoid covers the support.
UNION_RULE_END = 6.0
# qmc's rules in D >= 2: every component's points pooled by multiple importance sampling, with narrow components'
# points widened (widened_mis_entropy; the default), or each component's integral on its own points (the rule before
# it, kept to reproduce earlier results).
RULES_ND = ("widened_mis", "per_component")
# widened_mis: a component whose std in a dimension is more than MIS_RATIO times below the widest component's there
# is narrow in it, and its points spread out by up to MIS_WIDENING there (MIS_WIDENING_1D in one dimension; a smooth
# step, MIS_SHARPNESS per unit of log ratio; the widest std is a soft maximum at temperature 1 / MIS_SOFT_MAX). Chosen
# on the narrow_heavy family (benchmarks/mis_rule.py): spread out, the narrow component's points cover the thin shell
# about 3 of its stds out where its responsibility hands over to the wide components. A ratio of 4 also widened
# concentric components (widths up to 4x) in many dimensions at once, and the importance weights of D = 32 degraded
# (0.13 nats off); 8 leaves them alone. One dimension takes more spread (3x: worst gradient cosine on the 1-D suite's
# narrow_heavy cases 0.991, against 0.987 at 2x and 0.983 at 4x), where no other dimension pays for it.
MIS_WIDENING = 2.0
MIS_WIDENING_1D = 3.0
MIS_RATIO = 8.0
MIS_SHARPNESS = 8.0
MIS_SOFT_MAX = 4.0
FUSED_OPTION = Option(
    True,
    one_of(True, False),
    "True: hand-written first derivative (fast; on the CPU the compiled kernel of sb3_gmm.native where a C "
    "compiler is available); False: autograd through every op (slower; the reference the hand-written one is tested "
    "against). Second derivatives are autograd's either way",
)
INTEGRAND_HELP = (
    "what the points average: the entropy of the responsibilities (bounded, the default) or the log responsibility "
    "of the own component (the earlier form, kept to reproduce it). Only the per-component rules tell them apart: "
    "qmc's pooled and union rules (widened_mis, the default in D >= 2, and union) integrate over all components at "
    "once, where the two are the same function"
)


class _ExponentForm(NamedTuple):
    """``log w_j + Delta_ij(eps)`` as coefficients of :func:`point_features`, and the pieces of its gradient.

    :param coefficients: ``[b, a, c + log w_j]`` per pair, ``[..., K(i), K(j), 2D + 1]``
    :param scaled_diff: ``z_ij = (mu_i - mu_j) / s_j``, ``[..., K(i), K(j), D]``
    :param std_ratio: ``s_i / s_j``, ``[..., K(i), K(j), D]``
    :param inv_stds: ``1 / s``, ``[..., K, D]``
    """

    coefficients: th.Tensor
    scaled_diff: th.Tensor
    std_ratio: th.Tensor
    inv_stds: th.Tensor


def _exponent_form(params: MixtureParams) -> _ExponentForm:
    """``Delta_ij = sum_d log(s_i / s_j) - z^2 / 2 - z r eps + (1 - r^2) eps^2 / 2`` with ``z = (mu_i - mu_j) / s_j``
    and ``r = s_i / s_j``, written as coefficients of ``[eps, eps^2, 1]`` (one matrix product evaluates it).

    The log stds are the caller's (``params.log_stds``), so a policy that has them from its head shares them.
    """
    inv_stds = params.stds.reciprocal()
    inv_std_j = inv_stds.unsqueeze(-3)
    # Components further apart than this in std units are as good as infinitely far: their responsibilities underflow
    # to exactly 0 either way. Capping keeps z^2 finite for tiny stds, where inf would become 0 * inf = NaN.
    limit = max_scaled_distance(params.stds.dtype)
    scaled_diff = (pairwise_differences(params.means) * inv_std_j).clamp_(-limit, limit)
    std_ratio = params.stds.unsqueeze(-2) * inv_std_j
    sum_log_stds = params.log_stds.sum(-1)
    constant = (
        sum_log_stds.unsqueeze(-1)
        - sum_log_stds.unsqueeze(-2)
        - 0.5 * scaled_diff.square().sum(-1)
        + params.log_weights.unsqueeze(-2)
    )
    coefficients = th.cat([-scaled_diff * std_ratio, 0.5 - 0.5 * std_ratio.square(), constant.unsqueeze(-1)], dim=-1)
    return _ExponentForm(coefficients, scaled_diff, std_ratio, inv_stds)


def quadrature_entropy(
    params: MixtureParams,
    points: th.Tensor,
    point_weights: th.Tensor,
    control_variate: bool = True,
    fused: bool = True,
    features: Optional[th.Tensor] = None,
    integrand: str = "responsibility_entropy",
) -> th.Tensor:
    """Entropy from standard-normal points, stratified per component (the core of every method in this module).

    :param params: the mixture
    :param points: ``[n, D]`` points shared by all components, ``[K, n, D]`` points of each component's own, or
        ``[..., K, n, D]`` points per batch element and component
    :param point_weights: ``[n]`` quadrature weights summing to one
    :param control_variate: keep the exact Gaussian part (True) or average the plain ``-log p`` (False: plain MC,
        which needs ``integrand="log_responsibility"``)
    :param fused: use the hand-written first derivative (fast, and chunked above :data:`CHUNK_BYTES`) instead of
        autograd through every op. A gradient taken with ``create_graph=True`` is autograd's through the reference
        either way, so second derivatives (``hessian``, Hessian-vector products) are exact with both
    :param features: :func:`point_features` of ``points`` when the caller has it cached
    :param integrand: ``"responsibility_entropy"`` or ``"log_responsibility"`` (see the module docstring)
    :return: entropy ``[...]``
    """
    if integrand not in INTEGRANDS:
        raise ValueError(f"integrand must be one of {list(INTEGRANDS)}, got {integrand!r}")
    if not control_variate and integrand != "log_responsibility":
        raise ValueError('control_variate=False (plain -log p) needs integrand="log_responsibility"')
    if control_variate and params.n_components == 1:
        # One component: every point's responsibility is 1, both integrands vanish and the estimate is the closed
        # form w (H_1 - log w) (w = 1) exactly, as a function of the inputs too, so the gradients agree as well.
        return weighted_sum(params.log_weights, gaussian_entropies(params.log_stds) - params.log_weights)
    if features is None:
        features = point_features(points)
    responsibility_entropy = integrand == "responsibility_entropy"
    # torch.compile traces the autograd reference into one graph (inductor fuses it); the hand-written Function
    # would break the graph twice per call (docs/compile.md).
    if fused and not th.compiler.is_compiling():
        plan = _plan(params, points, features)
        estimate = _FusedQuadratureEntropy.apply(*params, points, features, point_weights, responsibility_entropy, plan)
    else:
        estimate = _autograd_quadrature_entropy(params, features, point_weights, responsibility_entropy)
    if not control_variate:
        # -log N_i(x) averaged over the points instead of its exact expectation H_i.
        half_squared_norm = 0.5 * (points.square().sum(-1) * point_weights).sum(-1)
        estimate = estimate + weighted_sum(
            params.log_weights, (half_squared_norm - 0.5 * params.dim).expand_as(params.log_weights)
        )
    return estimate


def point_features(points: th.Tensor) -> th.Tensor:
    """``[eps, eps^2, 1]`` per point, ``[..., n, 2D + 1]``: ``log w_j + Delta_ij`` is linear in these.

    The trailing 1 carries the constant term, so a single matrix product evaluates the whole exponent (and, in the
    backward, also sums the weights for the constant's gradient) instead of a separate pass over ``[..., K, K, n]``.
    """
    return th.cat([points, points.square(), th.ones_like(points[..., :1])], dim=-1)


def _autograd_quadrature_entropy(
    params: MixtureParams, features: th.Tensor, point_weights: th.Tensor, responsibility_entropy: bool = True
) -> th.Tensor:
    """Reference implementation differentiated by autograd (supports higher derivatives; slower)."""
    exponents = _contract_points(_exponent_form(params).coefficients, features)  # log w_j + Delta_ij(eps_n)
    if responsibility_entropy:
        log_responsibilities = th.log_softmax(exponents, dim=-2)  # log r_j(x_in)
        entropies = -(log_responsibilities.exp() * log_responsibilities).sum(-2)  # [..., K, n]
        conditional = (entropies * point_weights).sum(-1)
        return weighted_sum(params.log_weights, gaussian_entropies(params.log_stds) - params.log_weights - conditional)
    log_mixture_ratio = th.logsumexp(exponents, dim=-2)  # [..., K, n]
    correction = (log_mixture_ratio * point_weights).sum(-1)
    return weighted_sum(params.log_weights, gaussian_entropies(params.log_stds) - correction)


def _contract_points(values: th.Tensor, features: th.Tensor) -> th.Tensor:
    """``[..., K(i), K(j), F] x features [.., n, F] -> [..., K(i), K(j), n]``.

    Shared points (``[n, F]``) are one plain matrix product; per-component points (``[K, n, F]``) go through
    einsum, which batches over ``i`` instead of broadcasting into one tiny product per (batch, i) pair.
    """
    if features.dim() == 2:
        return values @ features.T
    if features.dim() == 3:
        return th.einsum("...ijf,inf->...ijn", values, features)
    return th.matmul(values, features.transpose(-1, -2))


def _contract_points_back(values: th.Tensor, features: th.Tensor) -> th.Tensor:
    """The adjoint of :func:`_contract_points`: ``[..., K(i), K(j), n] -> [..., K(i), K(j), F]``.

    For shared points the product is taken as ``features^T @ values^T``: CPU BLAS runs a matrix product with only
    ``F = 2D + 1`` output columns much slower than the same product with ``F`` output rows (docs/estimators.md).
    """
    if features.dim() == 2:
        n_points, n_features = features.shape
        flat = values.reshape(-1, n_points)
        return (features.T @ flat.T).T.reshape(*values.shape[:-1], n_features)
    if features.dim() == 3:
        return th.einsum("...ijn,inf->...ijf", values, features)
    return th.matmul(values, features)


def _fused_forward(
    log_weights: th.Tensor,
    means: th.Tensor,
    stds: th.Tensor,
    log_stds: th.Tensor,
    features: th.Tensor,
    point_weights: th.Tensor,
    responsibility_entropy: bool,
) -> Tuple[th.Tensor, Tuple[Optional[th.Tensor], ...]]:
    """The estimate ``[...]`` and what :func:`_fused_backward` needs, in one pass over ``[..., K, K, n]``."""
    form = _exponent_form(MixtureParams(log_weights, means, stds, log_stds))
    exponents = _contract_points(form.coefficients, features)  # log w_j + Delta_ij(eps_n), [..., K(i), K(j), n]
    # Softmax over j by hand; the backward reuses the shifted exponentials (and, for the responsibility entropy,
    # their products with the exponents).
    shift = exponents.amax(-2, keepdim=True)
    shifted = exponents.sub_(shift)
    weights = log_weights.exp()
    gaussian_part = gaussian_entropies(log_stds)
    if responsibility_entropy:
        exponentials = shifted.exp()
        normaliser = exponentials.sum(-2, keepdim=True)
        # h = log Z - sum_j r_j e_j, shift invariant; mean_exponent = sum_j r_j e_j, [..., K(i), 1, n]. The
        # products x_j e_j overwrite the exponents (the backward needs only them and x): every fresh
        # [..., K, K, n] allocation costs about as much as a pass over it.
        weighted_exponents = shifted.mul_(exponentials)
        mean_exponent = weighted_exponents.sum(-2, keepdim=True) / normaliser
        entropies = (normaliser.log() - mean_exponent).squeeze(-2)  # [..., K(i), n], within [0, log K]
        per_component = gaussian_part - log_weights - entropies @ point_weights
    else:
        exponentials = shifted.exp_()  # the exponents are not needed again: overwrite them
        normaliser = exponentials.sum(-2, keepdim=True)
        log_mixture_ratio = (shift + normaliser.log()).squeeze(-2)  # [..., K(i), n]
        per_component = gaussian_part - log_mixture_ratio @ point_weights
        weighted_exponents = mean_exponent = None
    saved = (
        exponentials, normaliser, weighted_exponents, mean_exponent, weights, per_component, form.scaled_diff,
        form.std_ratio, form.inv_stds, features, point_weights,
    )  # fmt: skip
    return (weights * per_component).sum(-1), saved


def _fused_backward(
    saved: Sequence[Optional[th.Tensor]], grad_output: th.Tensor, responsibility_entropy: bool
) -> Tuple[th.Tensor, th.Tensor, th.Tensor, th.Tensor]:
    """Gradients w.r.t. log weights ``[..., K]``, means, stds ``[..., K, D]`` and log stds ``[..., K, 1]`` (the
    same for every coordinate) from :func:`_fused_forward`'s saved tensors."""
    (
        exponentials, normaliser, weighted_exponents, mean_exponent, weights, per_component, scaled_diff,
        std_ratio, inv_stds, features, point_weights,
    ) = saved  # fmt: skip
    dim = scaled_diff.shape[-1]
    grad = grad_output.unsqueeze(-1)
    # d output / d exponent_ijn = g w_i v_n r_ijn times (e_ijn - sum_j r_ijn e_ijn) for the responsibility entropy
    # and times -1 for the log responsibility, r = exponentials / normaliser. The division is folded into the
    # small [..., K(i), 1, n] factor, so the big tensor is touched as few times as possible.
    point_scale = (point_weights * (grad * weights).unsqueeze(-1)).unsqueeze(-2) / normaliser
    if responsibility_entropy:
        # x_j (e_j - mean_exponent) * scale, in one new tensor.
        exponent_grad = th.addcmul(weighted_exponents, exponentials, mean_exponent, value=-1.0).mul_(point_scale)
    else:
        exponent_grad = exponentials * -point_scale
    # Derivative of the output w.r.t. the linear, quadratic and constant coefficients of Delta_ij.
    grad_coefficients = _contract_points_back(exponent_grad, features)  # [..., K(i), K(j), 2D + 1]
    grad_linear = grad_coefficients[..., :dim]
    grad_quadratic = grad_coefficients[..., dim : 2 * dim]
    grad_constant = grad_coefficients[..., 2 * dim]  # [..., K(i), K(j)]
    grad_log_weights = grad * weights * per_component + grad_constant.sum(-2)
    if responsibility_entropy:
        grad_log_weights = grad_log_weights - grad * weights  # the -w_i log w_i term
    # log s_i enters H_i and Delta_ij's constant, log s_j Delta_ij's constant (through every coordinate alike).
    grad_log_stds = (grad * weights + grad_constant.sum(-1) - grad_constant.sum(-2)).unsqueeze(-1)
    # Chain rule through scaled_diff z = (mu_i - mu_j) / s_j and std_ratio r = s_i / s_j.
    grad_scaled = -grad_constant.unsqueeze(-1) * scaled_diff - grad_linear * std_ratio
    grad_ratio = -grad_linear * scaled_diff - grad_quadratic * std_ratio
    inv_std_j = inv_stds.unsqueeze(-3)
    grad_diff = grad_scaled * inv_std_j
    grad_means = grad_diff.sum(-2) - grad_diff.sum(-3)
    grad_stds = (grad_ratio * inv_std_j).sum(-2) - (grad_ratio * std_ratio + grad_scaled * scaled_diff).sum(
        -3
    ) * inv_stds  # r depends on s_i; r and z depend on s_j
    return grad_log_weights, grad_means, grad_stds, grad_log_stds


class _Plan(NamedTuple):
    """How :class:`_FusedQuadratureEntropy` evaluates a batch that the one-pass torch path does not take.

    :param rows: batch elements per chunk (all of them for the compiled kernel)
    :param batch_shape: the inputs' broadcast batch shape
    :param with_gradient: compute the gradient in the forward (autograd will want it)
    :param kernel: the compiled kernel (:mod:`sb3_gmm.native`), or None for torch chunks
    """

    rows: int
    batch_shape: th.Size
    with_gradient: bool
    kernel: Any = None


def fits_budget(n_elements: int, n_components: int, n_points: int, element_size: int, on_cpu: bool = True) -> bool:
    """Whether a batch's ``[batch, K, K, n]`` intermediate fits :data:`CHUNK_BYTES` (:data:`GPU_CHUNK_BYTES` off the
    CPU), i.e. whether the torch path would take it in one pass."""
    budget = CHUNK_BYTES if on_cpu else GPU_CHUNK_BYTES
    return n_elements * n_components * n_components * n_points * element_size <= budget


def kernel_preferred(n_elements: int, n_components: int, n_points: int, element_size: int) -> bool:
    """Whether the compiled kernel (one thread) should take a CPU batch: at minibatch sizes the torch path's cost is
    its ~90 eager ops, which the kernel replaces with one call; large batches take it too where torch has few
    threads to spread its chunks over (:data:`KERNEL_MAX_THREADS_LARGE_BATCH`)."""
    fits = fits_budget(n_elements, n_components, n_points, element_size)
    return fits or th.get_num_threads() <= KERNEL_MAX_THREADS_LARGE_BATCH


def _plan(params: MixtureParams, points: th.Tensor, features: th.Tensor) -> Optional[_Plan]:
    """The compiled kernel for a batch whose ``[..., K, K, n]`` intermediate fits the budget, where it is available;
    else None (one torch pass) for such a batch, and chunks of the budget's size for a larger one."""
    log_weights, means = params.log_weights, params.means
    n_components = log_weights.shape[-1]
    n_points = features.shape[-2]
    # The batch size from element counts (a few hundred nanoseconds, paid by every PPO minibatch); the exact
    # broadcast shape only for a batch that may be cut.
    n_elements = log_weights.numel() // n_components
    if features.dim() > 3:
        n_elements = max(n_elements, features.numel() // (n_components * n_points * features.shape[-1]))
    if kernel_preferred(n_elements, n_components, n_points, means.element_size()):
        kernel = _kernel_for(means, points)  # None off the CPU
        if kernel is not None:
            batch_shape = _batch_shape(params, features)
            return _Plan(max(1, batch_shape.numel()), batch_shape, native.records_graph(params), kernel)
    if fits_budget(n_elements, n_components, n_points, means.element_size(), means.is_cpu):
        return None
    batch_shape = _batch_shape(params, features)
    rows = _rows_in_budget(n_components, n_points, means)
    if rows >= batch_shape.numel():
        return None
    return _Plan(rows, batch_shape, native.records_graph(params))


def _kernel_for(means: th.Tensor, points: th.Tensor) -> Any:
    # Points shared ([n, D]) or per component ([K, n, D]); Monte Carlo's per-element points stay on torch.
    if not means.is_cpu or points.dim() > 3 or points.dtype != means.dtype:
        return None
    return native.library(means.dtype)


def _batch_shape(params: MixtureParams, features: Optional[th.Tensor] = None) -> th.Size:
    """The inputs' broadcast batch shape (without a broadcast where every input already has it)."""
    shapes = [params.log_weights.shape[:-1]] + [tensor.shape[:-2] for tensor in params[1:]]
    if features is not None and features.dim() > 3:
        shapes.append(features.shape[:-3])
    first = shapes[0]
    if all(shape == first for shape in shapes):
        return first
    return th.broadcast_shapes(*shapes)


def _flatten_batch(tensor: th.Tensor, batch_shape: th.Size, event_dims: int) -> th.Tensor:
    """``tensor`` broadcast to ``batch_shape`` and flattened to ``[N, *event]`` (a view where the strides allow,
    e.g. stds expanded from ``[K, D]``; a copy of the small input otherwise)."""
    event_shape = tensor.shape[tensor.dim() - event_dims :]
    if len(batch_shape) == 1 and tensor.shape[:-event_dims] == batch_shape:
        return tensor  # already [N, *event] (the PPO minibatch case): no view ops to pay
    return tensor.expand(*batch_shape, *event_shape).reshape(-1, *event_shape)


def _chunked(
    flat: Sequence[th.Tensor],
    features: th.Tensor,
    point_weights: th.Tensor,
    responsibility_entropy: bool,
    plan: _Plan,
) -> Tuple[th.Tensor, Optional[th.Tensor]]:
    """The torch path over chunks of ``plan.rows`` batch elements: the estimate ``[N]`` and (with
    ``plan.with_gradient``) the gradient buffer of :func:`native.split_gradient`'s layout."""
    means = flat[1]
    n_elements, n_components, dim = means.shape
    # Shared ([n, F]) and per-component ([K, n, F]) features serve every chunk; per-batch-element ones
    # ([..., K, n, F], Monte Carlo) are cut along with the batch.
    per_element_features = features.dim() > 3
    flat_features = _flatten_batch(features, plan.batch_shape, 3) if per_element_features else features
    value = means.new_empty(n_elements)
    buffer = None
    if plan.with_gradient:
        buffer = means.new_empty(n_elements, n_components * (2 + 2 * dim))
        unit_grads = native.split_gradient(buffer, n_components, dim)
        unit = means.new_ones(plan.rows)
    for start in range(0, n_elements, plan.rows):
        stop = min(start + plan.rows, n_elements)
        part = slice(start, stop)
        chunk_features = flat_features[part] if per_element_features else flat_features
        value[part], saved = _fused_forward(
            *(tensor[part] for tensor in flat), chunk_features, point_weights, responsibility_entropy
        )
        if buffer is not None:
            chunk_grads = _fused_backward(saved, unit[: stop - start], responsibility_entropy)
            for grad, chunk_grad in zip(unit_grads, chunk_grads):
                grad[part] = chunk_grad
        del saved  # free this chunk's [rows, K, K, n] tensors before the next chunk allocates its own
    return value, buffer


class _FusedQuadratureEntropy(th.autograd.Function):
    """The quadrature estimate with its gradient written out by hand.

    Autograd would record ~40 small ops; at RL batch sizes their bookkeeping, not the arithmetic, is the cost. The
    forward makes five passes over ``[..., K, K, n]`` (product, max, shift, exp, sum; two more for the
    responsibility entropy), the backward two (one more for the responsibility entropy), and allocates one such
    tensor per direction (two in the forward for the responsibility entropy).

    Memory: the one-pass forward keeps two ``[..., K, K, n]`` tensors for the backward (3.3 GB at B = 100k, K = 8,
    n = 64 in float32), and a forward + backward peaks at over four of them. When one would exceed
    :data:`CHUNK_BYTES` (on the CPU; :data:`GPU_CHUNK_BYTES` elsewhere), the batch is flattened and processed in
    chunks that each fit it instead, and nothing of that size outlives its chunk: the forward also computes each
    chunk's gradient for an incoming gradient of one (when a graph is being recorded), and the backward only scales
    those by the incoming gradient, which enters linearly. That costs no extra pass (recomputing the chunks in the
    backward would repeat the forward, the larger half of the work); it is wasted only when the graph is never
    back-propagated, or with an all-zero incoming gradient, which the one-pass backward skips. Values and gradients
    equal the one-pass path's up to rounding (docs/memory.md).

    The hand-written gradient is built from saved constants, so it is not itself differentiable. It serves every
    backward pass that records no graph (``create_graph=False``: each optimiser step). A backward that does record
    one (``hessian``, Hessian-vector products, gradient penalties, ``autograd.functional.jvp``) differentiates the
    reference implementation instead, so higher derivatives are autograd's, not zeros. That path is not chunked: the
    graph it records for the second derivative holds the reference's ``[..., K, K, n]`` intermediates of the whole
    batch, so its memory is that of ``fused=False``.
    """

    @staticmethod
    def forward(ctx, log_weights, means, stds, log_stds, points, features, point_weights, responsibility_entropy, plan):  # type: ignore[override]
        ctx.responsibility_entropy = responsibility_entropy
        # Chunks and the compiled kernel compute the gradient in the forward; the backward only scales it.
        ctx.precomputed = plan is not None
        if plan is None:
            value, saved = _fused_forward(
                log_weights, means, stds, log_stds, features, point_weights, responsibility_entropy
            )
            # The inputs are saved too (no copy): a backward that records a graph re-derives the gradient from them.
            ctx.save_for_backward(*saved, log_weights, means, stds, log_stds)
            return value
        batch_shape = plan.batch_shape
        flat = [
            _flatten_batch(tensor, batch_shape, event_dims)
            for tensor, event_dims in ((log_weights, 1), (means, 2), (stds, 2), (log_stds, 2))
        ]
        n_components, dim = means.shape[-2:]
        if plan.kernel is not None:
            cap = max_scaled_distance(means.dtype)
            value, unit_grads = native.quadrature_entropy(
                plan.kernel, *flat, points, point_weights, responsibility_entropy, cap, plan.with_gradient
            )
        else:
            value, unit_grads = _chunked(flat, features, point_weights, responsibility_entropy, plan)
        ctx.dims = (n_components, dim)
        saved_grads = () if unit_grads is None else (unit_grads.view(*batch_shape, unit_grads.shape[-1]),)
        ctx.save_for_backward(*saved_grads, features, point_weights, log_weights, means, stds, log_stds)
        return value.view(batch_shape)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        if th.is_grad_enabled():
            # create_graph=True: the gradient must itself be differentiable (in the inputs and in grad_output).
            return _differentiable_backward(ctx, grad_output)
        if ctx.precomputed:
            # The gradient for an incoming gradient of one (of the kernel or the chunks), scaled per batch element
            # in one multiplication.
            scaled = grad_output.unsqueeze(-1) * ctx.saved_tensors[0]
            grad_log_weights, grad_means, grad_stds, grad_log_stds = native.split_gradient(scaled, *ctx.dims)
            return grad_log_weights, grad_means, grad_stds, grad_log_stds.expand_as(grad_stds), *(None,) * 5
        # PPO / A2C with ent_coef = 0 still back-propagate through the entropy, with an all-zero gradient. On the CPU
        # a check is cheap (no device sync) and skips the backward's passes over [..., K, K, n]; the inputs then get
        # zero gradients. (The precomputed gradient above costs one multiplication, less than the check.)
        if grad_output.device.type == "cpu" and not bool(grad_output.any()):
            return (None,) * 9
        grad_log_weights, grad_means, grad_stds, grad_log_stds = _fused_backward(
            ctx.saved_tensors[:11], grad_output, ctx.responsibility_entropy
        )
        return grad_log_weights, grad_means, grad_stds, grad_log_stds.expand_as(grad_stds), None, None, None, None, None


def _differentiable_backward(ctx: Any, grad_output: th.Tensor) -> Tuple[Optional[th.Tensor], ...]:
    """The fused Function's gradient as autograd of the reference, with a graph (for second derivatives)."""
    *_, features, point_weights, log_weights, means, stds, log_stds = ctx.saved_tensors

    def reference(*inputs: th.Tensor) -> th.Tensor:
        return _autograd_quadrature_entropy(MixtureParams(*inputs), features, point_weights, ctx.responsibility_entropy)

    inputs = (log_weights, means, stds, log_stds)
    return native.differentiable_gradients(reference, inputs, ctx.needs_input_grad, grad_output, 9)


class _CompiledUnionEntropy(th.autograd.Function):
    """:func:`union_rule_entropy` through the compiled kernel: the gradient is computed in the forward (incoming
    gradient one) and scaled in the backward; a backward that records a graph differentiates the torch formula."""

    @staticmethod
    def forward(ctx, log_weights, means, stds, log_stds, unit_nodes, kernels, with_gradient):  # type: ignore[override]
        batch_shape = _batch_shape(MixtureParams(log_weights, means, stds, log_stds))
        n_components = means.shape[-2]
        flat = [
            _flatten_batch(tensor, batch_shape, 1)
            for tensor in (log_weights, means[..., 0], stds[..., 0], log_stds[..., 0])
        ]
        value, buffer = native.union_entropy_1d(
            kernels, *flat, unit_nodes, UNION_RULE_END, max_scaled_distance(means.dtype), with_gradient
        )
        ctx.n_components = n_components
        saved = () if buffer is None else (buffer.view(*batch_shape, buffer.shape[-1]),)
        ctx.save_for_backward(*saved, unit_nodes, log_weights, means, stds, log_stds)
        return value.view(batch_shape)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        *_, unit_nodes, log_weights, means, stds, log_stds = ctx.saved_tensors
        if th.is_grad_enabled():

            def reference(*inputs: th.Tensor) -> th.Tensor:
                return _torch_union_rule_entropy(MixtureParams(*inputs), unit_nodes)

            inputs = (log_weights, means, stds, log_stds)
            return native.differentiable_gradients(reference, inputs, ctx.needs_input_grad, grad_output, 7)
        scaled = grad_output.unsqueeze(-1) * ctx.saved_tensors[0]
        return (*native.split_union_gradient(scaled, ctx.n_components), None, None, None)


# --------------------------------------------------------------------------------------------------------------------
# Point sets (built in point_sets.py) converted for the inputs.


def _as_input(tensor: th.Tensor, like: th.Tensor) -> th.Tensor:
    return tensor.to(dtype=like.dtype, device=like.device)


class PointRule(NamedTuple):
    """The standard-normal points an estimate averages over, as the compiled kernels take them.

    :param points: ``[n, D]`` shared by every component, or ``[K, n, D]`` per component
    :param point_weights: ``[n]``, summing to one
    :param responsibility_entropy: the integrand (see the module docstring)
    :param union_end: 0 for the per-component rule; for qmc's 1-D union rule (:func:`union_rule_entropy`) its
        :data:`UNION_RULE_END`, with ``points`` the ascending unit nodes ``[n, 1]``
    :param widening: empty for the other rules; for qmc's pooled rule (:func:`widened_mis_entropy`) the constants of
        :func:`mis_widening`: the largest widening, the ratio, the sharpness and the soft maximum's temperature
    """

    points: th.Tensor
    point_weights: th.Tensor
    responsibility_entropy: bool
    union_end: float = 0.0
    widening: Tuple[float, ...] = ()


def mis_constants(dim: int) -> Tuple[float, float, float, float]:
    """:func:`mis_widening`'s constants for ``dim`` action dimensions, as :class:`PointRule` carries them."""
    return (MIS_WIDENING_1D if dim == 1 else MIS_WIDENING, MIS_RATIO, MIS_SHARPNESS, MIS_SOFT_MAX)


@lru_cache(maxsize=128)
def _qmc_rule(
    n_components: int, dim: int, n_points: int, seed: int, dtype: th.dtype, device: th.device
) -> Tuple[th.Tensor, th.Tensor, th.Tensor]:
    """Points, weights and features of the qmc rule, converted once per dtype/device (they are constants).

    In one dimension a deterministic rule replaces Sobol. It evaluates as many nodes as the ``n_points``-node
    Gauss-Hermite rule has above ``NEGLIGIBLE_NODE_WEIGHT`` (36 of 64), so ``n_points`` keeps its cost. From 8 such
    nodes on they are sinh-spaced (:func:`sinh_normal_points`, scale 0.5): at the same count this resolves the sharp
    responsibility switch a wide component sees at a narrower one, where Gauss-Hermite's central spacing is too
    coarse (on the 1-D suite worst error 0.0196 -> 0.0081 nats, worst gradient cosine of 8-32x concentric widths
    0.969 -> 0.999; docs/qmc_design.md, one-dimensional rules). Below 8, Gauss-Hermite is the better rule.
    """
    if dim == 1:
        points, weights = gauss_hermite_points(n_points)
        # Far-tail nodes carry weights below 1e-12 (nearly half of them at n = 64): their contribution is far below
        # float32 resolution, so they are not evaluated.
        kept = weights > NEGLIGIBLE_NODE_WEIGHT
        points, weights = points[kept], weights[kept] / weights[kept].sum()
        if weights.numel() >= SINH_RULE_MIN_NODES:
            points, weights = sinh_normal_points(weights.numel(), SINH_RULE_SCALE)
    else:
        points = sobol_points(n_components, dim, n_points, seed)
        weights = th.full((n_points,), 1.0 / n_points, dtype=th.float64)
    points, weights = points.to(dtype=dtype, device=device), weights.to(dtype=dtype, device=device)
    return points, weights, point_features(points)


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
        "fused": FUSED_OPTION,
    },
    deterministic=False,
    exact_for_single_gaussian=False,
)
def monte_carlo(
    params: MixtureParams, n_samples: int = 64, seed: Optional[int] = None, fused: bool = True
) -> th.Tensor:
    """Unbiased, noisy: ``sum_i w_i mean_n[-log p(mu_i + s_i eps_in)]`` with fresh ``eps`` per batch element."""
    generator = None
    if seed is not None:
        generator = th.Generator(device=params.means.device)
        generator.manual_seed(seed)
    shape = (*params.means.shape[:-1], n_samples, params.dim)
    eps = th.randn(shape, generator=generator, dtype=params.means.dtype, device=params.means.device)
    point_weights = th.full((n_samples,), 1.0 / n_samples, dtype=params.means.dtype, device=params.means.device)
    return quadrature_entropy(
        params, eps, point_weights, control_variate=False, fused=fused, integrand="log_responsibility"
    )


def _qmc_rule_name(dim: int, rule_1d: str, rule_nd: str) -> str:
    """The rule qmc uses: ``rule_1d`` in one action dimension, ``rule_nd`` above (each is ignored in the other)."""
    return rule_1d if dim == 1 else rule_nd


def _qmc_point_rule(
    n_components: int,
    dim: int,
    dtype: th.dtype,
    device: th.device,
    n_points: int = 64,
    seed: int = 0,
    integrand: str = INTEGRANDS[0],
    fused: bool = True,
    rule_1d: str = RULES_1D[0],
    rule_nd: str = RULES_ND[0],
) -> Optional[PointRule]:
    if not fused:
        return None  # autograd through every op
    points, point_weights, _ = _qmc_rule(n_components, dim, n_points, seed, dtype, device)
    rule = _qmc_rule_name(dim, rule_1d, rule_nd)
    if rule == "widened_mis":
        return PointRule(points, point_weights, True, 0.0, mis_constants(dim))
    if rule == "union":
        return PointRule(points, point_weights, True, UNION_RULE_END)
    return PointRule(points, point_weights, integrand == INTEGRANDS[0])


@register(
    "qmc",
    bound=None,
    cost="O(n K^2 D)",
    summary="fixed scrambled-Sobol points per component, pooled over the components with narrow ones widened (in "
    "1-D one rule on the union of the components' sinh-spaced nodes), with the Gaussian control variate",
    options={
        "n_points": Option(64, positive_int(maximum=4096, minimum=2), "points per component (a power of 2 is best)"),
        "seed": Option(0, positive_int(minimum=0), "scrambling seed of the fixed point sets"),
        "integrand": Option(INTEGRANDS[0], one_of(*INTEGRANDS), INTEGRAND_HELP),
        "fused": FUSED_OPTION,
        "rule_1d": Option(
            RULES_1D[0],
            one_of(*RULES_1D),
            "one action dimension only (ignored in D >= 2, where rule_nd decides): 'union': one trapezoid rule on "
            "the sorted union of every component's nodes, each component's integral divided by the rule's integral of "
            "that component (worst gradient cosine on the 1-D suite 0.997); 'per_component': each component's "
            "integral on its own nodes (0.84 where a narrow component sits inside wide ones); "
            "'widened_mis' pools every component's nodes as rule_nd does (0.991; PPO throughput at K = 8 about 0.72 "
            "of MlpPolicy's instead of 0.9). All compiled; docs/qmc_design.md compares them",
        ),
        "rule_nd": Option(
            RULES_ND[0],
            one_of(*RULES_ND),
            "D >= 2 only (ignored in 1-D, where rule_1d decides): 'widened_mis' pools every component's points by "
            "multiple importance sampling and widens narrow components' points, accurate where a narrow component "
            "sits inside wide ones (compiled; 1.1-1.8x the cost of 'per_component'); 'per_component': each "
            "component's integral on its own points (the earlier default, kept to reproduce it; docs/qmc_design.md)",
        ),
    },
    point_rule=_qmc_point_rule,
)
def qmc(
    params: MixtureParams,
    n_points: int = 64,
    seed: int = 0,
    integrand: str = INTEGRANDS[0],
    fused: bool = True,
    rule_1d: str = RULES_1D[0],
    rule_nd: str = RULES_ND[0],
) -> th.Tensor:
    points, point_weights, features = _qmc_rule(
        params.n_components, params.dim, n_points, seed, params.means.dtype, params.means.device
    )
    # The pooled and union rules integrate p h over all components at once, where both integrands are one function
    # (sum_i w_i N_i log r_i = p sum_i r_i log r_i), so they serve either.
    rule = _qmc_rule_name(params.dim, rule_1d, rule_nd)
    if rule == "union":
        return union_rule_entropy(params, points[:, 0])
    if rule == "widened_mis":
        return widened_mis_entropy(params, points, point_weights, features)
    return quadrature_entropy(params, points, point_weights, fused=fused, features=features, integrand=integrand)


def union_rule_entropy(params: MixtureParams, unit_nodes: th.Tensor, follow_nodes: bool = True) -> th.Tensor:
    """One-dimensional entropy ``H(w) + sum_i w_i H_i - sum_i w_i int N_i h dx`` (qmc's 1-D default) with each
    integral taken by one trapezoid rule on the sorted union of every component's nodes ``mu_j + s_j eps`` (and each
    component's +- UNION_RULE_END stds), divided by the same rule's integral of ``N_i``.

    The per-component rules integrate the entropy of the responsibilities ``h`` against each component on its own
    nodes, so a wide component's rule must resolve the sharp switch of the responsibilities at a narrow component
    with its own coarse spacing, which 36 nodes cannot (worst gradient cosine 0.84 on the 1-D suite). Here the
    narrow component's nodes serve every integral near it (0.997). The division makes the rule exact where ``h`` is
    constant (coincident components); undivided, the trapezoid's error in integrating ``N_i`` came through times
    ``h`` (0.013 nats at 16 coincident components). The nodes move with the parameters and the gradient follows
    them: it is the exact derivative of the returned value, with kinks where two nodes cross.

    :param params: a one-dimensional mixture, ``means [..., K, 1]``
    :param unit_nodes: ``[n]`` standard-normal nodes (qmc's 1-D rule)
    :param follow_nodes: False holds the nodes constant in the gradient (the derivative of the integral, as the 1-D
        truth of benchmarks/cases.py takes it, not of the returned value); for comparisons only (benchmarks/rule_1d.py)
    :return: entropy ``[...]``
    """
    if params.n_components == 1:
        return weighted_sum(params.log_weights, gaussian_entropies(params.log_stds) - params.log_weights)
    if follow_nodes and not th.compiler.is_compiling():
        kernels = _kernel_for(params.means, unit_nodes.unsqueeze(-1))
        if kernels is not None and all(tensor.dtype == params.means.dtype for tensor in params):
            return _CompiledUnionEntropy.apply(*params, unit_nodes, kernels, native.records_graph(params))
    return _torch_union_rule_entropy(params, unit_nodes, follow_nodes)


def _torch_union_rule_entropy(params: MixtureParams, unit_nodes: th.Tensor, follow_nodes: bool = True) -> th.Tensor:
    """:func:`union_rule_entropy` in torch ops, differentiated by autograd (the compiled kernel's reference; the path
    off the CPU). A batch whose ``[..., K (n + 2), K]`` node tensors exceed the memory budget is evaluated in chunks,
    each recomputed in the backward, as :func:`_torch_widened_mis` does."""

    def one_pass(*tensors: th.Tensor) -> th.Tensor:
        return _union_rule_pass(MixtureParams(*tensors), unit_nodes, follow_nodes)

    rows = _rows_in_budget(params.n_components, unit_nodes.numel() + 2, params.means)
    return _in_checkpointed_chunks(one_pass, params, (1, 2, 2, 2), _batch_shape(params), rows)


def _union_rule_pass(params: MixtureParams, unit_nodes: th.Tensor, follow_nodes: bool) -> th.Tensor:
    """One pass of :func:`_torch_union_rule_entropy` over a whole (sub-)batch."""
    means, stds, log_stds = params.means[..., 0], params.stds[..., 0], params.log_stds[..., 0]  # [..., K]
    stds = stds.expand_as(means)
    with th.set_grad_enabled(th.is_grad_enabled() and follow_nodes):
        own_nodes = (means.unsqueeze(-1) + stds.unsqueeze(-1) * unit_nodes).flatten(-2)
        ends = (means - UNION_RULE_END * stds, means + UNION_RULE_END * stds)
        nodes = th.cat([own_nodes, *ends], dim=-1).sort(dim=-1).values  # [..., M]
        gaps = nodes.diff(dim=-1)
        weights = 0.5 * (th.nn.functional.pad(gaps, (1, 0)) + th.nn.functional.pad(gaps, (0, 1)))
    limit = max_scaled_distance(means.dtype)
    scaled = ((nodes.unsqueeze(-1) - means.unsqueeze(-2)) / stds.unsqueeze(-2)).clamp(-limit, limit)  # [..., M, K]
    exponents = -0.5 * scaled.square()  # [..., M, K]
    log_joint = params.log_weights.unsqueeze(-2) - log_stds.unsqueeze(-2) + exponents
    log_responsibilities = log_joint - th.logsumexp(log_joint, dim=-1, keepdim=True)
    entropies = -(log_responsibilities.exp() * log_responsibilities).sum(-1)  # [..., M], within [0, log K]
    # int p h = sum_i w_i int N_i h, each integral divided by the rule's integral of N_i (which should be 1): exact
    # where h is constant (coincident components) as the per-component rules are. Undivided, the trapezoid's error
    # in integrating each N_i (up to 0.5% at 36 nodes) came through times h (0.013 nats at 16 coincident components).
    unnormalised = weights.unsqueeze(-1) * exponents.exp()  # [..., M, K], N_i up to its constant factor
    averages = (unnormalised * entropies.unsqueeze(-1)).sum(-2) / unnormalised.sum(-2)  # [..., K]
    upper = weighted_sum(params.log_weights, gaussian_entropies(params.log_stds) - params.log_weights)
    return upper - (params.log_weights.exp() * averages).sum(-1)


def mis_widening(log_stds: th.Tensor) -> th.Tensor:
    """How far :func:`widened_mis_entropy` spreads each component's points in each dimension, ``[..., K, D]`` in
    ``[1, MIS_WIDENING]`` (``MIS_WIDENING_1D`` when D = 1): near 1 unless another component is more than about
    :data:`MIS_RATIO` times wider there. Smooth in the log stds, so the estimate stays differentiable."""
    widest = th.logsumexp(MIS_SOFT_MAX * log_stds, dim=-2, keepdim=True) / MIS_SOFT_MAX
    step = th.sigmoid(MIS_SHARPNESS * (widest - log_stds - math.log(MIS_RATIO)))
    largest = mis_constants(log_stds.shape[-1])[0]
    return 1.0 + (largest - 1.0) * step


def widened_mis_entropy(
    params: MixtureParams, points: th.Tensor, point_weights: th.Tensor, features: Optional[th.Tensor] = None
) -> th.Tensor:
    """``H(w) + sum_i w_i H_i - int p h dx`` with the integral taken by multiple importance sampling over every
    component's points (the balance heuristic), each component's points widened where it is narrow.

    The per-component rule integrates ``h`` (the entropy of the responsibilities) against each component on its own
    points. Where a heavy component is much narrower than light, wide ones in some dimension, ``h`` changes on the
    narrow scale on a thin shell about 3 narrow stds out: the wide components' points hit it too rarely, and each hit
    carries a gradient of order 1 / narrow std (docs/qmc_design.md, narrow inside wide). Here component ``k``'s
    points are ``x = mu_k + c_k s_k eps`` with ``c_k`` = :func:`mis_widening`, and every point counts for the whole
    integral with weight ``p(x) / sum_j q_j(x)`` (``q_j`` the widened proposal of component ``j``): near the narrow
    component its own, now denser, points take over the shell. On the CPU a compiled kernel computes the value and its
    first derivative in one call (memory bounded at any batch size); elsewhere the torch formula, in chunks above the
    memory budget. Second derivatives are autograd's through the torch formula.

    In one dimension the same, with qmc's sinh-spaced nodes and their weights. Exact for one Gaussian and in the
    coincident and far-apart limits, as the per-component rule.

    :param params: the mixture
    :param points: ``[K, n, D]`` standard-normal points per component, or ``[n, D]`` shared by every component
    :param point_weights: ``[n]``, a rule for N(0, I) (summing to one)
    :param features: :func:`point_features` of ``points`` when the caller has it cached
    :return: entropy ``[...]``
    """
    if params.n_components == 1:
        return weighted_sum(params.log_weights, gaussian_entropies(params.log_stds) - params.log_weights)
    if not th.compiler.is_compiling():
        kernels = _kernel_for(params.means, points)  # None off the CPU
        if kernels is not None and all(tensor.dtype == params.means.dtype for tensor in params):
            # The kernel widens the proposals itself: ~10 torch ops and their backward less per call.
            return _CompiledWidenedMis.apply(*params, points, point_weights, kernels, native.records_graph(params))
    if features is None:
        features = point_features(points)
    return _widened_mis_reference(params, features, point_weights)


def _widened_mis_reference(params: MixtureParams, features: th.Tensor, point_weights: th.Tensor) -> th.Tensor:
    """:func:`widened_mis_entropy` in torch ops: the proposals by :func:`mis_widening`, then the pooled estimate."""
    proposal_log_stds = params.log_stds + mis_widening(params.log_stds).log()  # [..., K, D]
    return _torch_widened_mis(params, proposal_log_stds.exp(), proposal_log_stds, features, point_weights)


def _torch_widened_mis(
    params: MixtureParams,
    proposal_stds: th.Tensor,
    proposal_log_stds: th.Tensor,
    features: th.Tensor,
    point_weights: th.Tensor,
) -> th.Tensor:
    """:func:`widened_mis_entropy` in torch ops, differentiated by autograd (the compiled kernel's reference; the path
    off the CPU). A batch whose ``[..., K, K, n]`` exponents exceed the memory budget is evaluated in chunks, each
    recomputed in the backward (activation checkpointing), so memory stays bounded at any batch size."""

    def one_pass(*tensors: th.Tensor) -> th.Tensor:
        return _widened_mis_pass(MixtureParams(*tensors[:4]), tensors[4], tensors[5], features, point_weights)

    rows = _rows_in_budget(params.n_components, features.shape[-2], params.means)
    inputs = (*params, proposal_stds, proposal_log_stds)
    return _in_checkpointed_chunks(one_pass, inputs, (1, 2, 2, 2, 2, 2), _batch_shape(params), rows)


def _in_checkpointed_chunks(
    function: Callable[..., th.Tensor],
    tensors: Sequence[th.Tensor],
    event_dims: Sequence[int],
    batch_shape: th.Size,
    rows: int,
) -> th.Tensor:
    """``function(*tensors)`` ``[*batch_shape]``, in one pass where the batch has at most ``rows`` elements, else over
    ``rows`` elements of the flattened inputs (each with ``event_dims`` trailing dimensions) at a time. Where a graph
    is recorded each chunk is checkpointed (its intermediates recomputed in the backward), so the memory held between
    forward and backward is the inputs', not every chunk's intermediates."""
    if batch_shape.numel() <= rows:
        return function(*tensors)
    flat = [_flatten_batch(tensor, batch_shape, dims) for tensor, dims in zip(tensors, event_dims)]
    parts = []
    for start in range(0, batch_shape.numel(), rows):
        chunk = [tensor[start : start + rows] for tensor in flat]
        if th.is_grad_enabled() and any(tensor.requires_grad for tensor in chunk):
            parts.append(th.utils.checkpoint.checkpoint(function, *chunk, use_reentrant=False))
        else:
            parts.append(function(*chunk))
    return th.cat(parts).view(batch_shape)


def _rows_in_budget(n_components: int, n_points: int, means: th.Tensor) -> int:
    """Batch elements per pass of the torch paths: their ``[rows, K, K, n]`` intermediate within the budget."""
    budget = CHUNK_BYTES if means.is_cpu else GPU_CHUNK_BYTES
    if math.isinf(budget):
        return 2**62  # chunking off
    return max(1, int(budget // (n_components * n_components * n_points * means.element_size())))


def _widened_mis_pass(
    params: MixtureParams,
    proposal_stds: th.Tensor,
    proposal_log_stds: th.Tensor,
    features: th.Tensor,
    point_weights: th.Tensor,
) -> th.Tensor:
    """One pass of :func:`_torch_widened_mis` over a whole (sub-)batch."""
    # log w_j + log N_j and log q_j at component i's samples, [..., K(i), K(j), n], as quadratic forms in eps.
    joint_form = _sample_exponents(params, proposal_stds, params.stds, params.log_stds, params.log_weights)
    log_joint = _contract_points(joint_form, features)
    proposal_form = _sample_exponents(params, proposal_stds, proposal_stds, proposal_log_stds)
    log_proposals = _contract_points(proposal_form, features)
    log_density = th.logsumexp(log_joint, dim=-2)  # [..., K, n]; both omit D / 2 log(2 pi), which cancels
    log_responsibilities = log_joint - log_density.unsqueeze(-2)
    entropies = -(log_responsibilities.exp() * log_responsibilities).sum(-2)  # within [0, log K]
    importance = (log_density - th.logsumexp(log_proposals, dim=-2)).exp()  # p / sum_j q_j
    upper = weighted_sum(params.log_weights, gaussian_entropies(params.log_stds) - params.log_weights)
    return upper - (importance * entropies * point_weights).sum((-2, -1))


class _CompiledWidenedMis(th.autograd.Function):
    """:func:`widened_mis_entropy` through the compiled kernel: the gradient is computed in the forward (incoming
    gradient one) and scaled in the backward; a backward that records a graph differentiates the torch formula."""

    @staticmethod
    def forward(ctx, log_weights, means, stds, log_stds, points, point_weights, kernels, with_gradient):  # type: ignore[override]
        params = MixtureParams(log_weights, means, stds, log_stds)
        batch_shape = _batch_shape(params)
        flat = [_flatten_batch(tensor, batch_shape, 1 if index == 0 else 2) for index, tensor in enumerate(params)]
        value, buffer = native.widened_mis_entropy(
            kernels, *flat, points, point_weights, mis_constants(means.shape[-1]), max_scaled_distance(means.dtype),
            with_gradient,
        )  # fmt: skip
        ctx.shape = means.shape[-2:]
        saved = () if buffer is None else (buffer.view(*batch_shape, buffer.shape[-1]),)
        ctx.save_for_backward(*saved, points, point_weights, *params)
        return value.view(batch_shape)

    @staticmethod
    def backward(ctx, grad_output):  # type: ignore[override]
        points, point_weights, *inputs = ctx.saved_tensors[-6:]
        if th.is_grad_enabled():

            def reference(*tensors: th.Tensor) -> th.Tensor:
                return _widened_mis_reference(MixtureParams(*tensors), point_features(points), point_weights)

            return native.differentiable_gradients(reference, inputs, ctx.needs_input_grad, grad_output, 8)
        scaled = grad_output.unsqueeze(-1) * ctx.saved_tensors[0]
        return (*native.split_widened_mis_gradient(scaled, *ctx.shape), None, None, None, None)


def _sample_exponents(
    params: MixtureParams,
    sample_stds: th.Tensor,
    stds: th.Tensor,
    log_stds: th.Tensor,
    log_weights: Optional[th.Tensor] = None,
) -> th.Tensor:
    """``log w_j + log N(x; mu_j, s_j) + D / 2 log(2 pi)`` at ``x = mu_i + t_i eps`` (``t = sample_stds``, ``s = stds``)
    as coefficients of :func:`point_features` ``[eps, eps^2, 1]``, ``[..., K(i), K(j), 2D + 1]``.

    With ``a = (mu_i - mu_j) / s_j`` and ``b = t_i / s_j`` the exponent is ``-sum_d log s_jd - (a + b eps)^2 / 2``.
    """
    inv_stds = stds.reciprocal().unsqueeze(-3)  # 1 / s_j, [..., 1, K, D]
    limit = max_scaled_distance(params.means.dtype)
    scaled_diff = (pairwise_differences(params.means) * inv_stds).clamp(-limit, limit)  # a
    std_ratio = sample_stds.unsqueeze(-2) * inv_stds  # b
    constant = -log_stds.sum(-1).unsqueeze(-2) - 0.5 * scaled_diff.square().sum(-1)
    if log_weights is not None:
        constant = constant + log_weights.unsqueeze(-2)
    return th.cat([-scaled_diff * std_ratio, -0.5 * std_ratio.square(), constant.unsqueeze(-1)], dim=-1)


def _sigma_point_rule(
    n_components: int,
    dim: int,
    dtype: th.dtype,
    device: th.device,
    degree: int = 3,
    kappa: Optional[float] = None,
    integrand: str = INTEGRANDS[0],
    fused: bool = True,
) -> Optional[PointRule]:
    if not fused:
        return None
    points, point_weights = sigma_point_rule(dim, degree, None if kappa is None else float(kappa))
    return PointRule(
        points.to(dtype=dtype, device=device), point_weights.to(dtype=dtype, device=device), integrand == INTEGRANDS[0]
    )


@register(
    "sigma_points",
    bound=None,
    cost="O(D K^2 D) for degree 3, O(D^2 K^2 D) for degree 5",
    summary="unscented sigma points (degree 3) or Stroud's degree-5 rule, with the Gaussian control variate",
    options={
        "degree": Option(3, one_of(3, 5), "3: 2D+1 points (unscented); 5: 2D^2+1 points"),
        "kappa": Option(None, _check_kappa, "unscented spread; None uses max(3 - D, 0)"),
        "integrand": Option(INTEGRANDS[0], one_of(*INTEGRANDS), INTEGRAND_HELP),
        "fused": FUSED_OPTION,
    },
    point_rule=_sigma_point_rule,
)
def sigma_points(
    params: MixtureParams,
    degree: int = 3,
    kappa: Optional[float] = None,
    integrand: str = INTEGRANDS[0],
    fused: bool = True,
) -> th.Tensor:
    points, point_weights = sigma_point_rule(params.dim, degree, None if kappa is None else float(kappa))
    return quadrature_entropy(
        params,
        _as_input(points, params.means),
        _as_input(point_weights, params.means),
        fused=fused,
        integrand=integrand,
    )
