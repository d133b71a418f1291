"""Does ``torch.compile`` (inductor, CPU) pay for the mixture's hot paths at PPO sizes? Measured, not guessed.

What is compiled is what an option inside the library could compile: the autograd reference of the default estimator
(``qmc``: ``quadrature._autograd_quadrature_entropy`` with the Gaussian closed form for K = 1) and
``mixture.mixture_log_prob``. The library's eager default uses a hand-written backward
(``_FusedQuadratureEntropy``) that dynamo cannot trace whole (a data-dependent branch in its backward and the cached
point-set construction break the graph), so compiling the public ``mixture_entropy`` is not the candidate.

Sections (each prints a table; ``--write`` puts them in docs/compile.md):

1. kernels: forward + backward time of the entropy and of log_prob per (B, K, D): eager today, eager reference,
   compiled with ``dynamic=False`` (one graph per shape) and ``dynamic=True`` (one object shared by all cases), with the
   compile time of each first call (inductor cache cold: a private empty cache directory per run);
2. modes: ``mode="reduce-overhead"`` and ``"max-autotune-no-cudagraphs"`` on two cases;
3. overhead: the per-call cost of a compiled function (guards and the compiled autograd wrapper) on a one-op function;
4. recompiles: the entropy called with PPO's sequence of batch sizes (minibatch, n_envs on the rollout, a smaller last
   minibatch, one state in predict) under ``dynamic=False`` / ``None`` (torch's default) / ``True``;
5. ppo_step: one PPO minibatch step (evaluate_actions, loss, backward, gradient clipping, Adam) with MlpPolicy and
   the GMM policy, eager, or with the distribution math compiled, or evaluate_actions compiled, or the whole loss
   compiled; for the GMM policy also "branch-free", with the library's data-dependent Python branches replaced
   (library functions are swapped in this process only, no file is changed);
6. cold / warm / no compiler: fresh processes timing the first call with an empty and with a filled inductor cache,
   and what happens when no C++ compiler can be found (PATH without one; CXX naming a missing binary), with and
   without ``torch._dynamo.config.suppress_errors``.

Timings are medians over interleaved repeats in one process (ratios are measured side by side). Compile times are
wall seconds of the first call and vary with the machine's load.

Usage::

    python -m benchmarks.compile_probe --write               # everything (~15-25 min on 2 cores, mostly compiling)
    python -m benchmarks.compile_probe --sections kernels --quick
    python -m benchmarks.compile_probe --from-json run.json --write   # re-render stored results
"""

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
# Compile times below are for an empty inductor cache unless the caller points TORCHINDUCTOR_CACHE_DIR elsewhere: a
# private directory, set before torch is imported (inductor reads it once). Only when run as a script: importing the
# module (tests, other benchmarks) must not create directories.
_PRIVATE_CACHE: Optional[str] = None
if __name__ == "__main__" and "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _PRIVATE_CACHE = tempfile.mkdtemp(prefix="compile_probe_inductor_")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _PRIVATE_CACHE

import contextlib  # noqa: E402

import torch as th  # noqa: E402

from benchmarks import _report  # noqa: E402
from sb3_gmm import distributions  # noqa: E402
from sb3_gmm.entropy import (  # noqa: E402
    MixtureParams,
    mixture_entropy,
    quadrature,  # noqa: E402
)
from sb3_gmm.entropy._common import gaussian_entropies, weighted_sum  # noqa: E402
from sb3_gmm.mixture import mixture_log_prob  # noqa: E402

SCRIPT = "benchmarks/compile_probe.py"
PAGE = _report.DOCS / "compile.md"
N_POINTS = 64  # the qmc default
KERNEL_CASES: Tuple[Tuple[int, int, int], ...] = (
    (64, 1, 1),
    (64, 4, 1),
    (64, 8, 1),
    (64, 1, 6),
    (64, 4, 6),
    (64, 8, 6),
    (4096, 4, 1),
    (4096, 4, 6),
    (4096, 8, 6),
)
QUICK_KERNEL_CASES = ((64, 4, 1),)
MODE_CASES = ((64, 4, 6), (4096, 8, 6))
# PPO's batch sizes in order: minibatch, n_envs (rollout log_prob), minibatch, a smaller last minibatch, one state
# (predict), minibatch again.
PPO_BATCH_SEQUENCE = (64, 4, 64, 48, 1, 64)
PPO_STEP_COMPONENTS = (1, 4, 8)
VARIANT_ORDER = (
    "eager",
    "math compiled",
    "evaluate_actions compiled",
    "evaluate_actions compiled, branch-free",
    "loss compiled",
    "loss compiled, branch-free",
)
WARM_STEPS = 10  # PPO steps run before timing a compiled variant (its recompiles, if any, happen here)
SECTIONS = ("kernels", "modes", "overhead", "recompiles", "ppo_step", "processes")


# --------------------------------------------------------------------------------------------------------------------
# What gets compiled.


