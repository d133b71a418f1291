"""Peak memory and time of the default entropy estimate at large batches, with the kernel's chunking off and on.

Each case runs in a fresh subprocess: it builds the inputs (a policy head's outputs: logits ``[B, K]``, means and
log stds ``[B, K, D]`` requiring gradients, float32), resets the kernel's memory high-water mark, and makes one
``gmm_entropy`` call (the forward alone, or the forward and ``autograd.grad`` of its sum: what one PPO step does).

Peak memory is the process's peak resident set size during that call minus its resident set size just before it,
so the inputs do not count and what the call leaves allocated (the gradients) does. The peak is read from the
kernel's ``VmHWM`` after resetting it with ``/proc/self/clear_refs`` just before the call: unlike the lifetime
``ru_maxrss`` of ``getrusage``, it cannot be set by something earlier in the process (building the inputs, imports).
Where ``clear_refs`` cannot be written the script falls back to ``ru_maxrss`` and says so. Large blocks go back to
the system on free, so the resident set follows the tensors alive at each moment; small ones may stay in the heap,
so a chunked call's figure also includes some allocator slack. torch's own allocator statistics
(``torch.cuda.max_memory_allocated``) exist only for CUDA; the resident set is what a CPU user runs out of.

"off" is ``quadrature.CHUNK_BYTES = math.inf`` (the one-pass kernel, the behaviour before chunking); "on" is the
library's default budget. Both run the torch path (``sb3_gmm.native.disabled()``): chunking is what a machine without
a C compiler, or with more than ``KERNEL_MAX_THREADS_LARGE_BATCH`` torch threads, gets. A third process per size
measures the compiled kernel, which serves such batches otherwise (one call's peak and time, not side by side).

Times: after the measured call, the "on" process times chunking on and off ALTERNATELY for the case's rounds
(medians, and the median of the rounds' ratios), so the two are compared side by side under the same machine load.
The small-batch check does the same for the PPO minibatch (B = 64, K = 4, D = 1) over many rounds: at that size both
take the one-pass path and only the budget test differs.

Usage::

    python -m benchmarks.memory --write             # docs/memory.md (~5 min on 2 cores; needs ~8 GB free memory)
    python -m benchmarks.memory --quick             # small sizes only, prints the tables
"""

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import torch as th  # noqa: E402

from benchmarks import _report  # noqa: E402
from sb3_gmm import native  # noqa: E402
from sb3_gmm.entropy import gmm_entropy, quadrature  # noqa: E402
from sb3_gmm.entropy._common import mixture_params  # noqa: E402

SCRIPT = "benchmarks/memory.py"
PAGE = _report.DOCS / "memory.md"
MIB = 2**20
# (B, K, D, backward, rounds): the headline case first (forward alone and with the backward), then other
# mixture and batch sizes (a 32k minibatch, a 4096-environment simulator's rollout). ``rounds`` of alternating
# on / off timing follow the memory measurement (0: only the measured call's time).
CASES: Tuple[Tuple[int, int, int, bool, int], ...] = (
    (100_000, 8, 6, False, 0),
    (100_000, 8, 6, True, 1),
    (100_000, 4, 1, True, 3),
    (32_768, 8, 6, True, 2),
    (4_096, 8, 6, True, 5),
)
QUICK_CASES: Tuple[Tuple[int, int, int, bool, int], ...] = (
    (4_096, 8, 6, False, 0),
    (4_096, 8, 6, True, 2),
    (4_096, 4, 1, True, 2),
)
# Budgets (MiB) of the sweep, forward + backward at SWEEP_SIZE, each timed against chunking off in SWEEP_ROUNDS.
SWEEP_MIB: Tuple[float, ...] = (1, 4, 16, 64)
SWEEP_SIZE = (16_384, 8, 6)
SWEEP_ROUNDS = 1
TARGET_BYTES = 1.5e9
# glibc's malloc keeps memory freed below its mmap threshold for reuse, and raises that threshold (up to 32 MiB) to
# the size of freed large blocks, so the torch paths' chunk-sized temporaries end up in a heap that fragments and is
# not given back: the process's resident memory grows over the chunks of one call. A fixed, low threshold makes every
# large block its own mapping, returned when freed: the "on" call again with it shows what the chunks hold alive.
MMAP_ENVIRONMENT = {"MALLOC_MMAP_THRESHOLD_": "65536"}
SMALL_BATCH = (64, 4, 1)


