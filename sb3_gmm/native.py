"""Compiled kernels for the mixture's hot paths: built with the system's C compiler on first use, cached, optional.

At RL minibatch sizes eager PyTorch pays several microseconds per op on a CPU, so the cost of the mixture's math is
mostly bookkeeping, not arithmetic (docs/performance.md). ``_kernels.c`` holds functions that each do a forward and
its first derivative in one call:

- the quadrature entropy estimate of :mod:`sb3_gmm.entropy.quadrature` (qmc, sigma points), whose fused torch path
  is ~90 ops (about 2x faster at K <= 4, more at K = 8), qmc's 1-D union rule (its 1-D default) and its pooled
  rule (the default in D >= 2, the proposals widened in the kernel);
- the mixture log density of :func:`sb3_gmm.mixture.mixture_log_prob` (~20 ops forward and backward in torch);
- a policy head's log density and entropy together, from the head's raw outputs, and the rollout's draw with its log
  density (:mod:`sb3_gmm.compiled_head`).

It is plain C (no Python or torch headers), so building it takes about a second. The first process that needs it
compiles it into a cache directory; later ones load the cached library. Without a working compiler (or on
Windows, where no ``cc`` is usual) the library keeps its torch paths: results are the same up to rounding (tested),
only slower. Settings, read when a kernel is first needed:

- ``SB3_GMM_NATIVE``: ``auto`` (the default: use the kernels when they build, warn once when they do not), ``0``
  (never build them; the torch paths), ``1`` (require them: the first use raises if they cannot be built, e.g. to
  check a deployment).
- ``SB3_GMM_CACHE_DIR``: where the library is cached (default ``$XDG_CACHE_HOME/sb3_gmm`` or ``~/.cache/sb3_gmm``).
- ``CC``: the compiler (default ``cc``).

The kernels serve CPU tensors of float32 / float64; other devices (and layouts a kernel does not take, such as Monte
Carlo's per-element points) keep the torch paths. :func:`disabled` switches them off for one thread.
"""

import contextlib
import ctypes
import hashlib
import itertools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch as th

SOURCE = Path(__file__).with_name("_kernels.c")
ENV_SWITCH = "SB3_GMM_NATIVE"
ENV_CACHE_DIR = "SB3_GMM_CACHE_DIR"
_MODES = ("auto", "0", "1")
# -ffast-math lets the compiler vectorise exp and log through glibc's vector math library; the kernel is written to
# be safe under it (finite inputs, capped distances). -march=native: the cached library is keyed by the CPU's flags.
_FLAGS = ("-O3", "-ffast-math", "-fPIC")
_NATIVE_FLAGS = ("-march=native",)
_REALS: Dict[th.dtype, Tuple[str, type]] = {
    th.float32: ("float", ctypes.c_float),
    th.float64: ("double", ctypes.c_double),
}


class Kernels(NamedTuple):
    """The loaded library's functions for one dtype (ctypes functions with their argument types set)."""

    quadrature_entropy: Any
    mixture_log_prob: Any
    union_entropy_1d: Any
    widened_mis_entropy: Any
    head_evaluate: Any
    head_sample: Any


