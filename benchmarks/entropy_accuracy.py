"""Accuracy, gradient quality and cost of every GMM entropy estimator in ``sb3_gmm.entropy``.

Full run (writes docs/entropy_accuracy.md, docs/entropy_accuracy.json and docs/figures/entropy_*.png)::

    OMP_NUM_THREADS=1 python -m benchmarks.entropy_accuracy

Smoke run (a few cases per (D, K), fewer samples and repeats; writes to /tmp/sb3_gmm_entropy_quick)::

    OMP_NUM_THREADS=1 python -m benchmarks.entropy_accuracy --quick

Every estimator (and a few option variants) is compared on the suite of :mod:`benchmarks._suite` against a
high-sample Monte Carlo truth: absolute error of the value, cosine of the gradient w.r.t. (logits, means, log stds),
and the forward+backward time relative to the mixture log_prob of the same batch (measured alternately in one loop).
"""

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch as th

if __package__ in (None, ""):
    # Allow `python benchmarks/entropy_accuracy.py` as well as `python -m benchmarks.entropy_accuracy`.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._report import git_commit as report_git_commit  # noqa: E402
from benchmarks._suite import (  # noqa: E402
    COMPONENTS,
    DIMS,
    FULL_KINDS,
    MAX_STD_RATIO,
    ONE_HOT_LOGIT_GAP,
    QUICK_KINDS,
    GroundTruth,
    MixtureCase,
    cosine,
    ground_truth,
    make_suite,
    mixing_part,
    timing_batch,
    value_and_gradient,
)
from sb3_gmm.entropy import DEFAULT_METHOD, ESTIMATORS, gmm_entropy, mixture_log_prob  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
FULL_COMMAND = "OMP_NUM_THREADS=1 python -m benchmarks.entropy_accuracy"
MACHINE = "2-core CPU, torch {} CPU, single thread (torch.set_num_threads(1))"

# The bar for the library default (from the issue).
BAR_MAX_ERROR = 0.1
BAR_MEAN_ERROR = 0.02
BAR_MIN_COSINE = 0.98
BAR_TIME_RATIO = 3.0

# Option variants shown besides each method's defaults; methods not listed run with their defaults only.
OPTION_VARIANTS: Dict[str, List[Dict[str, Any]]] = {
    "taylor": [{"order": 2}, {"order": 4}, {"order": 8}],
    "legendre": [{"order": 4}, {"order": 6}, {"order": 8}, {"order": 12}],
    "huber_taylor": [{"order": 0}, {"order": 2}, {"order": 4}],
    "qmc": [
        {"n_points": 16},
        {"n_points": 32},
        {"n_points": 64},
        {"n_points": 256},
        {"integrand": "log_responsibility"},
    ],
    "sigma_points": [{"degree": 3}, {"degree": 5}, {"integrand": "log_responsibility"}],
    "monte_carlo": [{"n_samples": 64}],
}
FAMILIES: Dict[str, str] = {
    "component_average": "closed-form brackets",
    "huber_upper": "closed-form brackets",
    "moment_matched": "closed-form brackets",
    "huber_lower": "closed-form brackets",
    "pairwise_kl": "pairwise (Kolchinsky & Tracey)",
    "pairwise_bhattacharyya": "pairwise (Kolchinsky & Tracey)",
    "pairwise_chernoff": "pairwise (Kolchinsky & Tracey)",
    "taylor": "moment series (Dahlke & Pacheco)",
    "taylor_limit": "moment series (Dahlke & Pacheco)",
    "legendre": "moment series (Dahlke & Pacheco)",
    "huber_taylor": "sigma points and local expansions",
    "sigma_points": "sigma points and local expansions",
    "qmc": "(quasi-)Monte Carlo",
    "monte_carlo": "(quasi-)Monte Carlo",
}
# One forward+backward slower than this is not timed further (reported as refused: too slow).
MAX_CALL_SECONDS = 5.0
# Calls slower than this get fewer repeats (about TIME_BUDGET_SECONDS per timing cell, never below 3).
SLOW_CALL_SECONDS = 0.2
TIME_BUDGET_SECONDS = 4.0
# Slack for the bound check: float32 round-off of the estimate plus the truth's own noise.
BOUND_SLACK_NATS = 1e-3
BOUND_SLACK_STANDARD_ERRORS = 4.0
# Mixing-gradient cosines are only scored where the truth's own mixing gradient is reproducible.
MIN_MIXING_SEED_COSINE = 0.95
ERROR_FLOOR = 1e-6