# ---------------------------------------------------------------------------------------------------------------------
# One case, in a fresh subprocess.


def _rss_bytes(field: str) -> Optional[int]:
    """``VmRSS`` / ``VmHWM`` of this process from /proc, in bytes (None where /proc is missing)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _inputs(batch: int, n_components: int, dim: int) -> List[th.Tensor]:
    generator = th.Generator().manual_seed(0)
    logits = th.randn(batch, n_components, generator=generator)
    means = 2.0 * th.randn(batch, n_components, dim, generator=generator)
    log_stds = th.empty(batch, n_components, dim).uniform_(-2.0, 0.5, generator=generator)
    return [tensor.requires_grad_(True) for tensor in (logits, means, log_stds)]


def _call(inputs: Sequence[th.Tensor], backward: bool) -> None:
    logits, means, log_stds = inputs
    entropy = gmm_entropy(logits, means, log_stds.exp())
    if backward:
        th.autograd.grad(entropy.sum(), inputs)


def alternate_times(
    inputs: Sequence[th.Tensor], backward: bool, budget: float, rounds: int, calls: int
) -> Dict[str, float]:
    """Seconds per call with ``budget`` ("on") and chunking off, alternately in this process: medians over rounds
    and the median of the rounds' on / off ratios."""
    settings = {"on": budget, "off": math.inf}
    samples: Dict[str, List[float]] = {name: [] for name in settings}
    for round_index in range(rounds):
        # Alternate which goes first, so a drift within a round favours neither.
        order = list(settings.items())[:: 1 if round_index % 2 == 0 else -1]
        for name, value in order:
            quadrature.CHUNK_BYTES = value
            start = time.perf_counter()
            for _ in range(calls):
                _call(inputs, backward)
            samples[name].append((time.perf_counter() - start) / calls)
    quadrature.CHUNK_BYTES = budget
    return {
        "on_seconds": statistics.median(samples["on"]),
        "off_seconds": statistics.median(samples["off"]),
        "ratio": statistics.median(on / off for on, off in zip(samples["on"], samples["off"])),
        "rounds": rounds,
    }


def run_case(
    batch: int, n_components: int, dim: int, budget: float, backward: bool, rounds: int, compiled: bool = False
) -> Dict[str, Any]:
    """Peak memory (bytes) and time of one call with ``budget``, then ``rounds`` of :func:`alternate_times` (run
    inside the subprocess); the torch path unless ``compiled`` (then the compiled kernel, which must be available)."""
    if compiled:
        if native.library(th.float32) is None:
            raise RuntimeError(f"the compiled kernel is not available: {native.build_error(th.float32)}")
        return _run_case(batch, n_components, dim, budget, backward, rounds)
    with native.disabled():
        return _run_case(batch, n_components, dim, budget, backward, rounds)


def _run_case(batch: int, n_components: int, dim: int, budget: float, backward: bool, rounds: int) -> Dict[str, Any]:
    quadrature.CHUNK_BYTES = budget
    inputs = _inputs(batch, n_components, dim)
    with th.no_grad():
        _call(_inputs(2, n_components, dim), backward=False)  # first-call costs (point set, caches) off the record
    precise = _reset_peak()
    before = _rss_bytes("VmRSS") if precise else None
    if before is None:
        precise = False
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    _call(inputs, backward)
    seconds = time.perf_counter() - start
    peak = _rss_bytes("VmHWM") if precise else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {
        "peak_bytes": peak - before,
        "seconds": seconds,
        "method": "VmHWM after clear_refs" if precise else "ru_maxrss",
    }
    if rounds:
        result["timing"] = alternate_times(inputs, backward, budget, rounds, calls=1)
    return result