_lock = threading.Lock()
_kernels: Dict[th.dtype, Optional[Kernels]] = {}
_errors: Dict[th.dtype, str] = {}
_warned = False
_disabled = threading.local()


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Use the torch path in this thread for the duration of a ``with`` block (to compare, or to rule the kernel
    out when debugging); ``SB3_GMM_NATIVE=0`` does the same for the whole process."""
    previous = getattr(_disabled, "depth", 0)
    _disabled.depth = previous + 1
    try:
        yield
    finally:
        _disabled.depth = previous


def mode() -> str:
    """``SB3_GMM_NATIVE`` as one of ``auto``, ``0``, ``1`` (a clear error for anything else)."""
    value = os.environ.get(ENV_SWITCH, "auto").strip().lower() or "auto"
    aliases = {"on": "1", "true": "1", "yes": "1", "off": "0", "false": "0", "no": "0"}
    value = aliases.get(value, value)
    if value not in _MODES:
        raise ValueError(
            f"{ENV_SWITCH}={os.environ[ENV_SWITCH]!r} is not understood; use auto, 0 (off) or 1 (required)"
        )
    return value


def cache_dir() -> Path:
    """Where built libraries are kept (``SB3_GMM_CACHE_DIR``, else the user's cache directory)."""
    configured = os.environ.get(ENV_CACHE_DIR)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sb3_gmm"


def library(dtype: th.dtype) -> Optional[Kernels]:
    """The compiled kernels for ``dtype``, building them on first use; None where they are off or cannot be built.

    :param dtype: ``th.float32`` or ``th.float64`` (None for any other)
    """
    if getattr(_disabled, "depth", 0):
        return None
    found = _kernels.get(dtype)
    if found is not None:
        return found
    if dtype not in _REALS:
        return None
    switch = mode()
    if switch == "0":
        return None
    with _lock:
        if dtype not in _kernels:
            try:
                _kernels[dtype] = _load(dtype)
            except Exception as error:  # a missing compiler, a read-only disk, a foreign platform: keep the torch path
                _kernels[dtype] = None
                _errors[dtype] = f"{type(error).__name__}: {error}"
    found = _kernels[dtype]
    if found is None:
        _report_failure(dtype, switch)
    return found


def reset() -> None:
    """Forget loaded kernels and failures, so the next estimate reads the settings again (for tests)."""
    global _warned
    with _lock:
        _kernels.clear()
        _errors.clear()
        _warned = False


def quadrature_entropy(
    kernels: Kernels,
    log_weights: th.Tensor,
    means: th.Tensor,
    stds: th.Tensor,
    log_stds: th.Tensor,
    points: th.Tensor,
    point_weights: th.Tensor,
    responsibility_entropy: bool,
    distance_cap: float,
    with_gradient: bool,
) -> Tuple[th.Tensor, Optional[th.Tensor]]:
    """The estimate ``[N]`` and, with ``with_gradient``, its gradient for an incoming gradient of one.

    :param kernels: :func:`library` of the inputs' dtype
    :param log_weights: ``[N, K]``; ``means``, ``stds``, ``log_stds``: ``[N, K, D]``. Views whose batch stride is 0
        (one std for the whole batch, expanded) are read in place; other layouts are copied
    :param points: ``[n, D]`` shared or ``[K, n, D]`` per component
    :param point_weights: ``[n]``
    :param responsibility_entropy: the integrand (see :mod:`sb3_gmm.entropy.quadrature`)
    :param distance_cap: :func:`sb3_gmm.mixture.max_scaled_distance` of the dtype
    :param with_gradient: also return the gradient, as one buffer ``[N, K (2 + 2D)]`` that
        :func:`split_gradient` cuts into the gradients w.r.t. log weights, means, stds and log stds
    """
    n_batch, n_components, dim = means.shape
    inputs, strides = _strided(log_weights, means, stds, log_stds)
    points, point_weights = points.contiguous(), point_weights.contiguous()
    parts = _entropy_parts(n_components, dim)
    value, buffer, pointers = _outputs(means, n_batch, parts, with_gradient)
    n_points = point_weights.shape[0]
    status = kernels.quadrature_entropy(
        n_batch, n_components, dim, n_points,
        *(tensor.data_ptr() for tensor in inputs), strides,
        points.data_ptr(), n_points * dim if points.dim() == 3 else 0, point_weights.data_ptr(),
        int(responsibility_entropy), distance_cap,
        value.data_ptr(), *pointers, sum(parts),
    )  # fmt: skip
    _check(status, "entropy", n_components, dim)
    return value, buffer


def split_gradient(buffer: th.Tensor, n_components: int, dim: int) -> Tuple[th.Tensor, ...]:
    """Views of a gradient buffer ``[..., K (2 + 2D)]``: log weights ``[..., K]``, means and stds ``[..., K, D]``,
    log stds ``[..., K, 1]``."""
    log_weights, means, stds, log_stds = buffer.split(_entropy_parts(n_components, dim), dim=-1)
    return (
        log_weights,
        means.unflatten(-1, (n_components, dim)),
        stds.unflatten(-1, (n_components, dim)),
        log_stds.unsqueeze(-1),
    )


def mixture_log_prob(
    kernels: Kernels,
    x: th.Tensor,
    log_weights: th.Tensor,
    means: th.Tensor,
    stds: th.Tensor,
    log_stds: th.Tensor,
    distance_cap: float,
    with_gradient: bool,
) -> Tuple[th.Tensor, Optional[th.Tensor]]:
    """``log p(x)`` ``[N]`` and, with ``with_gradient``, its gradient for an incoming gradient of one.

    :param kernels: :func:`library` of the inputs' dtype
    :param x: ``[N, D]``; ``log_weights``: ``[N, K]``; ``means``, ``stds``, ``log_stds``: ``[N, K, D]`` (views with
        batch stride 0, e.g. stds shared by the batch, are read in place)
    :param distance_cap: :func:`sb3_gmm.mixture.max_scaled_distance` of the dtype
    :param with_gradient: also return the gradient as one buffer ``[N, D + K + 3 K D]`` that
        :func:`split_log_prob_gradient` cuts into the gradients w.r.t. x, log weights, means, stds and log stds
    """
    n_batch, n_components, dim = means.shape
    inputs, strides = _strided(x, log_weights, means, stds, log_stds)
    parts = _log_prob_parts(n_components, dim)
    value, buffer, pointers = _outputs(means, n_batch, parts, with_gradient)
    status = kernels.mixture_log_prob(
        n_batch, n_components, dim, *(tensor.data_ptr() for tensor in inputs), strides, distance_cap, value.data_ptr(),
        *pointers, sum(parts),
    )  # fmt: skip
    _check(status, "log-density", n_components, dim)
    return value, buffer


def split_log_prob_gradient(buffer: th.Tensor, n_components: int, dim: int) -> Tuple[th.Tensor, ...]:
    """Views of a :func:`mixture_log_prob` gradient buffer ``[..., D + K + 3 K D]``: x ``[..., D]``, log weights
    ``[..., K]``, means, stds and log stds ``[..., K, D]``."""
    x, log_weights, *component_grads = buffer.split(_log_prob_parts(n_components, dim), dim=-1)
    return (x, log_weights, *(grad.unflatten(-1, (n_components, dim)) for grad in component_grads))


def union_entropy_1d(
    kernels: Kernels,
    log_weights: th.Tensor,
    means: th.Tensor,
    stds: th.Tensor,
    log_stds: th.Tensor,
    unit_nodes: th.Tensor,
    end: float,
    distance_cap: float,
    with_gradient: bool,
) -> Tuple[th.Tensor, Optional[th.Tensor]]:
    """qmc's 1-D union rule (:func:`sb3_gmm.entropy.quadrature.union_rule_entropy`) ``[N]`` and, with
    ``with_gradient``, its gradient as one buffer ``[N, 4 K]`` that :func:`split_union_gradient` cuts.

    :param log_weights: ``[N, K]``; ``means``, ``stds``, ``log_stds``: ``[N, K]`` (D = 1 squeezed; batch stride 0
        allowed)
    :param unit_nodes: ``[n]`` standard-normal nodes, ascending
    :param end: each component's outermost nodes, in its stds
    """
    n_batch, n_components = means.shape
    inputs, strides = _strided(log_weights, means, stds, log_stds)
    unit_nodes = unit_nodes.contiguous()
    parts = _entropy_parts(n_components, 1)
    value, buffer, pointers = _outputs(means, n_batch, parts, with_gradient)
    status = kernels.union_entropy_1d(
        n_batch, n_components, unit_nodes.numel(), *(tensor.data_ptr() for tensor in inputs), strides,
        unit_nodes.data_ptr(), end, distance_cap, value.data_ptr(), *pointers, sum(parts),
    )  # fmt: skip
    _check(status, "union-rule", n_components, 1)
    return value, buffer


def split_union_gradient(buffer: th.Tensor, n_components: int) -> Tuple[th.Tensor, ...]:
    """Views of a :func:`union_entropy_1d` gradient buffer ``[..., 4 K]``: log weights ``[..., K]``, means, stds and
    log stds ``[..., K, 1]``."""
    log_weights, *component_grads = buffer.split(_entropy_parts(n_components, 1), dim=-1)
    return (log_weights, *(grad.unsqueeze(-1) for grad in component_grads))


def widened_mis_entropy(
    kernels: Kernels,
    log_weights: th.Tensor,
    means: th.Tensor,
    stds: th.Tensor,
    log_stds: th.Tensor,
    points: th.Tensor,
    point_weights: th.Tensor,
    widening: Sequence[float],
    distance_cap: float,
    with_gradient: bool,
) -> Tuple[th.Tensor, Optional[th.Tensor]]:
    """qmc's pooled, widened rule (:func:`sb3_gmm.entropy.quadrature.widened_mis_entropy`) ``[N]``, the proposals
    widened in the kernel, and with ``with_gradient`` its gradient as one buffer ``[N, K + 3 K D]`` that
    :func:`split_widened_mis_gradient` cuts.

    :param log_weights: ``[N, K]``; ``means``, ``stds``, ``log_stds``: ``[N, K, D]`` (batch stride 0 allowed)
    :param points: ``[K, n, D]`` standard-normal points per component, or ``[n, D]`` shared
    :param point_weights: ``[n]``, summing to one
    :param widening: :func:`sb3_gmm.entropy.quadrature.mis_constants` of the dimension
    """
    n_batch, n_components, dim = means.shape
    inputs, strides = _strided(log_weights, means, stds, log_stds)
    point_weights = point_weights.contiguous()
    coordinate_major = _pooled_points(points, n_components)
    parts = _widened_mis_parts(n_components, dim)
    value, buffer, pointers = _outputs(means, n_batch, parts, with_gradient)
    status = kernels.widened_mis_entropy(
        n_batch, n_components, dim, points.shape[-2], *(tensor.data_ptr() for tensor in inputs), strides,
        coordinate_major.data_ptr(), point_weights.data_ptr(), *widening, distance_cap, value.data_ptr(), *pointers,
        sum(parts),
    )  # fmt: skip
    _check(status, "pooled-rule", n_components, dim)
    return value, buffer


def _pooled_points(points: th.Tensor, n_components: int) -> th.Tensor:
    """The pooled kernel's points: ``[n, D]`` shared or ``[K, n, D]`` per component, as ``[K, D, n]`` contiguous
    (its loops run over the points)."""
    return points.expand(n_components, *points.shape[-2:]).transpose(-1, -2).contiguous()


def split_widened_mis_gradient(buffer: th.Tensor, n_components: int, dim: int) -> Tuple[th.Tensor, ...]:
    """Views of a :func:`widened_mis_entropy` gradient buffer ``[..., K + 3 K D]``: log weights ``[..., K]``, then
    means, stds and log stds ``[..., K, D]``."""
    pieces = buffer.split(_widened_mis_parts(n_components, dim), dim=-1)
    return (pieces[0], *(piece.unflatten(-1, (n_components, dim)) for piece in pieces[1:]))


class LogStdBounds(NamedTuple):
    """The soft clamp of the log stds (:func:`sb3_gmm.distributions.soft_clamp`): bounds and the saturating margin,
    already clipped to half the interval."""

    low: float
    high: float
    margin: float


def head_evaluate(
    kernels: Kernels,
    head: th.Tensor,
    shared_log_std: Optional[th.Tensor],
    actions: th.Tensor,
    bounds: LogStdBounds,
    rule: Optional[Tuple[th.Tensor, th.Tensor, bool, float, Tuple[float, ...]]],
    distance_cap: float,
    with_gradient: bool,
) -> Tuple[th.Tensor, Optional[th.Tensor], Optional[th.Tensor]]:
    """``log p(actions)`` ``[N]``, the entropy estimate ``[N]`` (None without a rule) and, with ``with_gradient``,
    both values' gradients w.r.t. the head for an incoming gradient of one, as one buffer ``[N, 1 or 2, K + 2 K D]``.

    :param kernels: :func:`library` of the inputs' dtype
    :param head: the policy head's outputs ``[N, K + K D (+ K D)]``: logits, means, raw log stds in the head
    :param shared_log_std: the state-independent ``[K, D]`` raw log stds, or None (they are in the head). Their
        gradient columns (the last ``K D``) are per element; the caller sums them over the batch
    :param actions: ``[N, D]``
    :param bounds: the log stds' soft clamp
    :param rule: the entropy's points ``[n, D]`` or ``[K, n, D]``, weights ``[n]``, integrand, union rule's end and
        pooled rule's widening (:class:`sb3_gmm.entropy.quadrature.PointRule`), or None for the log density alone
    :param distance_cap: :func:`sb3_gmm.mixture.max_scaled_distance` of the dtype
    :param with_gradient: also return the gradient buffer
    """
    n_batch, dim = actions.shape
    n_components = head.shape[1] // (1 + 2 * dim) if shared_log_std is None else shared_log_std.shape[0]
    head, actions = _batch_major(head), _batch_major(actions)
    width = n_components * (1 + 2 * dim)
    n_values = 1 if rule is None else 2
    # Separate tensors, not views of one: the Function returns them, and its outputs should not alias each other.
    log_prob = head.new_empty(n_batch)
    entropy = None if rule is None else head.new_empty(n_batch)
    buffer = head.new_empty(n_batch, n_values, width) if with_gradient else None
    # Without a rule: no points (NULL), no entropy, and the gradient buffer holds the log density's part alone.
    n_points, points_pointer, component_stride, weights_pointer, responsibility_entropy = 0, None, 0, None, True
    union_end, widening = 0.0, (0.0, 1.0, 1.0, 1.0)  # no widening: not the pooled rule
    if rule is not None:
        points, point_weights, responsibility_entropy, union_end, pooled = rule
        if pooled:
            widening, points = pooled, _pooled_points(points, n_components)
        points, point_weights = points.contiguous(), point_weights.contiguous()
        n_points, points_pointer, weights_pointer = point_weights.shape[0], points.data_ptr(), point_weights.data_ptr()
        component_stride = 0 if points.dim() == 2 else points.shape[-1] * points.shape[-2]
    if shared_log_std is not None:
        shared_log_std = shared_log_std.contiguous()  # kept referenced until the call returns
    shared_pointer = None if shared_log_std is None else shared_log_std.data_ptr()
    entropy_pointer = None if entropy is None else entropy.data_ptr()
    log_prob_grad_pointer = entropy_grad_pointer = None
    if buffer is not None:
        log_prob_grad_pointer = buffer.data_ptr()
        # Pointer arithmetic rather than indexing: an indexed view costs a microsecond or two at this call rate.
        entropy_grad_pointer = None if rule is None else log_prob_grad_pointer + width * buffer.element_size()
    status = kernels.head_evaluate(
        n_batch, n_components, dim, head.data_ptr(), head.stride(0), shared_pointer, actions.data_ptr(),
        actions.stride(0), *bounds, n_points, points_pointer, component_stride, weights_pointer,
        int(responsibility_entropy), union_end, *widening, distance_cap, log_prob.data_ptr(), entropy_pointer,
        log_prob_grad_pointer, entropy_grad_pointer, n_values * width,
    )  # fmt: skip
    _check(status, "head", n_components, dim)
    return log_prob, entropy, buffer


def head_sample(
    kernels: Kernels,
    head: th.Tensor,
    shared_log_std: Optional[th.Tensor],
    bounds: LogStdBounds,
    log_exponential: th.Tensor,
    normal: th.Tensor,
    distance_cap: float,
) -> Tuple[th.Tensor, th.Tensor]:
    """Actions ``[N, D]`` drawn with the given noise and their log densities ``[N]`` (no gradient).

    :param kernels: :func:`library` of the inputs' dtype
    :param head: the policy head's outputs ``[N, K + K D (+ K D)]``
    :param shared_log_std: the state-independent ``[K, D]`` raw log stds, or None (they are in the head)
    :param bounds: the log stds' soft clamp
    :param log_exponential: ``[N, K]`` logs of Exp(1) draws (the component is argmax of logits minus these)
    :param normal: ``[N, D]`` standard-normal draws
    :param distance_cap: :func:`sb3_gmm.mixture.max_scaled_distance` of the dtype
    """
    n_batch, dim = normal.shape
    n_components = log_exponential.shape[1]
    head = _batch_major(head)
    log_exponential, normal = log_exponential.contiguous(), normal.contiguous()
    if shared_log_std is not None:
        shared_log_std = shared_log_std.contiguous()  # kept referenced until the call returns
    actions = head.new_empty(n_batch, dim)
    log_prob = head.new_empty(n_batch)
    status = kernels.head_sample(
        n_batch, n_components, dim, head.data_ptr(), head.stride(0),
        None if shared_log_std is None else shared_log_std.data_ptr(), *bounds, log_exponential.data_ptr(),
        normal.data_ptr(), distance_cap, actions.data_ptr(), log_prob.data_ptr(),
    )  # fmt: skip
    _check(status, "sampling", n_components, dim)
    return actions, log_prob


def records_graph(tensors: Sequence[th.Tensor]) -> bool:
    """Whether autograd records a graph through ``tensors`` here, i.e. whether a kernel call should also compute
    the gradient. Read before ``Function.apply``: inside a Function's forward grad mode is always off."""
    return th.is_grad_enabled() and any(tensor.requires_grad for tensor in tensors)


# The gradient buffers' layouts, one row per batch element, in the order the kernels write them (their pointer
# arguments) and the split_* functions cut them.
def _entropy_parts(n_components: int, dim: int) -> Tuple[int, ...]:
    return (n_components, n_components * dim, n_components * dim, n_components)  # log w, means, stds, log stds


def _widened_mis_parts(n_components: int, dim: int) -> Tuple[int, ...]:
    return (n_components, *(n_components * dim,) * 3)  # log w, means, stds, log stds


def _log_prob_parts(n_components: int, dim: int) -> Tuple[int, ...]:
    return (dim, n_components, *(n_components * dim,) * 3)  # x, log w, means, stds, log stds


def _strided(*tensors: th.Tensor) -> Tuple[List[th.Tensor], Any]:
    """The inputs laid out for a kernel (:func:`_batch_major`) and their batch strides as a C array."""
    inputs = [_batch_major(tensor) for tensor in tensors]
    return inputs, (ctypes.c_int64 * len(inputs))(*(tensor.stride(0) for tensor in inputs))


def _outputs(
    like: th.Tensor, n_batch: int, parts: Sequence[int], with_gradient: bool
) -> Tuple[th.Tensor, Optional[th.Tensor], List[Optional[int]]]:
    """The value ``[N]``, and with ``with_gradient`` the gradient buffer ``[N, sum(parts)]`` with a pointer to each
    part's first column (NULLs without: the kernels then skip the gradient)."""
    value = like.new_empty(n_batch)
    if not with_gradient:
        return value, None, [None] * len(parts)
    buffer = like.new_empty(n_batch, sum(parts))
    offsets = itertools.accumulate(parts[:-1], initial=0)
    return value, buffer, [buffer.data_ptr() + offset * buffer.element_size() for offset in offsets]


def _check(status: int, kernel: str, n_components: int, dim: int) -> None:
    if status != 0:
        raise MemoryError(f"the {kernel} kernel could not allocate its workspace (K = {n_components}, D = {dim})")


def differentiable_gradients(
    reference: Callable[..., Any],
    inputs: Sequence[Optional[th.Tensor]],
    needs_input_grad: Sequence[bool],
    grad_outputs: Any,
    n_grads: int,
) -> Tuple[Optional[th.Tensor], ...]:
    """The backward of a Function whose first derivative the kernel precomputed, when the backward records a graph
    (second derivatives, ``create_graph=True``): autograd of the torch ``reference(*inputs)`` instead, so the
    gradient is itself differentiable in the inputs and in the incoming gradients.

    :param reference: the torch formula the kernel computes: one tensor, or a tuple of them
    :param inputs: the Function's tensor inputs that ``reference`` takes, in its order (None for an absent one)
    :param needs_input_grad: ``ctx.needs_input_grad`` (the inputs first)
    :param grad_outputs: the incoming gradient, or one per output of a tuple (None: that output got none)
    :param n_grads: how many gradients the Function's backward returns (None for the rest)
    """
    # Fresh views as the roots: the gradient w.r.t. stds must not also collect the path through log_stds when the
    # caller's log_stds = stds.log() (the engine adds that path itself), yet the views keep the graph to the inputs.
    roots = [None if tensor is None else tensor.view_as(tensor) for tensor in inputs]
    wanted = [index for index in range(len(roots)) if needs_input_grad[index]]
    grads: List[Optional[th.Tensor]] = [None] * n_grads
    if not wanted:
        return tuple(grads)
    values = reference(*roots)
    if isinstance(values, th.Tensor):
        values, grad_outputs = (values,), (grad_outputs,)
    pairs = [(value, grad) for value, grad in zip(values, grad_outputs) if grad is not None]
    found = th.autograd.grad(
        [value for value, _ in pairs],
        [roots[index] for index in wanted],
        [grad for _, grad in pairs],
        create_graph=True,
        allow_unused=True,
    )
    for index, grad in zip(wanted, found):
        grads[index] = grad
    return tuple(grads)


def _batch_major(tensor: th.Tensor) -> th.Tensor:
    """``tensor`` ``[N, ...]`` with each batch element's part contiguous (a copy only where it is not)."""
    shape, strides = tensor.shape, tensor.stride()
    expected = 1
    for size, stride in zip(reversed(shape[1:]), reversed(strides[1:])):
        if stride != expected and size != 1:
            return tensor.contiguous()
        expected *= size
    return tensor if strides[0] in (0, expected) else tensor.contiguous()


def build_error(dtype: th.dtype = th.float32) -> Optional[str]:
    """Why the kernel for ``dtype`` could not be built (None if it was built or never tried)."""
    return _errors.get(dtype)


def _report_failure(dtype: th.dtype, switch: str) -> None:
    global _warned
    message = (
        f"the compiled kernels could not be built ({_errors.get(dtype, 'unknown reason')}); the library uses "
        f"its slower torch paths, with the same results"
    )
    if switch == "1":
        raise RuntimeError(
            f"{message}. {ENV_SWITCH}=1 requires the kernels: install a C compiler (or set CC), or unset {ENV_SWITCH}"
        )
    if not _warned:
        _warned = True
        warnings.warn(f"{message}. Set {ENV_SWITCH}=0 to skip the attempt.", RuntimeWarning, stacklevel=_caller_level())


def _caller_level() -> int:
    """The stacklevel of the first frame outside this package, so the warning names the user's line."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _cpu_signature() -> str:
    # -march=native code must not be loaded on another CPU sharing the cache (a home directory on a cluster).
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return platform.processor()


def _compile(compiler: str, source: Path, target: Path, real: str) -> List[str]:
    """Compile ``source`` into the shared library ``target``; returns the flags used (-march=native is dropped where
    the compiler refuses it).

    Compiling and linking are separate steps on purpose: linking with -ffast-math adds crtfastmath.o, which switches
    the whole process to flush subnormal numbers to zero when the library is loaded, silently changing torch's
    arithmetic everywhere else.
    """
    last_error = ""
    for extra in (_NATIVE_FLAGS, ()):
        flags = [*_FLAGS, *extra, f"-DREAL={real}"]
        obj = target.with_suffix(".o")
        commands = [
            [compiler, *flags, "-c", "-o", str(obj), str(source)],
            [compiler, "-shared", "-o", str(target), str(obj), "-lm"],
        ]
        try:
            for command in commands:
                result = subprocess.run(command, capture_output=True, text=True, timeout=120)
                if result.returncode != 0:
                    lines = (result.stderr or result.stdout).strip().splitlines() or [f"exit {result.returncode}"]
                    last_error = f"{' '.join(command)}: {lines[-1]}"
                    break
            else:
                return flags
        finally:
            if obj.exists():
                obj.unlink()
    raise RuntimeError(last_error)


def _load(dtype: th.dtype) -> Kernels:
    real, ctype = _REALS[dtype]
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler found (tried {compiler!r}; set CC to use another)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256(
        "\0".join(
            [SOURCE.read_text(), real, " ".join(_FLAGS + _NATIVE_FLAGS), version, sys.platform, platform.machine(),
             _cpu_signature()]
        ).encode()
    ).hexdigest()[:16]  # fmt: skip
    directory = cache_dir()
    library_path = directory / f"kernels_{real}_{key}.so"
    if not library_path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        # Build beside the target and rename into place: processes that build at once (pytest-xdist workers,
        # vectorised environments) never load a half-written file.
        handle, partial = tempfile.mkstemp(suffix=".so", dir=directory)
        os.close(handle)
        try:
            _compile(compiler, SOURCE, Path(partial), real)
            os.replace(partial, library_path)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    loaded = ctypes.CDLL(str(library_path))
    size, pointer = ctypes.c_int64, ctypes.c_void_p

    def declare(name: str, argtypes: List[Any]) -> Any:
        function = getattr(loaded, name)
        function.argtypes = argtypes
        function.restype = ctypes.c_int  # 0, or 1 when the workspace could not be allocated
        return function

    return Kernels(
        quadrature_entropy=declare("sb3_gmm_quadrature_entropy", [
            size, size, size, size,  # batch, components, dim, points
            pointer, pointer, pointer, pointer, pointer,  # log_weights, means, stds, log_stds, their batch strides
            pointer, size, pointer,  # points, their component stride, point weights
            ctypes.c_int32, ctype,  # responsibility_entropy, distance cap
            pointer, pointer, pointer, pointer, pointer, size,  # value, gradients (NULL: none), their batch stride
        ]),
        mixture_log_prob=declare("sb3_gmm_mixture_log_prob", [
            size, size, size,  # batch, components, dim
            pointer, pointer, pointer, pointer, pointer, pointer,  # x, log_weights, means, stds, log_stds, strides
            ctype,  # distance cap
            pointer, pointer, pointer, pointer, pointer, pointer, size,  # value, gradients (NULL: none), stride
        ]),
        union_entropy_1d=declare("sb3_gmm_union_entropy_1d", [
            size, size, size,  # batch, components, nodes per component
            pointer, pointer, pointer, pointer, pointer,  # log_weights, means, stds, log_stds, their batch strides
            pointer, ctype, ctype,  # unit nodes, end, distance cap
            pointer, pointer, pointer, pointer, pointer, size,  # value, gradients (NULL: none), their batch stride
        ]),
        head_evaluate=declare("sb3_gmm_head_evaluate", [
            size, size, size,  # batch, components, dim
            pointer, size, pointer, pointer, size,  # head, its stride, shared log std (NULL: none), actions, stride
            ctype, ctype, ctype,  # log-std bounds and soft margin
            size, pointer, size, pointer, ctypes.c_int32,  # points, their component stride, weights, integrand
            ctype,  # the union rule's end (0: per-component points)
            ctype, ctype, ctype, ctype,  # the pooled rule's widening (0: none), ratio, sharpness, soft max
            ctype,  # distance cap
            pointer, pointer, pointer, pointer, size,  # log_prob, entropy (NULL: none), their gradients, the stride
        ]),
        widened_mis_entropy=declare("sb3_gmm_widened_mis_entropy", [
            size, size, size, size,  # batch, components, dim, points
            pointer, pointer, pointer, pointer, pointer,  # log_weights, means, stds, log_stds, their batch strides
            pointer, pointer,  # points [K, D, n], point weights [n]
            ctype, ctype, ctype, ctype, ctype,  # widening, ratio, sharpness, soft max, distance cap
            pointer, pointer, pointer, pointer, pointer, size,  # value, gradients (NULL: none), their batch stride
        ]),
        head_sample=declare("sb3_gmm_head_sample", [
            size, size, size, pointer, size, pointer,  # batch, components, dim, head, its stride, shared log std
            ctype, ctype, ctype,  # log-std bounds and soft margin
            pointer, pointer, ctype,  # log Exp(1) noise [B, K], normal noise [B, D], distance cap
            pointer, pointer,  # actions [B, D], log_prob [B]
        ]),
    )  # fmt: skip