@dataclass(frozen=True)
class Variant:
    """One estimator configuration: a registered method with fixed options."""

    method: str
    options: Tuple[Tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        if not self.options:
            return self.method
        return f"{self.method}({', '.join(f'{k}={v}' for k, v in self.options)})"

    @property
    def option_dict(self) -> Dict[str, Any]:
        return dict(self.options)

    @property
    def uses_defaults(self) -> bool:
        defaults = {name: option.default for name, option in ESTIMATORS[self.method].options.items()}
        return all(defaults.get(name) == value for name, value in self.options)

    def entropy_fn(self) -> Callable[[th.Tensor, th.Tensor, th.Tensor], th.Tensor]:
        options = self.option_dict

        def evaluate(logits: th.Tensor, means: th.Tensor, stds: th.Tensor) -> th.Tensor:
            return gmm_entropy(logits, means, stds, method=self.method, validate_args=False, **options)

        return evaluate


@dataclass
class CaseResult:
    """One variant on one case; ``refused`` holds the reason when the method declined the case."""

    value: float = math.nan
    error: float = math.nan
    signed_error: float = math.nan
    gradient_cosine: float = math.nan
    mixing_cosine: float = math.nan
    bound_violation: bool = False
    refused: Optional[str] = None


@dataclass
class Timing:
    """Forward+backward timing of one variant on one batch, side by side with the mixture log_prob."""

    batch_size: int
    n_components: int
    dim: int
    estimator_ms: float = math.nan
    log_prob_ms: float = math.nan
    ratio: float = math.nan
    repeats: int = 0
    refused: Optional[str] = None


@dataclass
class VariantReport:
    variant: Variant
    cases: Dict[str, CaseResult] = field(default_factory=dict)
    timings: List[Timing] = field(default_factory=list)


def build_variants(methods: Optional[Sequence[str]] = None) -> List[Variant]:
    """Every registered method with its defaults plus :data:`OPTION_VARIANTS`, optionally restricted.

    :param methods: method names or variant labels to keep (None keeps all)
    """
    variants = []
    for method in ESTIMATORS:
        for options in OPTION_VARIANTS.get(method, [{}]):
            try:
                ESTIMATORS[method].resolve_options(options)
            except ValueError as error:
                # The library changed under this list: skip the variant rather than report it as refusing everything.
                print(f"skipping variant {method}{options}: {error}", flush=True)
                continue
            variants.append(Variant(method, tuple(sorted(options.items()))))
    if methods:
        unknown = [name for name in methods if name not in ESTIMATORS and name not in {v.label for v in variants}]
        if unknown:
            raise ValueError(f"--methods got unknown name(s) {unknown}; choose from {sorted(ESTIMATORS)}")
        variants = [v for v in variants if v.method in methods or v.label in methods]
    return variants


# ----------------------------------------------------------------------------------------------------------------------
# Ground truth


def compute_truths(
    cases: Sequence[MixtureCase], samples_per_component: int, seed: int, cache: Optional[Path]
) -> Dict[str, GroundTruth]:
    """Monte Carlo truth for every case, reusing a cache file written by an identical earlier configuration."""
    key = {"cases": [c.name for c in cases], "samples": samples_per_component, "seed": seed}
    if cache is not None and cache.exists():
        stored = th.load(cache, weights_only=False)
        if stored.get("key") == key:
            print(f"truth: loaded {len(cases)} cases from {cache}", flush=True)
            return {name: GroundTruth(**fields) for name, fields in stored["truths"].items()}
        print(f"truth: cache {cache} was made for another configuration; recomputing", flush=True)
    truths: Dict[str, GroundTruth] = {}
    start = time.perf_counter()
    for index, case in enumerate(cases):
        truths[case.name] = ground_truth(case, samples_per_component=samples_per_component, n_replicates=2, seed=seed)
        if index == len(cases) - 1 or cases[index + 1].dim != case.dim:
            print(
                f"truth: D={case.dim} done ({index + 1}/{len(cases)} cases, {time.perf_counter() - start:.0f} s)",
                flush=True,
            )
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        th.save({"key": key, "truths": {name: vars(truth) for name, truth in truths.items()}}, cache)
    return truths


# ----------------------------------------------------------------------------------------------------------------------
# Accuracy


def evaluate_case(variant: Variant, case: MixtureCase, truth: GroundTruth, dtype: th.dtype) -> CaseResult:
    """Value error, gradient cosines and bound check of one variant on one case."""
    try:
        value, gradient = value_and_gradient(variant.entropy_fn(), case, dtype)
    except ValueError as error:
        return CaseResult(refused=str(error).split(";")[0])
    result = CaseResult(value=value)
    if not math.isfinite(value) or not bool(th.isfinite(gradient).all()):
        result.error = math.inf
        result.gradient_cosine = -1.0
        return result
    result.signed_error = value - truth.entropy
    result.error = abs(result.signed_error)
    result.gradient_cosine = cosine(gradient, truth.gradient)
    if truth.mixing_seed_cosine >= MIN_MIXING_SEED_COSINE:
        k, d = case.n_components, case.dim
        result.mixing_cosine = cosine(mixing_part(gradient, k, d), mixing_part(truth.gradient, k, d))
    slack = BOUND_SLACK_NATS + BOUND_SLACK_STANDARD_ERRORS * truth.standard_error
    bound = ESTIMATORS[variant.method].bound
    if bound == "lower":
        result.bound_violation = value > truth.entropy + slack
    elif bound == "upper":
        result.bound_violation = value < truth.entropy - slack
    return result


# ----------------------------------------------------------------------------------------------------------------------
# Timing


def _forward_backward(
    compute: Callable[[th.Tensor], th.Tensor], leaves: Tuple[th.Tensor, th.Tensor, th.Tensor]
) -> Callable[[], float]:
    """A closure that runs forward+backward once (from log stds, as a policy would) and returns its seconds."""

    def run() -> float:
        start = time.perf_counter()
        output = compute(leaves[2].exp()).sum()
        th.autograd.grad(output, leaves, allow_unused=True)
        return time.perf_counter() - start

    return run


def time_variant(variant: Variant, n_components: int, dim: int, batch_size: int, repeats: int, seed: int) -> Timing:
    """Median forward+backward time of the estimator and of the mixture log_prob, alternated in one loop.

    The ratio is the median over repeats of (estimator time / log_prob time) of the same repeat, so slow drifts of
    the shared machine cancel.
    """
    timing = Timing(batch_size=batch_size, n_components=n_components, dim=dim)
    logits, means, log_stds, actions = timing_batch(dim, n_components, batch_size, seed)
    leaves = (logits.requires_grad_(True), means.requires_grad_(True), log_stds.requires_grad_(True))
    entropy_fn = variant.entropy_fn()
    estimator = _forward_backward(lambda stds: entropy_fn(leaves[0], leaves[1], stds), leaves)
    log_prob = _forward_backward(
        lambda stds: mixture_log_prob(actions, th.log_softmax(leaves[0], dim=-1), leaves[1], stds), leaves
    )
    try:
        with th.no_grad():
            # Build the method's cached constants (point sets, count vectors) outside the timed calls.
            entropy_fn(leaves[0][:1], leaves[1][:1], leaves[2][:1].exp())
        first = estimator()
    except (ValueError, RuntimeError) as error:
        timing.refused = str(error).split(";")[0]
        return timing
    if first > MAX_CALL_SECONDS:
        timing.refused = f"too slow: {first:.1f} s per forward+backward"
        return timing
    estimator()
    log_prob()
    log_prob()
    if first > SLOW_CALL_SECONDS:
        repeats = max(3, min(repeats, int(TIME_BUDGET_SECONDS / first)))
    estimator_times, log_prob_times, ratios = [], [], []
    for repeat in range(repeats):
        # Alternate which one runs first so neither always follows the other's cache state.
        if repeat % 2 == 0:
            estimator_seconds, log_prob_seconds = estimator(), log_prob()
        else:
            log_prob_seconds, estimator_seconds = log_prob(), estimator()
        estimator_times.append(estimator_seconds)
        log_prob_times.append(log_prob_seconds)
        ratios.append(estimator_seconds / log_prob_seconds)
    timing.estimator_ms = 1e3 * statistics.median(estimator_times)
    timing.log_prob_ms = 1e3 * statistics.median(log_prob_times)
    timing.ratio = statistics.median(ratios)
    timing.repeats = repeats
    return timing


# ----------------------------------------------------------------------------------------------------------------------
# Summaries


def _finite(values: Sequence[float]) -> List[float]:
    return [v for v in values if not math.isnan(v)]


def find_timing(report: VariantReport, batch_size: int, n_components: int, dim: int) -> Optional[Timing]:
    for timing in report.timings:
        if (timing.batch_size, timing.n_components, timing.dim) == (batch_size, n_components, dim):
            return timing
    return None


def summarise(
    report: VariantReport,
    cases: Sequence[MixtureCase],
    headline: Tuple[int, int],
    grid_batch_size: int,
    large_batch_size: int,
) -> Dict[str, Any]:
    """Headline numbers of one variant over the suite (refused cases are excluded from the error statistics)."""
    results = [report.cases[c.name] for c in cases]
    evaluated = [r for r in results if r.refused is None]
    errors = [r.error for r in evaluated]
    cosines = [r.gradient_cosine for r in evaluated]
    mixing = _finite([r.mixing_cosine for r in evaluated])
    per_dim: Dict[int, float] = {}
    per_dim_refused: Dict[int, int] = {}
    for case, result in zip(cases, results):
        per_dim_refused[case.dim] = per_dim_refused.get(case.dim, 0) + (result.refused is not None)
        if result.refused is None:
            per_dim[case.dim] = max(per_dim.get(case.dim, 0.0), result.error)
    per_kind: Dict[str, float] = {}
    for case, result in zip(cases, results):
        if result.refused is None:
            per_kind[case.kind] = max(per_kind.get(case.kind, 0.0), result.error)
    worst_case = max(zip(cases, results), key=lambda pair: -1.0 if pair[1].refused else pair[1].error)[0].name
    evaluated_pairs = [(c, r) for c, r in zip(cases, results) if r.refused is None]
    worst_gradient_case = min(evaluated_pairs, key=lambda p: p[1].gradient_cosine)[0].name if evaluated_pairs else None
    k, d = headline
    small = find_timing(report, grid_batch_size, k, d)
    large = find_timing(report, large_batch_size, k, d)
    grid = [t for t in report.timings if t.batch_size == grid_batch_size]
    timed = [t for t in grid if t.refused is None]
    worst_timing = max(timed, key=lambda t: t.ratio) if timed else None
    info = ESTIMATORS[report.variant.method]
    summary: Dict[str, Any] = {
        "label": report.variant.label,
        "method": report.variant.method,
        "options": report.variant.option_dict,
        "family": FAMILIES.get(report.variant.method, "other"),
        "bound": info.bound,
        "deterministic": info.deterministic,
        "is_library_default": report.variant.method == DEFAULT_METHOD and report.variant.uses_defaults,
        "n_cases": len(results),
        "n_refused": len(results) - len(evaluated),
        "refusal_examples": sorted({r.refused for r in results if r.refused})[:3],
        "max_abs_error": max(errors) if errors else math.nan,
        "mean_abs_error": float(np.mean(errors)) if errors else math.nan,
        "mean_signed_error": float(np.mean([r.signed_error for r in evaluated])) if errors else math.nan,
        "worst_case": worst_case if errors else None,
        "min_gradient_cosine": min(cosines) if cosines else math.nan,
        "worst_gradient_case": worst_gradient_case,
        "median_gradient_cosine": statistics.median(cosines) if cosines else math.nan,
        "min_mixing_cosine": min(mixing) if mixing else math.nan,
        "median_mixing_cosine": statistics.median(mixing) if mixing else math.nan,
        "bound_violations": sum(r.bound_violation for r in evaluated),
        "max_abs_error_per_dim": {str(dim): err for dim, err in sorted(per_dim.items())},
        "refused_per_dim": {str(dim): n for dim, n in sorted(per_dim_refused.items())},
        "max_abs_error_per_kind": per_kind,
        "time_ratio_headline_small_batch": small.ratio if small and small.refused is None else math.nan,
        "time_ratio_headline_large_batch": large.ratio if large and large.refused is None else math.nan,
        "estimator_ms_headline_small_batch": small.estimator_ms if small else math.nan,
        "estimator_ms_headline_large_batch": large.estimator_ms if large else math.nan,
        "worst_time_ratio_small_batch": worst_timing.ratio if worst_timing else math.nan,
        "worst_time_ratio_at": f"K={worst_timing.n_components} D={worst_timing.dim}" if worst_timing else None,
        "timing_refused_cells": len(grid) - len(timed),
    }
    summary["meets_bar"] = bool(
        summary["n_refused"] == 0
        and summary["max_abs_error"] <= BAR_MAX_ERROR
        and summary["mean_abs_error"] <= BAR_MEAN_ERROR
        and summary["min_gradient_cosine"] >= BAR_MIN_COSINE
        and summary["time_ratio_headline_small_batch"] <= BAR_TIME_RATIO
    )
    summary["meets_accuracy_bar"] = bool(
        summary["n_refused"] == 0
        and summary["max_abs_error"] <= BAR_MAX_ERROR
        and summary["mean_abs_error"] <= BAR_MEAN_ERROR
        and summary["min_gradient_cosine"] >= BAR_MIN_COSINE
    )
    return summary


def truth_summary(cases: Sequence[MixtureCase], truths: Dict[str, GroundTruth]) -> Dict[str, Any]:
    errors = [truths[c.name].standard_error for c in cases]
    seed_cosines = [truths[c.name].gradient_seed_cosine for c in cases]
    mixing = _finite([truths[c.name].mixing_seed_cosine for c in cases])
    worst = max(cases, key=lambda c: truths[c.name].standard_error)
    least = min(cases, key=lambda c: truths[c.name].gradient_seed_cosine)
    return {
        "samples_per_component": truths[cases[0].name].samples_per_component,
        "max_standard_error": max(errors),
        "max_standard_error_case": worst.name,
        "median_standard_error": statistics.median(errors),
        "min_gradient_seed_cosine": min(seed_cosines),
        "min_gradient_seed_cosine_case": least.name,
        "median_gradient_seed_cosine": statistics.median(seed_cosines),
        "min_mixing_seed_cosine": min(mixing) if mixing else math.nan,
        "n_mixing_scored_cases": sum(m >= MIN_MIXING_SEED_COSINE for m in mixing),
    }


# ----------------------------------------------------------------------------------------------------------------------
# Output: JSON, Markdown, figures


def _json_safe(value: Any) -> Any:
    """Replace nan / inf (not valid JSON) by None / "inf" recursively; round floats to 7 significant digits."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return float(f"{value:.7g}")
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _fmt(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf"
    if value == 0:
        return "0"
    return f"{value:.{digits}g}"


def _fmt_cos(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4f}"


def plot_error_vs_dim(summaries: List[Dict[str, Any]], dims: Sequence[int], truth: Dict[str, Any], path: Path) -> None:
    """Max abs error per D, one panel per family (hollow markers: some cases at that D were refused)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(s["family"] for s in summaries))
    n_columns = 2 if len(families) > 1 else 1
    n_rows = math.ceil(len(families) / n_columns)
    figure, axes = plt.subplots(n_rows, n_columns, figsize=(7 * n_columns, 4.6 * n_rows), squeeze=False, sharey=True)
    markers = "osD^v<>ph*"
    for panel, family in zip(axes.flat, families):
        members = [s for s in summaries if s["family"] == family]
        for index, summary in enumerate(members):
            xs, ys, refused = [], [], []
            for dim in dims:
                value = summary["max_abs_error_per_dim"].get(str(dim))
                if value is None:
                    continue
                xs.append(dim)
                ys.append(max(value, ERROR_FLOOR) if math.isfinite(value) else 1e3)
                refused.append(summary["refused_per_dim"].get(str(dim), 0) > 0)
            line = panel.plot(xs, ys, marker=markers[index % len(markers)], label=summary["label"], linewidth=1.5)[0]
            for x, y, partial in zip(xs, ys, refused):
                if partial:
                    panel.plot(
                        [x],
                        [y],
                        marker=markers[index % len(markers)],
                        markersize=9,
                        markerfacecolor="white",
                        color=line.get_color(),
                    )
        panel.axhline(BAR_MAX_ERROR, color="black", linestyle="--", linewidth=1)
        panel.axhline(truth["max_standard_error"], color="grey", linestyle=":", linewidth=1)
        panel.set_xscale("log")
        panel.set_yscale("log")
        panel.set_xticks(list(dims))
        panel.set_xticklabels([str(d) for d in dims])
        panel.minorticks_off()
        panel.set_title(family)
        panel.set_xlabel("action dimension D")
        panel.set_ylabel("max |error| over K and cases (nats)")
        panel.grid(True, which="major", alpha=0.3)
        panel.set_ylim(top=max(panel.get_ylim()[1], 1e4))  # headroom so the legend never hides a line
        panel.legend(fontsize=8, loc="upper left", ncol=2)
    for panel in list(axes.flat)[len(families) :]:
        panel.axis("off")
    figure.suptitle(
        f"Entropy error vs dimension (dashed: {BAR_MAX_ERROR} nat bar; dotted: max truth SE; "
        "hollow: some cases refused)",
        fontsize=11,
    )
    figure.tight_layout(rect=(0, 0, 1, 0.98))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _place_labels(figure: Any, axis: Any, points: List[Tuple[float, float, str, str]], colours: Dict[str, str]) -> None:
    """Label each point at the first candidate offset whose text box overlaps no earlier label or marker."""
    renderer = figure.canvas.get_renderer()
    marker_boxes = []
    for x, y, _, _ in points:
        centre = axis.transData.transform((x, y))
        marker_boxes.append((centre[0] - 5, centre[1] - 5, centre[0] + 5, centre[1] + 5))
    candidates = [
        (6, -3, "left"),
        (6, 7, "left"),
        (6, -13, "left"),
        (-6, -3, "right"),
        (-6, 7, "right"),
        (-6, -13, "right"),
        (6, 17, "left"),
        (6, -23, "left"),
        (-6, 17, "right"),
        (-6, -23, "right"),
        (6, 27, "left"),
        (6, -33, "left"),
    ]
    placed: List[Tuple[float, float, float, float]] = []

    def overlap(box: Tuple[float, float, float, float], other: Tuple[float, float, float, float]) -> float:
        width = min(box[2], other[2]) - max(box[0], other[0])
        height = min(box[3], other[3]) - max(box[1], other[1])
        return max(width, 0.0) * max(height, 0.0)

    for x, y, label, family in sorted(points, key=lambda p: (-p[1], p[0])):
        best = None
        for dx, dy, align in candidates:
            annotation = axis.annotate(
                label,
                (x, y),
                textcoords="offset points",
                xytext=(dx, dy),
                fontsize=7.5,
                color=colours[family],
                ha=align,
                va="bottom",
            )
            extent = annotation.get_window_extent(renderer)
            box = (extent.x0, extent.y0, extent.x1, extent.y1)
            own = axis.transData.transform((x, y))
            others = [m for m in marker_boxes if abs(m[0] + 5 - own[0]) > 0.5 or abs(m[1] + 5 - own[1]) > 0.5]
            clash = sum(overlap(box, other) for other in placed + others)
            if best is None or clash < best[0]:
                if best is not None:
                    best[1].remove()
                best = (clash, annotation, box)
            else:
                annotation.remove()
            if clash == 0:
                break
        placed.append(best[2])