def measure(
    batch: int,
    n_components: int,
    dim: int,
    budget: float,
    backward: bool,
    rounds: int,
    compiled: bool = False,
    environment: Optional[Dict[str, str]] = None,
) -> Dict[str, Any]:
    """:func:`run_case` in a fresh Python process (so earlier cases leave nothing behind), with ``environment``
    added to its environment."""
    spec = {"batch": batch, "n_components": n_components, "dim": dim, "budget": budget, "backward": backward}
    spec.update(rounds=rounds, compiled=compiled)
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", "--child", json.dumps(_report.json_safe(spec))],
        cwd=_report.REPO_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(environment or {})},
    )
    if completed.returncode != 0:
        raise RuntimeError(f"case {spec} failed:\n{completed.stderr[-2000:]}")
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    timing = result.get("timing")
    times = f", on {timing['on_seconds']:.3f} s vs off {timing['off_seconds']:.3f} s" if timing else ""
    print(
        f"  B={batch} K={n_components} D={dim} budget={_budget_label(budget)}{' compiled' if compiled else ''}"
        f"{' ' + str(environment) if environment else ''} "
        f"{'fwd+bwd' if backward else 'fwd'}: {result['peak_bytes'] / 1e6:.0f} MB, {result['seconds']:.3f} s{times}",
        flush=True,
    )
    return {**spec, **result}


# ---------------------------------------------------------------------------------------------------------------------
# The small-batch check, in this process.


