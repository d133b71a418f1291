"""The quadrature estimate's compiled kernel: built with the system's C compiler on first use, cached, optional.

At RL minibatch sizes the fused torch path of :mod:`sb3_gmm.entropy.quadrature` is ~90 eager ops forward and
backward, and eager PyTorch pays several microseconds per op on a CPU: most of the estimate's time is that
bookkeeping, not arithmetic (docs/performance.md). ``_quadrature_kernel.c`` does the same forward and first
derivative in one call, 4-5x faster at K <= 4 on the CPU.

It is plain C (no Python or torch headers), so building it takes about a second. The first process that needs it
compiles it into a cache directory; later ones load the cached library. Without a working compiler (or on
Windows, where no ``cc`` is usual) the estimators keep the torch path: results are the same up to rounding (tested),
only slower. Settings, read once per process:

- ``SB3_GMM_NATIVE``: ``auto`` (the default: use the kernel when it builds, warn once when it does not), ``0`` (never
  build it; the torch path), ``1`` (require it: an estimate raises if it cannot be built, e.g. to check a deployment).
- ``SB3_GMM_CACHE_DIR``: where the library is cached (default ``$XDG_CACHE_HOME/sb3_gmm`` or ``~/.cache/sb3_gmm``).
- ``CC``: the compiler (default ``cc``).

The kernel serves CPU tensors of float32 / float64 with points shared by every component or per component (qmc,
sigma points, Gauss-Hermite); Monte Carlo's per-element points and other devices keep the torch path.
"""

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import torch as th

SOURCE = Path(__file__).with_name("_quadrature_kernel.c")
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

_lock = threading.Lock()
_kernels: Dict[th.dtype, Optional[ctypes._CFuncPtr]] = {}  # type: ignore[name-defined]
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


def kernel(dtype: th.dtype) -> Optional["ctypes._CFuncPtr"]:  # type: ignore[name-defined]
    """The compiled kernel for ``dtype``, building it on first use; None where it is off or cannot be built.

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
    function: "ctypes._CFuncPtr",  # type: ignore[name-defined]
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

    :param function: :func:`kernel` of the inputs' dtype
    :param log_weights: ``[N, K]``; ``means``, ``stds``, ``log_stds``: ``[N, K, D]``. Views whose batch stride is 0
        (one std for the whole batch, expanded) are read in place; other layouts are copied
    :param points: ``[n, D]`` shared or ``[K, n, D]`` per component
    :param point_weights: ``[n]``
    :param responsibility_entropy: the integrand (see :mod:`sb3_gmm.entropy.quadrature`)
    :param distance_cap: :func:`sb3_gmm.entropy._common.max_scaled_distance` of the dtype
    :param with_gradient: also return the gradient, as one buffer ``[N, K (2 + 2D)]`` that
        :func:`split_gradient` cuts into the gradients w.r.t. log weights, means, stds and log stds
    """
    n_batch, n_components, dim = means.shape
    inputs = [_batch_major(tensor) for tensor in (log_weights, means, stds, log_stds)]
    points, point_weights = points.contiguous(), point_weights.contiguous()
    strides = (ctypes.c_int64 * 4)(*(tensor.stride(0) for tensor in inputs))
    value = means.new_empty(n_batch)
    buffer = None
    pointers: List[Optional[int]] = [None] * 4
    row = n_components * (2 + 2 * dim)
    if with_gradient:
        buffer = means.new_empty(n_batch, row)
        element = buffer.element_size()
        offsets = (0, n_components, n_components * (1 + dim), n_components * (1 + 2 * dim))
        pointers = [buffer.data_ptr() + offset * element for offset in offsets]
    n_points = point_weights.shape[0]
    status = function(
        n_batch, n_components, dim, n_points,
        *(tensor.data_ptr() for tensor in inputs), strides,
        points.data_ptr(), n_points * dim if points.dim() == 3 else 0, point_weights.data_ptr(),
        int(responsibility_entropy), distance_cap,
        value.data_ptr(), *pointers, row,
    )  # fmt: skip
    if status != 0:
        raise MemoryError(f"the entropy kernel could not allocate its workspace (K = {n_components}, D = {dim})")
    return value, buffer


def split_gradient(buffer: th.Tensor, n_components: int, dim: int) -> Tuple[th.Tensor, ...]:
    """Views of a gradient buffer ``[..., K (2 + 2D)]``: log weights ``[..., K]``, means and stds ``[..., K, D]``,
    log stds ``[..., K, 1]``."""
    sizes = [n_components, n_components * dim, n_components * dim, n_components]
    log_weights, means, stds, log_stds = buffer.split(sizes, dim=-1)
    return (
        log_weights,
        means.unflatten(-1, (n_components, dim)),
        stds.unflatten(-1, (n_components, dim)),
        log_stds.unsqueeze(-1),
    )


def _batch_major(tensor: th.Tensor) -> th.Tensor:
    """``tensor`` ``[N, ...]`` with each batch element's part contiguous (a copy only where it is not)."""
    inner = tensor[0] if tensor.shape[0] > 0 else tensor
    if inner.is_contiguous() and tensor.stride(0) in (0, inner.numel()):
        return tensor
    return tensor.contiguous()


def build_error(dtype: th.dtype = th.float32) -> Optional[str]:
    """Why the kernel for ``dtype`` could not be built (None if it was built or never tried)."""
    return _errors.get(dtype)


def _report_failure(dtype: th.dtype, switch: str) -> None:
    global _warned
    message = (
        f"the compiled entropy kernel could not be built ({_errors.get(dtype, 'unknown reason')}); the estimators use "
        f"the slower torch path, with the same results"
    )
    if switch == "1":
        raise RuntimeError(
            f"{message}. {ENV_SWITCH}=1 requires the kernel: install a C compiler (or set CC), or unset {ENV_SWITCH}"
        )
    if not _warned:
        _warned = True
        warnings.warn(f"{message}. Set {ENV_SWITCH}=0 to skip the attempt.", RuntimeWarning, stacklevel=4)


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


def _load(dtype: th.dtype) -> "ctypes._CFuncPtr":  # type: ignore[name-defined]
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
    library = directory / f"quadrature_kernel_{real}_{key}.so"
    if not library.exists():
        directory.mkdir(parents=True, exist_ok=True)
        # Build beside the target and rename into place: processes that build at once (pytest-xdist workers,
        # vectorised environments) never load a half-written file.
        handle, partial = tempfile.mkstemp(suffix=".so", dir=directory)
        os.close(handle)
        try:
            _compile(compiler, SOURCE, Path(partial), real)
            os.replace(partial, library)
        finally:
            if os.path.exists(partial):
                os.unlink(partial)
    function = ctypes.CDLL(str(library)).sb3_gmm_quadrature_entropy
    size, pointer = ctypes.c_int64, ctypes.c_void_p
    function.argtypes = [
        size, size, size, size,  # batch, components, dim, points
        pointer, pointer, pointer, pointer, pointer,  # log_weights, means, stds, log_stds, their batch strides
        pointer, size, pointer,  # points, their component stride, point weights
        ctypes.c_int32, ctype,  # responsibility_entropy, distance cap
        pointer, pointer, pointer, pointer, pointer, size,  # value, gradients (NULL: none), their batch stride
    ]  # fmt: skip
    function.restype = ctypes.c_int
    return function