def reference_entropy(
    log_weights: th.Tensor,
    means: th.Tensor,
    stds: th.Tensor,
    log_stds: th.Tensor,
    features: th.Tensor,
    point_weights: th.Tensor,
) -> th.Tensor:
    """The default estimator (qmc, responsibility entropy) as autograd ops: what a compile option would compile.

    :param log_weights: normalised log weights ``[B, K]``
    :param means: ``[B, K, D]``
    :param stds: ``[B, K, D]`` (an expanded view is fine)
    :param log_stds: ``stds.log()``, ``[B, K, D]``
    :param features: the point features of the qmc rule for (K, D)
    :param point_weights: the rule's weights
    """
    if means.shape[-2] == 1:
        # quadrature_entropy's K = 1 branch: the Gaussian closed form.
        return weighted_sum(log_weights, gaussian_entropies(log_stds) - log_weights)
    params = MixtureParams(log_weights, means, stds, log_stds)
    return quadrature._autograd_quadrature_entropy(params, features, point_weights, True)


def qmc_rule(n_components: int, dim: int) -> Tuple[th.Tensor, th.Tensor]:
    """Features and weights of the default rule, built eagerly (dynamo would break its graph on their construction)."""
    _, point_weights, features = quadrature._qmc_rule(n_components, dim, N_POINTS, 0, th.float32, th.device("cpu"))
    return features, point_weights


def eager_default_entropy(
    log_weights: th.Tensor, means: th.Tensor, stds: th.Tensor, log_stds: th.Tensor, *_: Any
) -> th.Tensor:
    """The library's path today (hand-written backward), as GMMDistribution.entropy calls it."""
    return mixture_entropy(MixtureParams(log_weights, means, stds, log_stds), validate_args=False)


_copies = itertools.count()