def plot_pareto(summaries: List[Dict[str, Any]], headline: Tuple[int, int], batch_size: int, path: Path) -> None:
    """Mean abs error vs time ratio at the headline (K, D), log-log, labelled; shaded: the default bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = list(dict.fromkeys(s["family"] for s in summaries))
    colours = dict(zip(families, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    figure, axis = plt.subplots(figsize=(10, 7))
    points = []
    for summary in summaries:
        x, y = summary["time_ratio_headline_small_batch"], summary["mean_abs_error"]
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        y = max(y, ERROR_FLOOR)
        partial = summary["n_refused"] > 0
        axis.scatter(
            [x],
            [y],
            s=45,
            color="white" if partial else colours[summary["family"]],
            edgecolors=colours[summary["family"]],
            linewidths=1.5,
            zorder=3,
        )
        points.append((x, y, summary["label"], summary["family"]))
    axis.set_xscale("log")
    axis.set_yscale("log")
    x_low = min([p[0] for p in points] + [BAR_TIME_RATIO]) / 1.5
    x_high = max([p[0] for p in points] + [BAR_TIME_RATIO]) * 4.0
    y_low = min([p[1] for p in points] + [BAR_MEAN_ERROR]) / 2
    y_high = max([p[1] for p in points] + [BAR_MEAN_ERROR]) * 2.5
    axis.set_xlim(x_low, x_high)
    axis.set_ylim(y_low, y_high)
    axis.fill_between([x_low, BAR_TIME_RATIO], y_low, BAR_MEAN_ERROR, color="green", alpha=0.08, zorder=0)
    axis.axvline(BAR_TIME_RATIO, color="green", linestyle="--", linewidth=1)
    axis.axhline(BAR_MEAN_ERROR, color="green", linestyle="--", linewidth=1)
    _place_labels(figure, axis, points, colours)
    for family in families:
        axis.scatter([], [], color=colours[family], label=family)
    axis.scatter([], [], color="white", edgecolors="black", label="hollow: refuses some cases (mean over the rest)")
    axis.legend(fontsize=8, loc="lower right")
    axis.set_xlabel(f"forward+backward time / mixture log_prob time (B={batch_size}, K={headline[0]}, D={headline[1]})")
    axis.set_ylabel("mean |error| over the suite (nats)")
    axis.set_title("Error vs cost (shaded: mean error and time parts of the default bar)")
    axis.grid(True, which="major", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_markdown(
    path: Path,
    summaries: List[Dict[str, Any]],
    reports: List[VariantReport],
    cases: Sequence[MixtureCase],
    truth: Dict[str, Any],
    config: Dict[str, Any],
    figures: Dict[str, str],
) -> None:
    k_head, d_head = config["headline"]
    small, large = config["grid_batch_size"], config["large_batch_size"]
    dims = sorted({c.dim for c in cases})
    kinds = list(dict.fromkeys(c.kind for c in cases))
    lines = [
        "# Accuracy and cost of the GMM entropy estimators",
        "",
        f"Reproduce (this run took {config['runtime_seconds'] / 60:.0f} min on 2 shared cores; it rewrites this file, "
        "the JSON and the figures):",
        "",
        "```bash",
        config["command"],
        "```",
        "",
        f"Numbers below are from `{config['invocation']}`, script `benchmarks/entropy_accuracy.py`, "
        f"on {config['machine']}, {config['date']}, commit `{config['git_commit']}`. "
        f"Machine-readable: [`entropy_accuracy.json`](entropy_accuracy.json). Library default at the time: "
        f"`{DEFAULT_METHOD}`.",
        "",
    ]
    if config["restricted"]:
        lines += ["**This is a restricted or quick run, not the full suite: do not read it as the reference.**", ""]
    lines += [
        "## The suite",
        "",
        f"{len(cases)} diagonal GMMs (`benchmarks/_suite.py`, `make_suite(seed={config['seed']})`), deterministic "
        f"from the seed: D in {dims}, K in {sorted({c.n_components for c in cases})}. Each case draws a typical std "
        "s0 log-uniform in [0.3, 1], per-(component, dimension) stds s0 * exp(0.3 N(0,1)), logits N(0,1), and "
        "means = centre + separation * s0 * N(0, I). Kinds per (D, K > 1):",
        "",
        "- `sep0`, `sep0.5`, `sep2`, `sep8`: mean offsets with separation 0 (coincident), 0.5, 2, 8 typical stds;",
        f"- `concentric`: identical means, widths log-spaced from 1x to {MAX_STD_RATIO:g}x (random order, 10% "
        "per-dimension jitter);",
        f"- `one_hot`: `sep2` geometry with one logit {ONE_HOT_LOGIT_GAP:g} above all others (weight ~0.99);",
        "- `one_hot_concentric`: `concentric` geometry with one dominant component;",
        "- K = 1: one `single` Gaussian per D (every exact-for-one-Gaussian method must give 0 error).",
        "",
        f"Kinds in this run: {', '.join(f'`{k}`' for k in kinds)}. To reuse the suite and the truth from the "
        "repository root: `from benchmarks._suite import make_suite, ground_truth`.",
        "",
        "## The ground truth",
        "",
        "Stratified Monte Carlo per component with the Gaussian control variate, in float64: "
        "H = sum_i w_i [H_i - E_{N_i}[logsumexp_j(log w_j + log N_j(x)) - log N_i(x)]], x = mu_i + s_i eps "
        "(`benchmarks._suite.ground_truth`, written independently of `sb3_gmm.entropy`). "
        f"Two independent replicates of {truth['samples_per_component'] // 2:,} samples per component each "
        f"({truth['samples_per_component']:,} per component in total); the truth is their mean. "
        "The truth gradient w.r.t. (logits, means, log stds) is autograd on the same estimate with the samples fixed.",
        "",
        f"- Standard error of the truth: max {_fmt(truth['max_standard_error'])} nats "
        f"(`{truth['max_standard_error_case']}`), median {_fmt(truth['median_standard_error'])} nats.",
        f"- Gradient noise: cosine between the two replicates' gradients, min {truth['min_gradient_seed_cosine']:.6f} "
        f"(`{truth['min_gradient_seed_cosine_case']}`), median {truth['median_gradient_seed_cosine']:.6f}; "
        f"restricted to the mixing part [d/dlogits, d/dmeans]: min {_fmt_cos(truth['min_mixing_seed_cosine'])}.",
        "",
        "## How the estimators were scored",
        "",
        f"- Every method of `sb3_gmm.entropy.ESTIMATORS` with default options, plus option variants; inputs in "
        f"{config['dtype']} (what a policy uses), `validate_args=False`.",
        "- abs err: |estimate - truth| in nats, max and mean over the cases the method accepts. "
        "Refused: the method raised ValueError by design (series term-count or memory guard).",
        "- grad cos: cosine between the estimator's gradient [d/dlogits, d/dmeans, d/dlog_stds] and the truth's. "
        "The log-std block dominates that vector (about w_i per dimension), so `mix cos` also gives the cosine on "
        "the [d/dlogits, d/dmeans] part alone: the part that moves and reweights components. It is scored on the "
        f"{truth['n_mixing_scored_cases']} cases where the truth's own mixing gradient is reproducible "
        f"(replicate cosine >= {MIN_MIXING_SEED_COSINE}).",
        f"- time ratio: median over >= 20 alternating repeats of (estimator forward+backward) / (mixture log_prob "
        f"forward+backward) on the same batch: B states of one representative GMM per (K, D) (the `sep2` case) "
        f"with small perturbations, one action per state, gradients w.r.t. logits, means and log stds, "
        f"`torch.set_num_threads(1)`. Headline at K={k_head}, D={d_head}; `worst` is the maximum over the "
        f"(K, D) grid at B={small}.",
        "- bound viol.: cases where a registered lower (upper) bound came out above (below) the truth by more than "
        f"{BOUND_SLACK_NATS:g} nats + {BOUND_SLACK_STANDARD_ERRORS:g} truth SE.",
        f"- **bar** for the library default: no refusals, max abs err <= {BAR_MAX_ERROR} and mean <= "
        f"{BAR_MEAN_ERROR} nats, grad cos >= {BAR_MIN_COSINE} on every case, time ratio <= {BAR_TIME_RATIO:g} at "
        f"B={small}, K={k_head}, D={d_head}. `acc` marks methods that pass everything but the time part.",
        "",
        "## Main table",
        "",
        f"| method / variant | bound | max abs err | mean abs err | mean signed err | min grad cos | median grad cos "
        f"| min mix cos | ratio B={small} | ratio B={large} | worst ratio B={small} (at) | refused | bound viol. "
        "| bar |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        label = f"**{s['label']}**" if s["is_library_default"] else s["label"]
        bar = "**yes**" if s["meets_bar"] else ("acc" if s["meets_accuracy_bar"] else "no")
        worst = "-"
        if s["worst_time_ratio_at"]:
            worst = f"{_fmt(s['worst_time_ratio_small_batch'])} ({s['worst_time_ratio_at']})"
        if s["timing_refused_cells"]:
            worst += f", {s['timing_refused_cells']} cells refused"
        lines.append(
            f"| {label} | {s['bound'] or '-'} | {_fmt(s['max_abs_error'])} | {_fmt(s['mean_abs_error'])} "
            f"| {_fmt(s['mean_signed_error'])} | {_fmt_cos(s['min_gradient_cosine'])} "
            f"| {_fmt_cos(s['median_gradient_cosine'])} | {_fmt_cos(s['min_mixing_cosine'])} "
            f"| {_fmt(s['time_ratio_headline_small_batch'])} | {_fmt(s['time_ratio_headline_large_batch'])} "
            f"| {worst} | {s['n_refused']}/{s['n_cases']} | {s['bound_violations']} | {bar} |"
        )
    passing = [s["label"] for s in summaries if s["meets_bar"]]
    accurate = [s["label"] for s in summaries if s["meets_accuracy_bar"] and not s["meets_bar"]]
    lines += [
        "",
        f"Meets the whole bar: {', '.join(f'`{p}`' for p in passing) or 'none'}. "
        f"Accurate enough but slower than {BAR_TIME_RATIO:g}x log_prob: "
        f"{', '.join(f'`{p}`' for p in accurate) or 'none'}.",
        "",
        "Worst case per variant (largest abs err): "
        + "; ".join(f"`{s['label']}`: {s['worst_case']}" for s in summaries if s["worst_case"])
        + ".",
        "",
        "Worst case per variant (smallest grad cos): "
        + "; ".join(f"`{s['label']}`: {s['worst_gradient_case']}" for s in summaries if s["worst_gradient_case"])
        + ".",
        "",
        f"Absolute forward+backward times at K={k_head}, D={d_head} (median ms; each log_prob column is the yardstick "
        "measured alternately with that row's estimator):",
        "",
        f"| method / variant | estimator B={small} | log_prob B={small} | estimator B={large} | log_prob B={large} |",
        "|---|---|---|---|---|",
    ]
    for report in reports:
        cells = []
        for batch_size in (small, large):
            timing = find_timing(report, batch_size, k_head, d_head)
            if timing is None or timing.refused:
                cells += ["refused" if timing is not None else "-", "-"]
            else:
                cells += [f"{timing.estimator_ms:.3g}", f"{timing.log_prob_ms:.3g}"]
        lines.append(f"| {report.variant.label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"![error vs dimension]({figures['error_vs_dim']})",
        "",
        f"![error vs cost]({figures['pareto']})",
        "",
        "## Max abs error per dimension (nats, max over K and cases; `(r n)`: n cases at that D refused)",
        "",
        "| method / variant | " + " | ".join(f"D={d}" for d in dims) + " |",
        "|---|" + "---|" * len(dims),
    ]
    for s in summaries:
        cells = []
        for dim in dims:
            value = s["max_abs_error_per_dim"].get(str(dim))
            refused = s["refused_per_dim"].get(str(dim), 0)
            cell = _fmt(value) if value is not None else "refused"
            if refused and value is not None:
                cell += f" (r {refused})"
            cells.append(cell)
        lines.append(f"| {s['label']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Max abs error per case kind (nats, max over D and K)",
        "",
        "| method / variant | " + " | ".join(f"`{k}`" for k in kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    for s in summaries:
        lines.append(
            f"| {s['label']} | " + " | ".join(_fmt(s["max_abs_error_per_kind"].get(k, math.nan)) for k in kinds) + " |"
        )
    grid_components = sorted({t.n_components for r in reports for t in r.timings if t.batch_size == small})
    grid_dims = sorted({t.dim for r in reports for t in r.timings if t.batch_size == small})
    lines += [
        "",
        f"## Time ratio over (K, D) at B={small} (estimator / mixture log_prob, forward+backward)",
        "",
        "`refused`: the method raised ValueError (term-count or memory guard) or one call took more than "
        f"{MAX_CALL_SECONDS:g} s. Calls slower than {SLOW_CALL_SECONDS} s were repeated fewer times "
        f"(about {TIME_BUDGET_SECONDS:g} s per cell, at least 3).",
        "",
    ]
    for n_components in grid_components:
        lines += [
            f"### K = {n_components}",
            "",
            "| method / variant | " + " | ".join(f"D={d}" for d in grid_dims) + " |",
            "|---|" + "---|" * len(grid_dims),
        ]
        log_prob_cells = []
        for dim in grid_dims:
            times = [
                t.log_prob_ms
                for r in reports
                for t in r.timings
                if (t.batch_size, t.n_components, t.dim) == (small, n_components, dim) and t.refused is None
            ]
            log_prob_cells.append(f"{statistics.median(times):.3f} ms" if times else "-")
        lines.append("| *log_prob itself* | " + " | ".join(log_prob_cells) + " |")
        for report in reports:
            cells = []
            for dim in grid_dims:
                timing = find_timing(report, small, n_components, dim)
                cells.append("-" if timing is None else ("refused" if timing.refused else _fmt(timing.ratio)))
            lines.append(f"| {report.variant.label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "## Notes",
        "",
        "- `monte_carlo` draws fresh noise on every call (seed None), so its row is one noisy draw per case.",
        "- Errors below about twice the truth SE cannot be resolved; exact methods (K = 1) show 0 or round-off.",
        "- Series methods refuse large (K, order) by design (the count of moment terms grows as C(N+K, K)); "
        "that is why they cannot be the default however accurate they are at small K.",
        "",
    ]
    path.write_text("\n".join(lines))


# ----------------------------------------------------------------------------------------------------------------------
# Main


def _int_list(text: str) -> List[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: few cases, fewer samples and repeats")
    parser.add_argument(
        "--methods",
        type=lambda s: [p.strip() for p in s.split(",") if p.strip()],
        default=None,
        help="comma-separated method names or variant labels (default: all)",
    )
    parser.add_argument("--dims", type=_int_list, default=list(DIMS), help="comma-separated D values")
    parser.add_argument("--components", type=_int_list, default=list(COMPONENTS), help="comma-separated K values")
    parser.add_argument("--seed", type=int, default=0, help="suite seed")
    parser.add_argument("--truth-seed", type=int, default=12345, help="seed of the Monte Carlo truth")
    parser.add_argument(
        "--truth-samples", type=int, default=None, help="samples per component per replicate (default 2^16, quick 2^13)"
    )
    parser.add_argument("--truth-cache", type=Path, default=None, help="reuse / store the truth in this .pt file")
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats (default 21, quick 5)")
    parser.add_argument("--no-timing-grid", action="store_true", help="time only the headline (K, D)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="estimator input dtype")
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="where the .md/.json go (default docs/, quick: /tmp/sb3_gmm_entropy_quick)",
    )
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    th.set_num_threads(1)
    output_dir = args.output_dir or (Path("/tmp/sb3_gmm_entropy_quick") if args.quick else REPO_ROOT / "docs")
    figure_dir = output_dir / "figures"
    figure_dir.mkdir(parents=True, exist_ok=True)
    truth_samples = args.truth_samples or (2**13 if args.quick else 2**16)
    repeats = args.repeats or (5 if args.quick else 21)
    dtype = getattr(th, args.dtype)
    headline = (4, 6)
    grid_batch_size, large_batch_size = 64, 2048
    restricted = bool(
        args.quick
        or args.methods
        or list(args.dims) != list(DIMS)
        or list(args.components) != list(COMPONENTS)
        or args.truth_samples
        or args.no_timing_grid
        or args.dtype != "float32"
        or args.seed != 0
    )

    git_commit = report_git_commit()  # before the run: the library may change while it runs
    cases = make_suite(args.dims, args.components, seed=args.seed, quick=args.quick)
    variants = build_variants(args.methods)
    print(f"{len(cases)} cases, {len(variants)} variants, truth {truth_samples} x 2 samples per component", flush=True)
    run_start = time.perf_counter()
    truths = compute_truths(cases, truth_samples, args.truth_seed, args.truth_cache)
    truth = truth_summary(cases, truths)
    print(
        f"truth: max SE {truth['max_standard_error']:.2e}, median {truth['median_standard_error']:.2e}, "
        f"min gradient seed cosine {truth['min_gradient_seed_cosine']:.6f}",
        flush=True,
    )

    reports = [VariantReport(variant) for variant in variants]
    for report in reports:
        start = time.perf_counter()
        for case in cases:
            report.cases[case.name] = evaluate_case(report.variant, case, truths[case.name], dtype)
        errors = [r.error for r in report.cases.values() if r.refused is None]
        print(
            f"accuracy: {report.variant.label:32s} max {max(errors, default=math.nan):.3g} "
            f"mean {np.mean(errors) if errors else math.nan:.3g} "
            f"refused {sum(r.refused is not None for r in report.cases.values())} "
            f"({time.perf_counter() - start:.1f} s)",
            flush=True,
        )

    grid = [headline] if (args.quick or args.no_timing_grid) else [(k, d) for k in args.components for d in args.dims]
    if headline not in grid:
        grid.insert(0, headline)
    cells = [(grid_batch_size, k, d) for k, d in grid] + [(large_batch_size, *headline)]
    for batch_size, n_components, dim in cells:
        start = time.perf_counter()
        for report in reports:
            report.timings.append(time_variant(report.variant, n_components, dim, batch_size, repeats, args.seed))
        print(f"timing: B={batch_size} K={n_components} D={dim} done ({time.perf_counter() - start:.1f} s)", flush=True)

    summaries = [summarise(r, cases, headline, grid_batch_size, large_batch_size) for r in reports]
    invocation = "python -m benchmarks.entropy_accuracy" + (
        "" if argv is None and len(sys.argv) <= 1 else " " + " ".join(sys.argv[1:] if argv is None else argv)
    )
    config = {
        "command": FULL_COMMAND,
        "invocation": ("OMP_NUM_THREADS=1 " if os.environ.get("OMP_NUM_THREADS") == "1" else "") + invocation,
        "machine": MACHINE.format(th.__version__.split("+")[0]),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": th.__version__,
        "date": datetime.date.today().isoformat(),
        "git_commit": git_commit,
        "seed": args.seed,
        "truth_seed": args.truth_seed,
        "truth_samples_per_replicate": truth_samples,
        "truth_replicates": 2,
        "dims": list(args.dims),
        "components": list(args.components),
        "kinds": list(QUICK_KINDS if args.quick else FULL_KINDS),
        "quick": args.quick,
        "restricted": restricted,
        "dtype": args.dtype,
        "headline": list(headline),
        "grid_batch_size": grid_batch_size,
        "large_batch_size": large_batch_size,
        "timing_repeats": repeats,
        "library_default": DEFAULT_METHOD,
        "bar": {
            "max_abs_error": BAR_MAX_ERROR,
            "mean_abs_error": BAR_MEAN_ERROR,
            "min_gradient_cosine": BAR_MIN_COSINE,
            "time_ratio": BAR_TIME_RATIO,
        },
        "runtime_seconds": None,
    }
    figures = {"error_vs_dim": "figures/entropy_error_vs_dim.png", "pareto": "figures/entropy_pareto.png"}
    plot_error_vs_dim(summaries, sorted({c.dim for c in cases}), truth, output_dir / figures["error_vs_dim"])
    plot_pareto(summaries, headline, grid_batch_size, output_dir / figures["pareto"])
    config["runtime_seconds"] = round(time.perf_counter() - run_start, 1)
    write_markdown(output_dir / "entropy_accuracy.md", summaries, reports, cases, truth, config, figures)
    payload = {
        "config": config,
        "truth": truth,
        "cases": [
            {
                "name": c.name,
                "kind": c.kind,
                "dim": c.dim,
                "n_components": c.n_components,
                "separation": c.separation,
                "entropy": truths[c.name].entropy,
                "standard_error": truths[c.name].standard_error,
                "gradient_seed_cosine": truths[c.name].gradient_seed_cosine,
                "mixing_seed_cosine": truths[c.name].mixing_seed_cosine,
            }
            for c in cases
        ],
        "summaries": summaries,
        # Column-oriented: per_case[label][field][i] belongs to cases[i].
        "per_case": {
            r.variant.label: {
                name: [getattr(r.cases[c.name], name) for c in cases] for name in CaseResult.__dataclass_fields__
            }
            for r in reports
        },
        "timings": {r.variant.label: [vars(t) for t in r.timings] for r in reports},
    }
    with open(output_dir / "entropy_accuracy.json", "w") as handle:
        json.dump(_json_safe(payload), handle, indent=1)
    print(
        f"wrote {output_dir / 'entropy_accuracy.md'}, {output_dir / 'entropy_accuracy.json'} and figures "
        f"({config['runtime_seconds']:.0f} s)",
        flush=True,
    )
    for s in summaries:
        print(
            f"{s['label']:32s} max {_fmt(s['max_abs_error']):>8s} mean {_fmt(s['mean_abs_error']):>8s} "
            f"mincos {_fmt_cos(s['min_gradient_cosine'])} ratio64 {_fmt(s['time_ratio_headline_small_batch']):>6s} "
            f"refused {s['n_refused']:3d} bar {'YES' if s['meets_bar'] else '-'}"
        )
    return payload


if __name__ == "__main__":
    main()