def small_batch_times(rounds: int, calls: int) -> Dict[str, float]:
    """Microseconds per forward+backward at B = 64, K = 4, D = 1, chunking on and off alternately."""
    inputs = _inputs(*SMALL_BATCH)
    default = quadrature.CHUNK_BYTES
    alternate_times(inputs, True, default, rounds=2, calls=50)  # warm-up
    timing = alternate_times(inputs, True, default, rounds, calls)
    # What chunking adds to a call that is not chunked: the budget test (besides two Python calls).
    logits, means, log_stds = (tensor.detach() for tensor in inputs)
    params = mixture_params(logits, means, log_stds.exp())
    points, _, features = quadrature._qmc_rule(SMALL_BATCH[1], SMALL_BATCH[2], 64, 0, th.float32, th.device("cpu"))
    decision_calls = 100_000
    start = time.perf_counter()
    for _ in range(decision_calls):
        quadrature._plan(params, points, features)
    decision_us = (time.perf_counter() - start) / decision_calls * 1e6
    return {
        "on_us": timing["on_seconds"] * 1e6,
        "off_us": timing["off_seconds"] * 1e6,
        "ratio": timing["ratio"],
        "decision_us": decision_us,
        "rounds": rounds,
        "calls": calls,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Report.


def _budget_label(budget: float) -> str:
    return "off" if math.isinf(budget) else f"{budget / MIB:g} MiB"


def _mb(value: float) -> str:
    return f"{value / 1e6:,.0f}"


def _times(case: Dict[str, Any]) -> List[str]:
    """Seconds off, on and their ratio: side by side where the case had rounds, else each process's one call."""
    timing = case["on"].get("timing")
    if timing:
        return [_report.fmt(timing["off_seconds"]), _report.fmt(timing["on_seconds"]), f"{timing['ratio']:.2f}"]
    return [f"({_report.fmt(case['off']['seconds'])})", f"({_report.fmt(case['on']['seconds'])})", "-"]


def render(record: Dict[str, Any], results: Dict[str, Any], minutes: float) -> str:
    default = results["default_budget"]
    rows = []
    intermediates = []  # one-pass peak in units of one [B, K, K, n] tensor
    for case in results["sizes"]:
        n_points = _n_points(case["n_components"], case["dim"])
        intermediate = case["batch"] * case["n_components"] ** 2 * n_points * 4
        if case["backward"]:
            intermediates.append(case["off"]["peak_bytes"] / intermediate)
        rows.append(
            [
                f"{case['batch']:,}",
                case["n_components"],
                case["dim"],
                "fwd + bwd" if case["backward"] else "fwd",
                _mb(intermediate),
                _mb(case["off"]["peak_bytes"]),
                _mb(case["on"]["peak_bytes"]),
                _mb(case["on_mmap"]["peak_bytes"]) if "on_mmap" in case else "-",
                *_times(case),
                case["on"].get("timing", {}).get("rounds", "-"),
                _mb(case["compiled"]["peak_bytes"]) if "compiled" in case else "-",
                f"({_report.fmt(case['compiled']['seconds'])})" if "compiled" in case else "-",
            ]
        )
    sizes_table = _report.markdown_table(
        ["B", "K", "D", "call", "one [B, K, K, n], MB", "peak MB, off", "peak MB, on", "peak MB, on, mmap 64 KiB",
         "seconds, off", "seconds, on", "on / off", "rounds", "peak MB, compiled", "seconds, compiled"],
        rows,
    )  # fmt: skip
    sweep_rows = [
        [
            _budget_label(case["budget"]),
            _mb(case["peak_bytes"]),
            _report.fmt(case["timing"]["on_seconds"]),
            f"{case['timing']['ratio']:.2f}",
        ]
        for case in results["sweep"]
    ]
    sweep_table = _report.markdown_table(["CHUNK_BYTES", "peak MB", "seconds", "on / off"], sweep_rows)
    small = results["small_batch"]
    small_table = _report.markdown_table(
        ["chunking", "microseconds per forward + backward"],
        [["on (default budget)", f"{small['on_us']:.0f}"], ["off (math.inf)", f"{small['off_us']:.0f}"]],
    )
    verdict = ""
    for case in results["sizes"]:
        if (case["batch"], case["n_components"], case["dim"], case["backward"]) == (100_000, 8, 6, True):
            peaks = {name: case[name]["peak_bytes"] for name in ("compiled", "on", "on_mmap") if name in case}
            verdict = (
                f"\n\nTarget (issue 12): one default forward + backward at B = 100k, K = 8, D = 6 within "
                f"{TARGET_BYTES / 1e9:.1f} GB. "
                + "; ".join(
                    f"{label}: {peaks[name] / 1e9:.2f} GB, {'met' if peaks[name] <= TARGET_BYTES else 'NOT met'}"
                    for name, label in (
                        ("compiled", "compiled kernel (the default on this CPU)"),
                        ("on", "torch path, chunked"),
                        ("on_mmap", "torch path, chunked, glibc mmap threshold 64 KiB"),
                    )
                    if name in peaks
                )
                + f" ({case['off']['peak_bytes'] / 1e9:.2f} GB without chunking)."
            )
    b, k, d = results["sweep_size"]
    return f"""
Default estimator (`qmc`, 64 points per component; in 1-D the union rule on the sinh nodes of 36 per component),
float32. "off" is `CHUNK_BYTES = math.inf` (the kernel before chunking), "on" the default budget of
{default / MIB:g} MiB. Peak MB is the rise of the process's resident memory during one call, each in a fresh process,
over its level just before (so the inputs do not count; the gradients the call returns do), read as
{results["method"]}. Seconds per call: on and off alternately in one process, medians over the rounds shown, and
the median of the rounds' on / off ratios; in parentheses where the case had no rounds, the measured call's own
time (each in its own process, so not side by side). "off" and "on" are the torch path; "compiled" is the compiled
kernel (`sb3_gmm.native`), which takes these batches on a CPU where torch runs at most
{quadrature.KERNEL_MAX_THREADS_LARGE_BATCH} threads: one call in its own process, its time in parentheses.
"mmap 64 KiB": the "on" call again with `MALLOC_MMAP_THRESHOLD_=65536` (glibc returns every freed block above
64 KiB to the system at once instead of keeping it in a heap that fragments over the chunks), what the chunks hold
alive.

{sizes_table}{verdict}

Without chunking a forward + backward peaks at {min(intermediates):.1f} to {max(intermediates):.1f} times one
`[B, K, K, n]` tensor (`4 B K^2 n` bytes in float32).

The budget, forward + backward at B = {b:,}, K = {k}, D = {d} (seconds: {results["sweep_rounds"]} round(s) against
chunking off, as above):

{sweep_table}

The PPO minibatch (B = {SMALL_BATCH[0]}, K = {SMALL_BATCH[1]}, D = {SMALL_BATCH[2]}), forward + backward, chunking on
and off alternately in one process, median over {small["rounds"]} rounds of {small["calls"]} calls (median ratio
on / off {small["ratio"]:.3f}):

{small_table}

At this size both take the one-pass path; what chunking adds to it is the budget test, {small["decision_us"]:.1f}
microseconds per call (timed alone).

{_report.provenance(record, minutes)}
"""


def _n_points(n_components: int, dim: int) -> int:
    """Points per component of the default rule (in 1-D fewer than 64: negligible Gauss-Hermite nodes are dropped)."""
    return quadrature._qmc_rule(n_components, dim, 64, 0, th.float32, th.device("cpu"))[0].shape[-2]


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="rewrite the generated block of docs/memory.md")
    parser.add_argument("--quick", action="store_true", help="small sizes only (a smoke test)")
    parser.add_argument("--rounds", type=int, default=101, help="alternating rounds of the small-batch timing")
    parser.add_argument("--calls", type=int, default=40, help="calls per round of the small-batch timing")
    parser.add_argument("--page", type=Path, default=PAGE, help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        spec["budget"] = _report.as_float(spec["budget"])
        print(json.dumps(_report.json_safe(run_case(**spec))))
        return
    record = _report.run_record("benchmarks.memory", sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    default = quadrature.CHUNK_BYTES
    cases = QUICK_CASES if args.quick else CASES
    results: Dict[str, Any] = {"default_budget": default, "quick": args.quick, "sweep_rounds": SWEEP_ROUNDS}
    print("sizes, chunking off and on:", flush=True)
    results["sizes"] = [
        {
            "batch": batch,
            "n_components": n_components,
            "dim": dim,
            "backward": backward,
            "off": measure(batch, n_components, dim, math.inf, backward, 0),
            "on": measure(batch, n_components, dim, default, backward, rounds),
            "on_mmap": measure(batch, n_components, dim, default, backward, 0, environment=MMAP_ENVIRONMENT),
            "compiled": measure(batch, n_components, dim, default, backward, 0, compiled=True),
        }
        for batch, n_components, dim, backward, rounds in cases
    ]
    results["method"] = results["sizes"][0]["on"]["method"]
    results["sweep_size"] = QUICK_CASES[0][:3] if args.quick else SWEEP_SIZE
    print("budget sweep:", flush=True)
    sweep_budgets = (1.0 * MIB, 16.0 * MIB) if args.quick else tuple(value * MIB for value in SWEEP_MIB)
    results["sweep"] = [measure(*results["sweep_size"], budget, True, SWEEP_ROUNDS) for budget in sweep_budgets]
    print("small batch:", flush=True)
    with native.disabled():  # the torch path's budget test, as the sizes above (the kernel skips chunking)
        results["small_batch"] = small_batch_times(args.rounds, args.calls)
    body = render(record, results, (time.perf_counter() - started) / 60.0)
    print(body)
    if args.write:
        _report.write_generated(args.page, SCRIPT, body, "Memory at large batches")
        print(f"wrote {args.page}")


if __name__ == "__main__":
    main()