def compile_fn(fn: Callable, **options: Any) -> Callable:
    """``torch.compile`` of a copy of ``fn`` with its own code object.

    Dynamo keeps compiled graphs (and the recompile limit, and torch's automatic-dynamic memory) per code object, not
    per ``torch.compile`` call: compiling ``fn`` itself twice with different options would let one variant run the
    other's graphs. A renamed copy starts from nothing, while the functions it calls are traced inline as usual.
    """
    code = fn.__code__.replace(co_name=f"{fn.__code__.co_name}_copy{next(_copies)}")
    copy = types.FunctionType(code, fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    return th.compile(copy, **options)


def graphs_compiled() -> int:
    """Graphs dynamo has handed to the backend so far in this process."""
    return int(th._dynamo.utils.counters["stats"]["unique_graphs"])


# --------------------------------------------------------------------------------------------------------------------
# Timing.


@contextlib.contextmanager
def quiet_machine(pause_cmd: Optional[str], resume_cmd: Optional[str]) -> Iterator[None]:
    """Run the block with the machine's other benchmark processes paused (when the caller names how)."""
    if pause_cmd:
        subprocess.run(pause_cmd, shell=True, check=False)
    try:
        yield
    finally:
        if resume_cmd:
            subprocess.run(resume_cmd, shell=True, check=False)


def time_interleaved(calls: Dict[str, Callable[[], Any]], repeats: int, target_s: float = 0.02) -> Dict[str, float]:
    """Median microseconds per call of each callable, the callables alternating within every repeat.

    :param calls: name -> a callable doing one full unit of work (forward and backward)
    :param repeats: rounds; each times every callable over a batch of calls lasting about ``target_s``
    """
    counts = {}
    for name, call in calls.items():
        call()  # warm-up (allocator, caches)
        start = time.perf_counter()
        call()
        single = max(time.perf_counter() - start, 1e-6)
        counts[name] = max(3, min(2000, int(target_s / single)))
    samples: Dict[str, List[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(counts[name]):
                call()
            samples[name].append((time.perf_counter() - start) / counts[name] * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def timed_first_call(call: Callable[[], Any]) -> float:
    """Seconds of one call (the compile, for the first call of a compiled function)."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


class MixtureCase:
    """Leaf parameters shaped like a policy's head output, and one forward + backward per variant.

    :param batch: B
    :param n_components: K
    :param dim: D
    """

    def __init__(self, batch: int, n_components: int, dim: int, seed: int = 0) -> None:
        generator = th.Generator().manual_seed(seed)
        self.shape = (batch, n_components, dim)
        self.logits = th.randn(batch, n_components, generator=generator).requires_grad_()
        self.means = (1.5 * th.randn(batch, n_components, dim, generator=generator)).requires_grad_()
        self.log_std = (-0.5 + 0.3 * th.randn(n_components, dim, generator=generator)).requires_grad_()
        self.actions = 1.5 * th.randn(batch, dim, generator=generator)
        self.grad_output = th.full((batch,), 1.0 / batch)
        self.leaves = (self.logits, self.means, self.log_std)
        self.features, self.point_weights = qmc_rule(n_components, dim)

    def entropy(self, fn: Callable) -> Tuple[th.Tensor, ...]:
        """Value and gradients of the entropy, the parameters prepared as GMMDistribution prepares them."""
        log_weights = th.log_softmax(self.logits, dim=-1)
        log_stds = self.log_std.expand(self.shape)
        value = fn(log_weights, self.means, self.log_std.exp().expand(self.shape), log_stds, self.features,
                   self.point_weights)  # fmt: skip
        return (value, *th.autograd.grad(value, self.leaves, self.grad_output, allow_unused=True))

    def log_prob(self, fn: Callable) -> Tuple[th.Tensor, ...]:
        """Value and gradients of log_prob of the actions, called as GMMDistribution.log_prob calls it."""
        log_weights = th.log_softmax(self.logits, dim=-1)
        value = fn(self.actions, log_weights, self.means, self.log_std.exp(), self.log_std)
        return (value, *th.autograd.grad(value, self.leaves, self.grad_output, allow_unused=True))


def max_difference(first: Sequence[th.Tensor], second: Sequence[th.Tensor]) -> float:
    """Largest absolute difference over values and gradients."""
    return max(
        float((a.detach() - b.detach()).abs().max()) for a, b in zip(first, second) if a is not None and b is not None
    )


# --------------------------------------------------------------------------------------------------------------------
# Sections.


def run_kernels(cases: Sequence[Tuple[int, int, int]], repeats: int, quiet: Callable) -> List[Dict[str, Any]]:
    """Entropy and log_prob, forward + backward, eager vs compiled (static per case, dynamic shared)."""
    rows = []
    dynamic_entropy = compile_fn(reference_entropy, dynamic=True)
    dynamic_log_prob = compile_fn(mixture_log_prob, dynamic=True)
    for batch, n_components, dim in cases:
        case = MixtureCase(batch, n_components, dim)
        row: Dict[str, Any] = {"B": batch, "K": n_components, "D": dim}
        # Static: a fresh compiled object per case. Dynamic: the shared object (compiles only when a case needs it).
        static_entropy = compile_fn(reference_entropy, dynamic=False)
        static_log_prob = compile_fn(mixture_log_prob, dynamic=False)
        compiled = {}
        for name, fn, kind in (
            ("entropy_static", static_entropy, "entropy"),
            ("entropy_dynamic", dynamic_entropy, "entropy"),
            ("log_prob_static", static_log_prob, "log_prob"),
            ("log_prob_dynamic", dynamic_log_prob, "log_prob"),
        ):
            before = graphs_compiled()
            row[f"{name}_compile_s"] = timed_first_call(partial(getattr(case, kind), fn))
            row[f"{name}_graphs"] = graphs_compiled() - before
            compiled[name] = fn
        eager_default = case.entropy(eager_default_entropy)
        row["entropy_static_diff"] = max_difference(case.entropy(compiled["entropy_static"]), eager_default)
        row["entropy_dynamic_diff"] = max_difference(case.entropy(compiled["entropy_dynamic"]), eager_default)
        row["log_prob_static_diff"] = max_difference(
            case.log_prob(compiled["log_prob_static"]), case.log_prob(mixture_log_prob)
        )
        calls = {
            "entropy_eager": partial(case.entropy, eager_default_entropy),
            "entropy_reference": partial(case.entropy, reference_entropy),
            "entropy_static": partial(case.entropy, compiled["entropy_static"]),
            "entropy_dynamic": partial(case.entropy, compiled["entropy_dynamic"]),
            "log_prob_eager": partial(case.log_prob, mixture_log_prob),
            "log_prob_static": partial(case.log_prob, compiled["log_prob_static"]),
            "log_prob_dynamic": partial(case.log_prob, compiled["log_prob_dynamic"]),
        }
        with quiet():
            row.update({f"{name}_us": value for name, value in time_interleaved(calls, repeats).items()})
        print(json.dumps(_report.json_safe(row)), flush=True)
        rows.append(row)
    return rows


def run_modes(cases: Sequence[Tuple[int, int, int]], repeats: int, quiet: Callable) -> List[Dict[str, Any]]:
    """The entropy compiled with other modes, against the default mode and eager."""
    rows = []
    for batch, n_components, dim in cases:
        case = MixtureCase(batch, n_components, dim)
        row: Dict[str, Any] = {"B": batch, "K": n_components, "D": dim}
        compiled = {}
        for mode in ("default", "reduce-overhead", "max-autotune-no-cudagraphs"):
            fn = compile_fn(reference_entropy, dynamic=False, mode=mode)
            row[f"{mode}_compile_s"] = timed_first_call(partial(case.entropy, fn))
            compiled[mode] = fn
        calls: Dict[str, Callable[[], Any]] = {"eager": partial(case.entropy, eager_default_entropy)}
        calls.update({mode: partial(case.entropy, fn) for mode, fn in compiled.items()})
        with quiet():
            row.update({f"{name}_us": value for name, value in time_interleaved(calls, repeats).items()})
        print(json.dumps(_report.json_safe(row)), flush=True)
        rows.append(row)
    return rows


def _double(x: th.Tensor) -> th.Tensor:
    return x * 2.0


def run_overhead(repeats: int, quiet: Callable) -> Dict[str, Any]:
    """Per-call cost of the compiled wrapper on a one-op function: guards (no grad) and the autograd wrapper."""
    plain = th.randn(64, 4)
    leaf = th.randn(64, 4, requires_grad=True)
    ones = th.ones(64, 4)
    compiled = compile_fn(_double, dynamic=False)
    compiled(plain)
    compiled(leaf)

    def backward(fn: Callable) -> None:
        th.autograd.grad(fn(leaf), leaf, ones)

    calls = {
        "eager_no_grad": lambda: _double(plain),
        "compiled_no_grad": lambda: compiled(plain),
        "eager_grad": lambda: backward(_double),
        "compiled_grad": lambda: backward(compiled),
    }
    with quiet():
        result = time_interleaved(calls, repeats, target_s=0.05)
    print(json.dumps(_report.json_safe(result)), flush=True)
    return result


def run_recompiles(repeats: int, quiet: Callable) -> List[Dict[str, Any]]:
    """The entropy (K = 4, D = 1) called with PPO's sequence of batch sizes under each ``dynamic`` setting."""
    n_components, dim = 4, 1
    cases = {batch: MixtureCase(batch, n_components, dim) for batch in sorted(set(PPO_BATCH_SEQUENCE))}
    rows = []
    for dynamic in (False, None, True):
        fn = compile_fn(reference_entropy, dynamic=dynamic)
        before = graphs_compiled()
        seconds = []
        for batch in PPO_BATCH_SEQUENCE:
            seconds.append(timed_first_call(partial(cases[batch].entropy, fn)))
        row: Dict[str, Any] = {
            "dynamic": str(dynamic),
            "graphs": graphs_compiled() - before,
            "first_call_s": seconds,
            "compile_s": sum(value for value in seconds if value > 0.05),
        }
        with quiet():
            row["B64_us"] = time_interleaved({"x": partial(cases[64].entropy, fn)}, repeats)["x"]
        print(json.dumps(_report.json_safe(row)), flush=True)
        rows.append(row)
    with quiet():
        eager = time_interleaved({"x": lambda: cases[64].entropy(eager_default_entropy)}, repeats)["x"]
    rows.append({"dynamic": "eager", "graphs": 0, "first_call_s": [], "compile_s": 0.0, "B64_us": eager})
    return rows


def run_ppo_step(components: Sequence[int], repeats: int, quiet: Callable) -> List[Dict[str, Any]]:
    """One PPO minibatch step (B = 64, Pendulum, zoo settings), eager vs compiled, all variants timed side by side."""
    from sb3_gmm.hyperparams import algorithm_kwargs

    settings = {
        key: value
        for key, value in algorithm_kwargs("ppo", "Pendulum-v1").items()
        if key not in ("ent_coef", "policy_kwargs")
    }
    setups = [("MlpPolicy", None)] + [("GMM", k) for k in components]
    models = {}
    for name, n_components in setups:
        models[(name, n_components)] = _trained_model(name, n_components, settings)
    rules = {k: qmc_rule(k, 1) for k in components}

    def patched_entropy(entropy_fn: Callable) -> Callable:
        def entropy(params: MixtureParams, method: Optional[str] = None, **_: Any) -> th.Tensor:
            features, point_weights = rules[params.n_components]
            return entropy_fn(*params, features, point_weights)

        return entropy

    def patched(inner: Callable[[float], None], policy: Any, **replacements: Any) -> Callable[[float], None]:
        """``inner`` with functions of sb3_gmm.distributions replaced (and ``validate_args`` set) during the call."""
        validate_args = replacements.pop("validate_args", None)

        def call(ent_coef: float) -> None:
            originals = {name: getattr(distributions, name) for name in replacements}
            original_validate = policy.action_dist.validate_args
            for name, value in replacements.items():
                setattr(distributions, name, value)
            policy.action_dist.validate_args = validate_args
            try:
                inner(ent_coef)
            finally:
                for name, value in originals.items():
                    setattr(distributions, name, value)
                policy.action_dist.validate_args = original_validate

        return call

    compiled_entropy = compile_fn(reference_entropy, dynamic=False)
    compiled_log_prob = compile_fn(mixture_log_prob, dynamic=False)
    compile_info: Dict[str, Any] = {}
    steps: Dict[str, Callable[[float], None]] = {}
    for (name, n_components), (model, batch) in models.items():
        label = name if n_components is None else f"{name} K={n_components}"
        eager_step = _ppo_step(model, batch, _ppo_loss)
        steps[f"{label}|eager"] = eager_step
        evaluate = type(model.policy).evaluate_actions
        compiled_evaluate_step = _ppo_step(model, batch, _loss_with_evaluate(compile_fn(evaluate, dynamic=False)))
        variants = {"loss compiled": _ppo_step(model, batch, compile_fn(_ppo_loss, dynamic=False))}
        if n_components is None:
            variants["evaluate_actions compiled"] = compiled_evaluate_step
        if n_components is not None:
            variants["math compiled"] = patched(
                eager_step,
                model.policy,
                mixture_entropy=patched_entropy(compiled_entropy),
                mixture_log_prob=compiled_log_prob,
            )
            # The library's data-dependent Python branches (soft_clamp's fast path, the finiteness check, the fused
            # backward) replaced by their branch-free equivalents, so that dynamo captures the loss in one graph.
            variants["loss compiled, branch-free"] = patched(
                _ppo_step(model, batch, compile_fn(_ppo_loss, dynamic=False)),
                model.policy,
                mixture_entropy=patched_entropy(reference_entropy),
                soft_clamp=branch_free_soft_clamp,
                validate_args=False,
            )
            # What an option inside the policy could compile: evaluate_actions (networks and distribution), the
            # same branch-free replacements applied.
            variants["evaluate_actions compiled, branch-free"] = patched(
                compiled_evaluate_step,
                model.policy,
                mixture_entropy=patched_entropy(reference_entropy),
                soft_clamp=branch_free_soft_clamp,
                validate_args=False,
            )
        for variant, step in variants.items():
            before = graphs_compiled()
            compile_info[f"{label}|{variant}|compile_s"] = timed_first_call(partial(step, 0.01))
            # Later calls may compile again (guards on values that change with every optimiser step).
            for _ in range(WARM_STEPS - 1):
                step(0.01)
            compile_info[f"{label}|{variant}|graphs"] = graphs_compiled() - before
            steps[f"{label}|{variant}"] = step
    rows = []
    for ent_coef in (0.01, 0.0):
        calls = {name: partial(step, ent_coef) for name, step in steps.items()}
        with quiet():
            timings = time_interleaved(calls, repeats)
        row: Dict[str, Any] = {"ent_coef": ent_coef, **compile_info}
        row.update({f"{name}|us": value for name, value in timings.items()})
        print(json.dumps(_report.json_safe(row)), flush=True)
        rows.append(row)
    return rows


def branch_free_soft_clamp(
    values: th.Tensor, low: float, high: float, margin: float = distributions.LOG_STD_SOFT_MARGIN
) -> th.Tensor:
    """``sb3_gmm.distributions.soft_clamp`` without its CPU fast path (same values and gradients; no ``float()``)."""
    margin = min(margin, 0.5 * (high - low))
    inner_low, inner_high = low + margin, high - margin
    above = high - margin * th.exp(-(values - inner_high).clamp(min=0.0) / margin)
    below = low + margin * th.exp(-(inner_low - values).clamp(min=0.0) / margin)
    return th.where(values > inner_high, above, th.where(values < inner_low, below, values))


def _trained_model(name: str, n_components: Optional[int], settings: Dict[str, Any]) -> Tuple[Any, Any]:
    """A PPO model after one short rollout, and one minibatch of 64 from its buffer."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_gmm import GMMActorCriticPolicy

    policy: Any = "MlpPolicy" if n_components is None else GMMActorCriticPolicy
    kwargs = {} if n_components is None else {"n_components": n_components}
    settings = {**settings, "n_steps": 64, "n_epochs": 1}
    env = make_vec_env("Pendulum-v1", n_envs=4, seed=0)
    model = PPO(policy, env, policy_kwargs=kwargs, seed=0, verbose=0, **settings)
    model.learn(total_timesteps=256)
    batch = next(model.rollout_buffer.get(64))
    return model, batch


def _ppo_loss(policy: Any, batch: Any, clip_range: float) -> Tuple[th.Tensor, th.Tensor, th.Tensor]:
    """PPO.train's loss terms for one minibatch (no value clipping, as in SB3's default): policy loss, mean entropy,
    value loss (combined outside, so that one compiled graph serves every ent_coef)."""
    values, log_prob, entropy = policy.evaluate_actions(batch.observations, batch.actions)
    return _ppo_loss_terms(values, log_prob, entropy, batch, clip_range)


def _loss_with_evaluate(evaluate: Callable) -> Callable:
    """:func:`_ppo_loss` with ``evaluate(policy, obs, actions)`` in place of ``policy.evaluate_actions``."""

    def loss(policy: Any, batch: Any, clip_range: float) -> Tuple[th.Tensor, th.Tensor, th.Tensor]:
        values, log_prob, entropy = evaluate(policy, batch.observations, batch.actions)
        return _ppo_loss_terms(values, log_prob, entropy, batch, clip_range)

    return loss


def _ppo_loss_terms(
    values: th.Tensor, log_prob: th.Tensor, entropy: th.Tensor, batch: Any, clip_range: float
) -> Tuple[th.Tensor, th.Tensor, th.Tensor]:
    values = values.flatten()
    advantages = batch.advantages
    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    ratio = th.exp(log_prob - batch.old_log_prob)
    policy_loss = -th.min(advantages * ratio, advantages * th.clamp(ratio, 1 - clip_range, 1 + clip_range)).mean()
    value_loss = th.nn.functional.mse_loss(batch.returns, values)
    return policy_loss, entropy.mean(), value_loss


def _ppo_step(model: Any, batch: Any, loss_fn: Callable) -> Callable[[float], None]:
    """One optimiser step of PPO.train on ``batch`` with ``loss_fn`` computing the loss terms."""
    policy = model.policy
    clip_range = float(model.clip_range(1.0))

    def step(ent_coef: float) -> None:
        policy_loss, mean_entropy, value_loss = loss_fn(policy, batch, clip_range)
        loss = policy_loss - ent_coef * mean_entropy + model.vf_coef * value_loss
        policy.optimizer.zero_grad()
        loss.backward()
        th.nn.utils.clip_grad_norm_(policy.parameters(), model.max_grad_norm)
        policy.optimizer.step()

    return step


# --------------------------------------------------------------------------------------------------------------------
# Fresh processes: cold / warm inductor cache, no C++ compiler.

CHILD_CASE = (64, 4, 6)


def child_main(suppress_errors: bool) -> None:
    """In a fresh process: compile and call the entropy once, print one JSON line with the outcome."""
    if suppress_errors:
        th._dynamo.config.suppress_errors = True
    case = MixtureCase(*CHILD_CASE)
    fn = th.compile(reference_entropy, dynamic=False)
    start = time.perf_counter()
    outcome: Dict[str, Any] = {}
    try:
        result = case.entropy(fn)
        outcome["status"] = "ok"
        outcome["diff"] = max_difference(result, case.entropy(eager_default_entropy))
    except Exception as error:  # the outcome is what is measured
        message = " ".join(line.strip() for line in str(error).strip().splitlines()[:2])
        outcome["status"] = f"{type(error).__name__}: {message[:200]}"
    outcome["first_call_s"] = time.perf_counter() - start
    outcome["graphs"] = graphs_compiled()
    print("RESULT " + json.dumps(outcome), flush=True)


def _compiler_free_path() -> str:
    """A PATH with only this Python on it: no gcc, g++, cc, c++ or clang."""
    folder = Path(tempfile.mkdtemp(prefix="compile_probe_nocc_"))
    (folder / "python3").symlink_to(Path(sys.executable).resolve())
    return str(folder)


def run_processes(timeout_s: float = 600.0) -> List[Dict[str, Any]]:
    """Fresh processes: cold and warm cache, then without a C++ compiler (cold and warm cache, suppress_errors)."""
    cache = tempfile.mkdtemp(prefix="compile_probe_child_cache_")
    empty_cache = tempfile.mkdtemp(prefix="compile_probe_child_empty_")
    no_compiler_path = _compiler_free_path()
    base = {**os.environ, "OMP_NUM_THREADS": "1"}
    no_compiler, missing_cxx = {"PATH": no_compiler_path}, "/nonexistent/g++"
    runs = [
        ("cold inductor cache", {"TORCHINDUCTOR_CACHE_DIR": cache}, False),
        ("warm inductor cache", {"TORCHINDUCTOR_CACHE_DIR": cache}, False),
        ("no C++ compiler on PATH, empty cache", {"TORCHINDUCTOR_CACHE_DIR": empty_cache, **no_compiler}, False),
        ("no C++ compiler on PATH, warm cache", {"TORCHINDUCTOR_CACHE_DIR": cache, **no_compiler}, False),
        ("CXX=/nonexistent/g++, empty cache", {"TORCHINDUCTOR_CACHE_DIR": empty_cache, "CXX": missing_cxx}, False),
        ("no C++ compiler, suppress_errors=True", {"TORCHINDUCTOR_CACHE_DIR": empty_cache, **no_compiler}, True),
    ]
    rows = []
    for label, env, suppress in runs:
        command = [sys.executable, "-m", "benchmarks.compile_probe", "--child"] + (
            ["--suppress-errors"] if suppress else []
        )
        start = time.perf_counter()
        try:
            completed = subprocess.run(
                command, env={**base, **env}, cwd=_report.REPO_ROOT, capture_output=True, text=True, timeout=timeout_s
            )
            lines = [line for line in completed.stdout.splitlines() if line.startswith("RESULT ")]
            outcome = json.loads(lines[-1][7:]) if lines else {"status": f"exit {completed.returncode}, no result"}
            outcome["warnings"] = sum("InvalidCxxCompiler" in line for line in completed.stderr.splitlines()) > 0
        except subprocess.TimeoutExpired:
            outcome = {"status": f"hung (killed after {timeout_s:.0f} s)"}
        outcome["process_s"] = time.perf_counter() - start
        outcome["run"] = label
        print(json.dumps(_report.json_safe(outcome)), flush=True)
        rows.append(outcome)
    for folder in (cache, empty_cache, no_compiler_path):
        shutil.rmtree(folder, ignore_errors=True)
    return rows


# --------------------------------------------------------------------------------------------------------------------
# Rendering.


def _us(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.0f}"


def _ratio(eager: Optional[float], other: Optional[float]) -> str:
    if eager is None or other is None or other == 0:
        return "-"
    return f"{eager / other:.2f}x"


def render(results: Dict[str, Any]) -> str:
    parts = [_report.provenance(results["record"], results["minutes"])]
    kernels = results.get("kernels")
    if kernels:
        parts.append(
            "### Entropy (default `qmc`, 64 points), forward + backward, microseconds per call\n\n"
            "`eager` is the library today (hand-written backward); `reference` the autograd reference eager; "
            "`static` / `dynamic` the reference compiled with `dynamic=False` (one graph per shape) / `dynamic=True` "
            "(one object for all rows). Speed-up is eager over compiled. Compile = seconds of the first call, "
            "inductor cache empty (dynamic: only where that row needed a new graph). Max diff: compiled vs eager, "
            "values and gradients."
        )
        rows = []
        for row in kernels:
            rows.append(
                [
                    row["B"], row["K"], row["D"], _us(row["entropy_eager_us"]), _us(row["entropy_reference_us"]),
                    _us(row["entropy_static_us"]), _ratio(row["entropy_eager_us"], row["entropy_static_us"]),
                    _us(row["entropy_dynamic_us"]), _ratio(row["entropy_eager_us"], row["entropy_dynamic_us"]),
                    f"{row['entropy_static_compile_s']:.1f}",
                    f"{row['entropy_dynamic_compile_s']:.1f}" if row["entropy_dynamic_graphs"] else "-",
                    f"{row['entropy_static_diff']:.1e}",
                ]
            )  # fmt: skip
        parts.append(
            _report.markdown_table(
                [
                    "B",
                    "K",
                    "D",
                    "eager",
                    "reference",
                    "static",
                    "speed-up",
                    "dynamic",
                    "speed-up",
                    "compile s static",
                    "compile s dynamic",
                    "max diff",
                ],
                rows,
            )  # fmt: skip
        )
        parts.append("### log_prob, forward + backward, microseconds per call")
        rows = []
        for row in kernels:
            rows.append(
                [
                    row["B"], row["K"], row["D"], _us(row["log_prob_eager_us"]), _us(row["log_prob_static_us"]),
                    _ratio(row["log_prob_eager_us"], row["log_prob_static_us"]), _us(row["log_prob_dynamic_us"]),
                    _ratio(row["log_prob_eager_us"], row["log_prob_dynamic_us"]),
                    f"{row['log_prob_static_compile_s']:.1f}",
                    f"{row['log_prob_dynamic_compile_s']:.1f}" if row["log_prob_dynamic_graphs"] else "-",
                ]
            )  # fmt: skip
        parts.append(
            _report.markdown_table(
                [
                    "B",
                    "K",
                    "D",
                    "eager",
                    "static",
                    "speed-up",
                    "dynamic",
                    "speed-up",
                    "compile s static",
                    "compile s dynamic",
                ],
                rows,
            )  # fmt: skip
        )
    modes = results.get("modes")
    if modes:
        parts.append("### Compile modes (entropy, forward + backward, `dynamic=False`): microseconds, compile seconds")
        rows = []
        for row in modes:
            cells = [row["B"], row["K"], row["D"], _us(row["eager_us"])]
            for mode in ("default", "reduce-overhead", "max-autotune-no-cudagraphs"):
                cells += [_us(row[f"{mode}_us"]), f"{row[f'{mode}_compile_s']:.1f}"]
            rows.append(cells)
        parts.append(
            _report.markdown_table(
                [
                    "B",
                    "K",
                    "D",
                    "eager",
                    "default",
                    "compile s",
                    "reduce-overhead",
                    "compile s",
                    "max-autotune-no-cudagraphs",
                    "compile s",
                ],
                rows,
            )  # fmt: skip
        )
    overhead = results.get("overhead")
    if overhead:
        parts.append(
            "### Per-call overhead of a compiled function (one multiply, [64, 4]), microseconds\n\n"
            + _report.markdown_table(
                ["", "eager", "compiled", "overhead"],
                [
                    [
                        "no grad (guards + call)",
                        f"{overhead['eager_no_grad']:.1f}",
                        f"{overhead['compiled_no_grad']:.1f}",
                        f"{overhead['compiled_no_grad'] - overhead['eager_no_grad']:.1f}",
                    ],
                    [
                        "forward + backward",
                        f"{overhead['eager_grad']:.1f}",
                        f"{overhead['compiled_grad']:.1f}",
                        f"{overhead['compiled_grad'] - overhead['eager_grad']:.1f}",
                    ],
                ],
            )  # fmt: skip
        )
    recompiles = results.get("recompiles")
    if recompiles:
        sequence = ", ".join(str(batch) for batch in PPO_BATCH_SEQUENCE)
        parts.append(
            f"### Recompiles over PPO's batch sizes ({sequence}; entropy, K = 4, D = 1)\n\n"
            "`dynamic=None` is torch's default (static first, then a dynamic graph when a shape changes). B = 64 "
            "is the time per call afterwards."
        )
        rows = []
        for row in recompiles:
            seconds = ", ".join(f"{value:.1f}" for value in row["first_call_s"]) or "-"
            rows.append([row["dynamic"], row["graphs"], f"{row['compile_s']:.1f}", seconds, _us(row["B64_us"])])
        parts.append(
            _report.markdown_table(
                ["dynamic", "graphs compiled", "compile s total", "first call s per batch size", "B = 64 us"], rows
            )
        )
    ppo = results.get("ppo_step")
    if ppo:
        parts.append(
            "### One PPO minibatch step (B = 64, Pendulum, D = 1): evaluate_actions, loss, backward, clip, Adam; "
            "microseconds\n\n`math compiled`: mixture_entropy and mixture_log_prob replaced (in this process) by the "
            "compiled reference entropy and compiled log_prob, the rest eager. `evaluate_actions compiled`: "
            "`torch.compile` of the policy's evaluate_actions (networks and distribution). `loss compiled`: "
            "`torch.compile` of the whole PPO loss (evaluate_actions included); backward, clipping and Adam stay "
            "eager. `branch-free`: the library's data-dependent Python branches replaced for the run (the autograd "
            "reference for the fused entropy, soft_clamp without its CPU fast path, the finiteness check off), so "
            "that dynamo captures one graph. Graphs: compiled during the first 10 steps. Ratio: MlpPolicy eager "
            "over the row (above 1: faster than SB3's eager MlpPolicy)."
        )
        for row in ppo:
            labels = sorted({key.split("|")[0] for key in row if key.endswith("|us")}, key=_label_order)
            table = []
            baseline = row.get("MlpPolicy|eager|us")
            for label in labels:
                for variant in VARIANT_ORDER:
                    value = row.get(f"{label}|{variant}|us")
                    if value is None:
                        continue
                    compile_s = row.get(f"{label}|{variant}|compile_s")
                    graphs = row.get(f"{label}|{variant}|graphs")
                    table.append(
                        [label, variant, _us(value), f"{baseline / value:.2f}" if baseline else "-",
                         "-" if compile_s is None else f"{compile_s:.1f}", "-" if graphs is None else graphs]
                    )  # fmt: skip
            parts.append(
                f"ent_coef = {row['ent_coef']:g}:\n\n"
                + _report.markdown_table(
                    ["policy", "variant", "us", "MlpPolicy / this", "compile s", f"graphs ({WARM_STEPS} steps)"], table
                )
            )
    processes = results.get("processes")
    if processes:
        parts.append(
            f"### Fresh processes: first call of the compiled entropy (B, K, D = {CHILD_CASE}), seconds\n\n"
            "`first call` is the compile plus one forward + backward; `process` includes importing torch."
        )
        rows = [
            [row["run"], row["status"], _report.fmt(row.get("first_call_s")), _report.fmt(row.get("process_s"))]
            for row in processes
        ]
        parts.append(_report.markdown_table(["run", "outcome", "first call s", "process s"], rows))
    return "\n\n".join(parts)


def _label_order(label: str) -> Tuple[int, int]:
    if label == "MlpPolicy":
        return (0, 0)
    return (1, int(label.split("K=")[1]))


# --------------------------------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="one kernel case, K = 4 only in the PPO step")
    parser.add_argument("--repeats", type=int, default=15, help="timing rounds (medians are reported)")
    parser.add_argument("--pause-cmd", default=None, help="shell command run before each timing block")
    parser.add_argument("--resume-cmd", default=None, help="shell command run after each timing block")
    parser.add_argument("--json", type=Path, default=None, help="store the raw results here")
    parser.add_argument("--from-json", type=Path, default=None, help="render stored results instead of measuring")
    parser.add_argument(
        "--write", action="store_true", help=f"write the tables into {PAGE.relative_to(_report.REPO_ROOT)}"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--suppress-errors", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        if args.child:
            child_main(args.suppress_errors)
            return
        if args.from_json:
            results = json.loads(args.from_json.read_text())
        else:
            results = measure(args, list(sys.argv[1:] if argv is None else argv))
            if args.json:
                _report.write_json(args.json, results)
        body = render(results)
        print(body)
        if args.write:
            _report.write_generated(PAGE, SCRIPT, body, "torch.compile on the CPU")
    finally:
        if _PRIVATE_CACHE:
            shutil.rmtree(_PRIVATE_CACHE, ignore_errors=True)


def measure(args: argparse.Namespace, argv: List[str]) -> Dict[str, Any]:
    record = _report.run_record("benchmarks.compile_probe", argv)
    start = time.perf_counter()

    def quiet() -> Any:
        return quiet_machine(args.pause_cmd, args.resume_cmd)

    results: Dict[str, Any] = {"record": record}
    runners: Dict[str, Callable[[], Any]] = {
        "kernels": lambda: run_kernels(QUICK_KERNEL_CASES if args.quick else KERNEL_CASES, args.repeats, quiet),
        "modes": lambda: run_modes(MODE_CASES[:1] if args.quick else MODE_CASES, args.repeats, quiet),
        "overhead": lambda: run_overhead(args.repeats, quiet),
        "recompiles": lambda: run_recompiles(args.repeats, quiet),
        "ppo_step": lambda: run_ppo_step((4,) if args.quick else PPO_STEP_COMPONENTS, args.repeats, quiet),
        "processes": run_processes,
    }
    for section in SECTIONS:
        if section not in args.sections:
            continue
        results[section] = runners[section]()
        if args.json:  # after every section, so that a later failure keeps the finished ones
            _report.write_json(args.json, {**results, "minutes": (time.perf_counter() - start) / 60.0})
    results["minutes"] = (time.perf_counter() - start) / 60.0
    return results


if __name__ == "__main__":
    main()
