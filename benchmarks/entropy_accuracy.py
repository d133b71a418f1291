"""Accuracy, gradient quality and cost of every GMM entropy estimator in ``sb3_gmm.entropy``.

    OMP_NUM_THREADS=1 python -m benchmarks.entropy_accuracy           # docs/entropy_accuracy.{json,md}, figures
    OMP_NUM_THREADS=1 python -m benchmarks.entropy_accuracy --quick   # smoke run into /tmp/sb3_gmm_entropy_quick
    python -m benchmarks.entropy_accuracy --render                    # page and figures from the stored JSON

Three steps. :func:`run` scores every estimator (and a few option variants) on the suite of :mod:`benchmarks.cases`
against its Monte Carlo truth (absolute error, gradient cosines, bound check) and times its forward+backward against
the mixture log_prob of the same batch, measured alternately in one loop; the raw results go to JSON.
:func:`summarise` reduces them to one row per variant, and :func:`render` writes the page's generated block and the
figures, so a page can be rebuilt from stored results without measuring again.
"""

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch as th

from benchmarks import _report
from benchmarks._report import fmt, fmt_cos, markdown_table
from benchmarks.cases import (
    COMPONENTS,
    DIMS,
    ONE_HOT_LOGIT_GAP,
    GroundTruth,
    MixtureCase,
    cosine,
    ground_truth,
    make_suite,
    mixing_part,
    timing_batch,
    value_and_gradient,
)
from sb3_gmm.entropy import DEFAULT_METHOD, ESTIMATORS, gmm_entropy, mixture_log_prob

SCRIPT = "benchmarks/entropy_accuracy.py"
# The bar for the library default.
BAR = {"max_abs_error": 0.1, "mean_abs_error": 0.02, "min_gradient_cosine": 0.98, "time_ratio": 3.0}
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
        # The per-component rules (the default before the pooled rule), and their other integrand.
        {"rule_1d": "per_component", "rule_nd": "per_component"},
        {"rule_1d": "per_component", "rule_nd": "per_component", "integrand": "log_responsibility"},
    ],
    "sigma_points": [{"degree": 3}, {"degree": 5}, {"integrand": "log_responsibility"}],
    "monte_carlo": [{"n_samples": 64}],
}
HEADLINE = (4, 6)  # (K, D) of the headline timing
GRID_BATCH_SIZE, LARGE_BATCH_SIZE = 64, 2048
# One forward+backward slower than this is not timed further; calls slower than SLOW_CALL_SECONDS get fewer repeats
# (about TIME_BUDGET_SECONDS per timing cell, never below 3).
MAX_CALL_SECONDS, SLOW_CALL_SECONDS, TIME_BUDGET_SECONDS = 5.0, 0.2, 4.0
# Slack for the bound check: float32 round-off of the estimate plus the truth's own noise.
BOUND_SLACK_NATS, BOUND_SLACK_STANDARD_ERRORS = 1e-3, 4.0
# Mixing-gradient cosines are only scored where the truth's own mixing gradient is reproducible.
MIN_MIXING_SEED_COSINE = 0.95
ERROR_FLOOR = 1e-6
CASE_FIELDS = ("value", "error", "signed_error", "gradient_cosine", "mixing_cosine", "bound_violation", "refused")


def label_of(method: str, options: Dict[str, Any]) -> str:
    return f"{method}({', '.join(f'{k}={v}' for k, v in options.items())})" if options else method


def build_variants(methods: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Every registered method with its defaults plus :data:`OPTION_VARIANTS`, with its registry metadata.

    :param methods: method names or variant labels to keep (None keeps all)
    """
    variants = []
    for method, info in ESTIMATORS.items():
        for options in OPTION_VARIANTS.get(method, [{}]):
            options = dict(sorted(options.items()))
            try:
                resolved = info.resolve_options(options)
            except ValueError as error:  # the library changed under this list: skip rather than refuse everything
                print(f"skipping variant {method}{options}: {error}", flush=True)
                continue
            default = method == DEFAULT_METHOD and resolved == info.resolve_options({})
            variants.append(
                dict(label=label_of(method, options), method=method, options=options, is_library_default=default)
                | dict(bound=info.bound, deterministic=info.deterministic, family=info.family)
            )
    if methods:
        unknown = [name for name in methods if name not in ESTIMATORS and name not in {v["label"] for v in variants}]
        if unknown:
            raise ValueError(f"--methods got unknown name(s) {unknown}; choose from {sorted(ESTIMATORS)}")
        variants = [v for v in variants if v["method"] in methods or v["label"] in methods]
    return variants


def entropy_fn(variant: Dict[str, Any]) -> Callable[[th.Tensor, th.Tensor, th.Tensor], th.Tensor]:
    def evaluate(logits: th.Tensor, means: th.Tensor, stds: th.Tensor) -> th.Tensor:
        return gmm_entropy(logits, means, stds, method=variant["method"], validate_args=False, **variant["options"])

    return evaluate


# ----------------------------------------------------------------------------------------------------------------------
# Run


def compute_truths(
    cases: Sequence[MixtureCase], samples_per_component: int, seed: int, cache: Optional[Path]
) -> Dict[str, GroundTruth]:
    """Monte Carlo truth for every case, reusing a cache file written by an identical earlier configuration."""
    key = {"cases": [c.name for c in cases], "samples": samples_per_component, "seed": seed}
    if cache is not None and cache.exists():
        stored = th.load(cache, weights_only=False)
        if stored.get("key") == key:
            return {name: GroundTruth(**fields) for name, fields in stored["truths"].items()}
    start, truths = time.perf_counter(), {}
    for index, case in enumerate(cases):
        truths[case.name] = ground_truth(case, samples_per_component=samples_per_component, seed=seed)
        if index == len(cases) - 1 or cases[index + 1].dim != case.dim:
            print(f"truth: D={case.dim} done ({index + 1}/{len(cases)}, {time.perf_counter() - start:.0f} s)")
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        th.save({"key": key, "truths": {name: vars(truth) for name, truth in truths.items()}}, cache)
    return truths


def evaluate_case(variant: Dict[str, Any], case: MixtureCase, truth: GroundTruth, dtype: th.dtype) -> Dict[str, Any]:
    """Value error, gradient cosines and bound check of one variant on one case (``refused``: why it declined)."""
    result = dict.fromkeys(CASE_FIELDS[:-2], math.nan) | {"bound_violation": False, "refused": None}
    try:
        value, gradient = value_and_gradient(entropy_fn(variant), case, dtype)
    except ValueError as error:
        return result | {"refused": str(error).split(";")[0]}
    result["value"] = value
    if not math.isfinite(value) or not bool(th.isfinite(gradient).all()):
        return result | {"error": math.inf, "gradient_cosine": -1.0}
    result.update(signed_error=value - truth.entropy, error=abs(value - truth.entropy))
    result["gradient_cosine"] = cosine(gradient, truth.gradient)
    if truth.mixing_seed_cosine >= MIN_MIXING_SEED_COSINE:
        k, d = case.n_components, case.dim
        result["mixing_cosine"] = cosine(mixing_part(gradient, k, d), mixing_part(truth.gradient, k, d))
    slack = BOUND_SLACK_NATS + BOUND_SLACK_STANDARD_ERRORS * truth.standard_error
    if variant["bound"] == "lower":
        result["bound_violation"] = value > truth.entropy + slack
    elif variant["bound"] == "upper":
        result["bound_violation"] = value < truth.entropy - slack
    return result


def _forward_backward(compute: Callable[[th.Tensor], th.Tensor], leaves: Tuple[th.Tensor, ...]) -> Callable[[], float]:
    """A closure that runs forward+backward once (from log stds, as a policy would) and returns its seconds."""

    def run() -> float:
        start = time.perf_counter()
        th.autograd.grad(compute(leaves[2].exp()).sum(), leaves, allow_unused=True)
        return time.perf_counter() - start

    return run


def time_variant(variant: Dict[str, Any], n_components: int, dim: int, batch_size: int, repeats: int) -> Dict:
    """Median forward+backward time of the estimator and of the mixture log_prob, alternated in one loop.

    The ratio is the median over repeats of (estimator time / log_prob time) of the same repeat, so slow drifts of
    the shared machine cancel.
    """
    timing: Dict[str, Any] = dict(batch_size=batch_size, n_components=n_components, dim=dim, refused=None)
    logits, means, log_stds, actions = timing_batch(dim, n_components, batch_size)
    leaves = tuple(tensor.requires_grad_(True) for tensor in (logits, means, log_stds))
    estimate = entropy_fn(variant)
    estimator = _forward_backward(lambda stds: estimate(leaves[0], leaves[1], stds), leaves)
    log_prob = _forward_backward(
        lambda stds: mixture_log_prob(actions, leaves[0].log_softmax(-1), leaves[1], stds), leaves
    )
    try:
        with th.no_grad():  # build the method's cached constants (point sets, count vectors) outside the timed calls
            estimate(leaves[0][:1], leaves[1][:1], leaves[2][:1].exp())
        first = estimator()
    except (ValueError, RuntimeError) as error:
        return timing | {"refused": str(error).split(";")[0]}
    if first > MAX_CALL_SECONDS:
        return timing | {"refused": f"too slow: {first:.1f} s per forward+backward"}
    for warm_up in (estimator, log_prob, log_prob):
        warm_up()
    if first > SLOW_CALL_SECONDS:
        repeats = max(3, min(repeats, int(TIME_BUDGET_SECONDS / first)))
    times = []
    for repeat in range(repeats):  # alternate which runs first so neither always follows the other's cache state
        pair = (estimator(), log_prob()) if repeat % 2 == 0 else tuple(reversed((log_prob(), estimator())))
        times.append(pair)
    estimator_times, log_prob_times = zip(*times)
    return timing | dict(
        estimator_ms=1e3 * statistics.median(estimator_times),
        log_prob_ms=1e3 * statistics.median(log_prob_times),
        ratio=statistics.median(e / p for e, p in times),
        repeats=repeats,
    )


def run(args: argparse.Namespace, record: Dict[str, Any]) -> Dict[str, Any]:
    """Score and time every variant; returns the raw payload (config, cases with their truth, per-case results)."""
    start = time.perf_counter()
    cases = make_suite(args.dims, args.components, seed=args.seed, quick=args.quick)
    variants = build_variants(args.methods)
    truth_samples = args.truth_samples or (2**13 if args.quick else 2**16)
    print(f"{len(cases)} cases, {len(variants)} variants, truth {truth_samples} x 2 samples per component", flush=True)
    truths = compute_truths(cases, truth_samples, args.truth_seed, args.truth_cache)
    per_case = {}
    for variant in variants:
        results = [evaluate_case(variant, case, truths[case.name], getattr(th, args.dtype)) for case in cases]
        per_case[variant["label"]] = {name: [result[name] for result in results] for name in CASE_FIELDS}
        print(f"accuracy: {variant['label']} done ({time.perf_counter() - start:.0f} s)", flush=True)
    grid = [HEADLINE] if args.quick or args.no_timing_grid else [(k, d) for k in args.components for d in args.dims]
    cells = [(GRID_BATCH_SIZE, k, d) for k, d in dict.fromkeys([HEADLINE, *grid])] + [(LARGE_BATCH_SIZE, *HEADLINE)]
    repeats = args.repeats or (5 if args.quick else 21)
    timings = {variant["label"]: [] for variant in variants}
    for batch_size, n_components, dim in cells:
        for variant in variants:
            timings[variant["label"]].append(time_variant(variant, n_components, dim, batch_size, repeats))
        print(f"timing: B={batch_size} K={n_components} D={dim} done ({time.perf_counter() - start:.0f} s)", flush=True)
    config = record | dict(
        seed=args.seed, truth_seed=args.truth_seed, truth_samples_per_replicate=truth_samples, truth_replicates=2,
        dims=list(args.dims), components=list(args.components), kinds=sorted({c.kind for c in cases}),
        quick=args.quick, restricted=is_restricted(args), dtype=args.dtype, headline=list(HEADLINE),
        grid_batch_size=GRID_BATCH_SIZE, large_batch_size=LARGE_BATCH_SIZE, timing_repeats=repeats,
        library_default=DEFAULT_METHOD,
        one_hot_logit_gap=ONE_HOT_LOGIT_GAP, bar=BAR, runtime_seconds=round(time.perf_counter() - start, 1),
    )  # fmt: skip
    case_rows = [
        dict(name=c.name, kind=c.kind, dim=c.dim, n_components=c.n_components, separation=c.separation)
        | {key: getattr(truths[c.name], key) for key in ("entropy", "standard_error")}
        | {key: getattr(truths[c.name], key) for key in ("gradient_seed_cosine", "mixing_seed_cosine")}
        for c in cases
    ]
    # Column-oriented: per_case[label][field][i] belongs to cases[i].
    return dict(config=config, cases=case_rows, variants=variants, per_case=per_case, timings=timings)


def is_restricted(args: argparse.Namespace) -> bool:
    """Anything but the full reference configuration."""
    full = (list(args.dims), list(args.components), args.dtype, args.seed) == (
        list(DIMS),
        list(COMPONENTS),
        "float32",
        0,
    )
    return bool(args.quick or args.methods or args.truth_samples or args.no_timing_grid or not full)


# ----------------------------------------------------------------------------------------------------------------------
# Summarise


def find_timing(timings: List[Dict[str, Any]], batch_size: int, n_components: int, dim: int) -> Optional[Dict]:
    matching = [t for t in timings if (t["batch_size"], t["n_components"], t["dim"]) == (batch_size, n_components, dim)]
    return matching[0] if matching else None


def _per_group_max(cases: List[Dict], results: List[Dict], key: str) -> Dict[str, float]:
    groups: Dict[str, float] = {}
    for case, result in zip(cases, results):
        if result["refused"] is None:
            groups[str(case[key])] = max(groups.get(str(case[key]), 0.0), result["error"])
    return groups


def _timing_summary(timings: List[Dict[str, Any]], config: Dict[str, Any]) -> Dict[str, Any]:
    (k, d), small_batch = config["headline"], config["grid_batch_size"]
    small, large = (find_timing(timings, batch, k, d) for batch in (small_batch, config["large_batch_size"]))
    grid = [t for t in timings if t["batch_size"] == small_batch]
    timed = [t for t in grid if t["refused"] is None]
    worst = max(timed, key=lambda t: t["ratio"]) if timed else None
    ok = [t if t and t["refused"] is None else {} for t in (small, large)]
    return {
        "time_ratio_headline_small_batch": ok[0].get("ratio", math.nan),
        "time_ratio_headline_large_batch": ok[1].get("ratio", math.nan),
        "estimator_ms_headline_small_batch": (small or {}).get("estimator_ms", math.nan),
        "estimator_ms_headline_large_batch": (large or {}).get("estimator_ms", math.nan),
        "worst_time_ratio_small_batch": worst["ratio"] if worst else math.nan,
        "worst_time_ratio_at": f"K={worst['n_components']} D={worst['dim']}" if worst else None,
        "timing_refused_cells": len(grid) - len(timed),
    }


def summarise_variant(variant: Dict[str, Any], payload: Dict[str, Any]) -> Dict[str, Any]:
    """Headline numbers of one variant over the suite (refused cases are excluded from the error statistics)."""
    cases, columns = payload["cases"], payload["per_case"][variant["label"]]
    results = [dict(zip(columns, values)) for values in zip(*columns.values())]
    pairs = [(case, result) for case, result in zip(cases, results) if result["refused"] is None]
    errors = [result["error"] for _, result in pairs]
    cosines = [result["gradient_cosine"] for _, result in pairs]
    mixing = [result["mixing_cosine"] for _, result in pairs if not math.isnan(result["mixing_cosine"])]
    refused_per_dim: Dict[str, int] = {}
    for case, result in zip(cases, results):
        refused_per_dim[str(case["dim"])] = refused_per_dim.get(str(case["dim"]), 0) + (result["refused"] is not None)
    summary = {key: variant[key] for key in ("label", "method", "options", "family", "bound", "deterministic")}
    summary |= {
        "is_library_default": variant["is_library_default"],
        "n_cases": len(results),
        "n_refused": len(results) - len(pairs),
        "refusal_examples": sorted({r["refused"] for r in results if r["refused"]})[:3],
        "max_abs_error": max(errors, default=math.nan),
        "mean_abs_error": float(np.mean(errors)) if errors else math.nan,
        "mean_signed_error": float(np.mean([r["signed_error"] for _, r in pairs])) if errors else math.nan,
        "worst_case": max(pairs, key=lambda pair: pair[1]["error"])[0]["name"] if pairs else None,
        "min_gradient_cosine": min(cosines, default=math.nan),
        "worst_gradient_case": min(pairs, key=lambda pair: pair[1]["gradient_cosine"])[0]["name"] if pairs else None,
        "median_gradient_cosine": statistics.median(cosines) if cosines else math.nan,
        "min_mixing_cosine": min(mixing, default=math.nan),
        "median_mixing_cosine": statistics.median(mixing) if mixing else math.nan,
        "bound_violations": sum(bool(r["bound_violation"]) for _, r in pairs),
        "max_abs_error_per_dim": dict(sorted(_per_group_max(cases, results, "dim").items(), key=lambda i: int(i[0]))),
        "refused_per_dim": refused_per_dim,
        "max_abs_error_per_kind": _per_group_max(cases, results, "kind"),
    }
    summary |= _timing_summary(payload["timings"][variant["label"]], payload["config"])
    bar = payload["config"]["bar"]
    summary["meets_accuracy_bar"] = bool(
        summary["n_refused"] == 0
        and summary["max_abs_error"] <= bar["max_abs_error"]
        and summary["mean_abs_error"] <= bar["mean_abs_error"]
        and summary["min_gradient_cosine"] >= bar["min_gradient_cosine"]
    )
    summary["meets_bar"] = (
        summary["meets_accuracy_bar"] and summary["time_ratio_headline_small_batch"] <= bar["time_ratio"]
    )
    return summary


def truth_summary(payload: Dict[str, Any]) -> Dict[str, Any]:
    cases = payload["cases"]
    worst = max(cases, key=lambda c: c["standard_error"])
    least = min(cases, key=lambda c: c["gradient_seed_cosine"])
    mixing = [c["mixing_seed_cosine"] for c in cases if not math.isnan(c["mixing_seed_cosine"])]
    return {
        "samples_per_component": payload["config"]["truth_samples_per_replicate"]
        * payload["config"]["truth_replicates"],
        "max_standard_error": worst["standard_error"],
        "max_standard_error_case": worst["name"],
        "median_standard_error": statistics.median(c["standard_error"] for c in cases),
        "min_gradient_seed_cosine": least["gradient_seed_cosine"],
        "min_gradient_seed_cosine_case": least["name"],
        "median_gradient_seed_cosine": statistics.median(c["gradient_seed_cosine"] for c in cases),
        "min_mixing_seed_cosine": min(mixing, default=math.nan),
        "n_mixing_scored_cases": sum(m >= MIN_MIXING_SEED_COSINE for m in mixing),
    }


def summarise(payload: Dict[str, Any]) -> Dict[str, Any]:
    """Adds ``truth`` and ``summaries`` (one per variant) to a raw payload."""
    return payload | {
        "truth": truth_summary(payload),
        "summaries": [summarise_variant(variant, payload) for variant in payload["variants"]],
    }


def load_payload(path: Path) -> Dict[str, Any]:
    """A stored payload with its numbers back as floats (JSON keeps nan as null and inf as "inf")."""
    payload = json.loads(path.read_text())
    numeric = ("entropy", "standard_error", "gradient_seed_cosine", "mixing_seed_cosine")
    for case in payload["cases"]:
        case.update({key: _report.as_float(case[key]) for key in numeric})
    for columns in payload["per_case"].values():
        for name in CASE_FIELDS[:5]:
            columns[name] = [_report.as_float(value) for value in columns[name]]
    for timings in payload["timings"].values():
        for timing in timings:
            timing.update({key: _report.as_float(timing.get(key)) for key in ("estimator_ms", "log_prob_ms", "ratio")})
    return payload


# ----------------------------------------------------------------------------------------------------------------------
# Render


def plot_error_vs_dim(summaries: List[Dict[str, Any]], dims: Sequence[int], truth: Dict[str, Any], path: Path) -> None:
    """Max abs error per D, one panel per family (hollow markers: some cases at that D were refused)."""
    plt = _report.pyplot()
    families = list(dict.fromkeys(s["family"] for s in summaries))
    n_columns = 2 if len(families) > 1 else 1
    n_rows = math.ceil(len(families) / n_columns)
    figure, axes = plt.subplots(n_rows, n_columns, figsize=(7 * n_columns, 4.6 * n_rows), squeeze=False, sharey=True)
    markers = "osD^v<>ph*"
    for panel, family in zip(axes.flat, families):
        for index, summary in enumerate(s for s in summaries if s["family"] == family):
            dims_shown = [dim for dim in dims if summary["max_abs_error_per_dim"].get(str(dim)) is not None]
            errors = [summary["max_abs_error_per_dim"][str(dim)] for dim in dims_shown]
            ys = [max(error, ERROR_FLOOR) if math.isfinite(error) else 1e3 for error in errors]
            marker = markers[index % len(markers)]
            line = panel.plot(dims_shown, ys, marker=marker, label=summary["label"], linewidth=1.5)[0]
            for x, y in zip(dims_shown, ys):
                if summary["refused_per_dim"].get(str(x), 0) > 0:
                    panel.plot([x], [y], marker=marker, markersize=9, markerfacecolor="white", color=line.get_color())
        panel.axhline(BAR["max_abs_error"], color="black", linestyle="--", linewidth=1)
        panel.axhline(truth["max_standard_error"], color="grey", linestyle=":", linewidth=1)
        panel.set(xscale="log", yscale="log", title=family, xlabel="action dimension D")
        panel.set(xticks=list(dims), xticklabels=[str(d) for d in dims], ylabel="max |error| over K and cases (nats)")
        panel.minorticks_off()
        panel.grid(True, which="major", alpha=0.3)
        panel.set_ylim(top=max(panel.get_ylim()[1], 1e4))  # headroom so the legend never hides a line
        panel.legend(fontsize=8, loc="upper left", ncol=2)
    for panel in list(axes.flat)[len(families) :]:
        panel.axis("off")
    title = f"Entropy error vs dimension (dashed: {BAR['max_abs_error']} nat bar; dotted: max truth SE; hollow: some"
    figure.suptitle(title + " cases refused)", fontsize=11)
    figure.tight_layout(rect=(0, 0, 1, 0.98))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _place_labels(figure: Any, axis: Any, points: List[Tuple[float, float, str, str]], colours: Dict[str, str]) -> None:
    """Label each point at the first candidate offset whose text box overlaps no earlier label or marker."""
    renderer = figure.canvas.get_renderer()
    centres = [axis.transData.transform((x, y)) for x, y, _, _ in points]
    markers = [(cx - 5, cy - 5, cx + 5, cy + 5) for cx, cy in centres]
    offsets = [(dx, dy, "left" if dx > 0 else "right") for dy in (-3, 7, -13, 17, -23, 27, -33) for dx in (6, -6)]
    placed: List[Tuple[float, float, float, float]] = []

    def overlap(box: Tuple[float, ...], other: Tuple[float, ...]) -> float:
        width = min(box[2], other[2]) - max(box[0], other[0])
        return max(width, 0.0) * max(min(box[3], other[3]) - max(box[1], other[1]), 0.0)

    for x, y, label, family in sorted(points, key=lambda p: (-p[1], p[0])):
        own = axis.transData.transform((x, y))
        others = [m for m in markers if abs(m[0] + 5 - own[0]) > 0.5 or abs(m[1] + 5 - own[1]) > 0.5] + placed
        best = None
        for dx, dy, align in offsets:
            text = axis.annotate(label, (x, y), textcoords="offset points", xytext=(dx, dy), fontsize=7.5, ha=align)
            text.set(color=colours[family], va="bottom")
            extent = text.get_window_extent(renderer)
            box = (extent.x0, extent.y0, extent.x1, extent.y1)
            clash = sum(overlap(box, other) for other in others)
            if best is not None and clash >= best[0]:
                text.remove()
                continue
            if best is not None:
                best[1].remove()
            best = (clash, text, box)
            if clash == 0:
                break
        placed.append(best[2])


def plot_pareto(summaries: List[Dict[str, Any]], config: Dict[str, Any], path: Path) -> None:
    """Mean abs error vs time ratio at the headline (K, D), log-log, labelled; shaded: the default bar."""
    plt = _report.pyplot()
    families = list(dict.fromkeys(s["family"] for s in summaries))
    colours = dict(zip(families, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    figure, axis = plt.subplots(figsize=(10, 7))
    points = []
    for s in summaries:
        x, y = s["time_ratio_headline_small_batch"], s["mean_abs_error"]
        if math.isfinite(x) and math.isfinite(y):
            colour = colours[s["family"]]
            face = "white" if s["n_refused"] > 0 else colour
            axis.scatter([x], [max(y, ERROR_FLOOR)], s=45, color=face, edgecolors=colour, linewidths=1.5, zorder=3)
            points.append((x, max(y, ERROR_FLOOR), s["label"], s["family"]))
    axis.set(xscale="log", yscale="log")
    xs, ys = [p[0] for p in points] + [BAR["time_ratio"]], [p[1] for p in points] + [BAR["mean_abs_error"]]
    (x_low, x_high), (y_low, y_high) = (min(xs) / 1.5, max(xs) * 4.0), (min(ys) / 2, max(ys) * 2.5)
    axis.set(xlim=(x_low, x_high), ylim=(y_low, y_high))
    axis.fill_between([x_low, BAR["time_ratio"]], y_low, BAR["mean_abs_error"], color="green", alpha=0.08, zorder=0)
    axis.axvline(BAR["time_ratio"], color="green", linestyle="--", linewidth=1)
    axis.axhline(BAR["mean_abs_error"], color="green", linestyle="--", linewidth=1)
    _place_labels(figure, axis, points, colours)
    for family in families:
        axis.scatter([], [], color=colours[family], label=family)
    axis.scatter([], [], color="white", edgecolors="black", label="hollow: refuses some cases (mean over the rest)")
    axis.legend(fontsize=8, loc="lower right")
    (k, d), batch_size = config["headline"], config["grid_batch_size"]
    axis.set_xlabel(f"forward+backward time / mixture log_prob time (B={batch_size}, K={k}, D={d})")
    axis.set_ylabel("mean |error| over the suite (nats)")
    axis.set_title("Error vs cost (shaded: mean error and time parts of the default bar)")
    axis.grid(True, which="major", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _main_table(summaries: List[Dict[str, Any]], small: int, large: int) -> str:
    rows = []
    for s in summaries:
        worst = (
            f"{fmt(s['worst_time_ratio_small_batch'])} ({s['worst_time_ratio_at']})"
            if s["worst_time_ratio_at"]
            else "-"
        )
        worst += f", {s['timing_refused_cells']} cells refused" if s["timing_refused_cells"] else ""
        rows.append([
            f"**{s['label']}**" if s["is_library_default"] else s["label"], s["bound"] or "-",
            *(fmt(s[key]) for key in ("max_abs_error", "mean_abs_error", "mean_signed_error")),
            *(fmt_cos(s[key]) for key in ("min_gradient_cosine", "median_gradient_cosine", "min_mixing_cosine")),
            fmt(s["time_ratio_headline_small_batch"]), fmt(s["time_ratio_headline_large_batch"]), worst,
            f"{s['n_refused']}/{s['n_cases']}", s["bound_violations"],
            "**yes**" if s["meets_bar"] else ("acc" if s["meets_accuracy_bar"] else "no"),
        ])  # fmt: skip
    header = ["method / variant", "bound", "max abs err", "mean abs err", "mean signed err", "min grad cos"]
    header += ["median grad cos", "min mix cos", f"ratio B={small}", f"ratio B={large}", f"worst ratio B={small} (at)"]
    return markdown_table(header + ["refused", "bound viol.", "bar"], rows)


def _timing_tables(payload: Dict[str, Any], small: int, large: int) -> List[str]:
    """Absolute times at the headline (K, D), then the time-ratio grid, one table per K."""
    (k_head, d_head), labels = payload["config"]["headline"], [v["label"] for v in payload["variants"]]
    timings = payload["timings"]
    rows = []
    for label in labels:
        cells = []
        for batch_size in (small, large):
            timing = find_timing(timings[label], batch_size, k_head, d_head)
            ok = timing is not None and timing["refused"] is None
            cells += [f"{timing['estimator_ms']:.3g}", f"{timing['log_prob_ms']:.3g}"] if ok else [
                "refused" if timing is not None else "-", "-"]  # fmt: skip
        rows.append([label, *cells])
    header = ["method / variant", f"estimator B={small}", f"log_prob B={small}", f"estimator B={large}"]
    lines = [markdown_table(header + [f"log_prob B={large}"], rows), ""]
    grid = [t for label in labels for t in timings[label] if t["batch_size"] == small]
    grid_dims = sorted({t["dim"] for t in grid})
    for n_components in sorted({t["n_components"] for t in grid}):
        yardstick = []
        for dim in grid_dims:
            times = [
                t["log_prob_ms"]
                for t in grid
                if (t["n_components"], t["dim"]) == (n_components, dim) and t["refused"] is None
            ]
            yardstick.append(f"{statistics.median(times):.3f} ms" if times else "-")
        rows = [["*log_prob itself*", *yardstick]]
        for label in labels:
            cells = [find_timing(timings[label], small, n_components, dim) for dim in grid_dims]
            rows.append([label, *("-" if t is None else "refused" if t["refused"] else fmt(t["ratio"]) for t in cells)])
        lines += [
            f"### K = {n_components}",
            "",
            markdown_table(["method / variant", *(f"D={d}" for d in grid_dims)], rows),
            "",
        ]
    return lines


def _error_tables(summaries: List[Dict[str, Any]], dims: List[int], kinds: List[str]) -> List[str]:
    dim_rows = []
    for s in summaries:
        cells = []
        for dim in dims:
            value, refused = s["max_abs_error_per_dim"].get(str(dim)), s["refused_per_dim"].get(str(dim), 0)
            cells.append("refused" if value is None else fmt(value) + (f" (r {refused})" if refused else ""))
        dim_rows.append([s["label"], *cells])
    kind_rows = [[s["label"], *(fmt(s["max_abs_error_per_kind"].get(k, math.nan)) for k in kinds)] for s in summaries]
    return [
        "## Max abs error per dimension (nats, max over K and cases; `(r n)`: n cases at that D refused)",
        "",
        markdown_table(["method / variant", *(f"D={d}" for d in dims)], dim_rows),
        "",
        "## Max abs error per case kind (nats, max over D and K)",
        "",
        markdown_table(["method / variant", *(f"`{k}`" for k in kinds)], kind_rows),
        "",
    ]


def render_markdown(payload: Dict[str, Any], figures: Dict[str, str]) -> str:
    """The generated block of docs/entropy_accuracy.md."""
    config, truth, summaries = payload["config"], payload["truth"], payload["summaries"]
    restricted = bool(config["restricted"])
    small, large = config["grid_batch_size"], config["large_batch_size"]
    dims = sorted({c["dim"] for c in payload["cases"]})
    kinds = list(dict.fromkeys(c["kind"] for c in payload["cases"]))
    passing = [f"`{s['label']}`" for s in summaries if s["meets_bar"]]
    accurate = [f"`{s['label']}`" for s in summaries if s["meets_accuracy_bar"] and not s["meets_bar"]]
    lines = [
        _report.provenance(config, config["runtime_seconds"] / 60) + f" Library default at the time: "
        f"`{config['library_default']}`. Machine-readable: [`entropy_accuracy.json`](entropy_accuracy.json).",
        "",
        *(["**A restricted or quick run, not the full suite: do not read it as the reference.**", ""] * restricted),
        f"Suite: {len(payload['cases'])} mixtures (`make_suite(seed={config['seed']})`), D in {dims}, K in "
        f"{sorted({c['n_components'] for c in payload['cases']})}, kinds {', '.join(f'`{k}`' for k in kinds)} "
        f"(`one_hot` logit gap {config['one_hot_logit_gap']:g}); inputs in {config['dtype']}. Truth: "
        f"{truth['samples_per_component']:,} samples per component in two replicates; "
        f"standard error max {fmt(truth['max_standard_error'])} nats (`{truth['max_standard_error_case']}`), median "
        f"{fmt(truth['median_standard_error'])}; gradient cosine between the replicates min "
        f"{truth['min_gradient_seed_cosine']:.6f} (`{truth['min_gradient_seed_cosine_case']}`), median "
        f"{truth['median_gradient_seed_cosine']:.6f}, on the mixing part min {fmt_cos(truth['min_mixing_seed_cosine'])}"
        f"; `mix cos` is scored on the {truth['n_mixing_scored_cases']} cases where the replicates agree to >= "
        f"{MIN_MIXING_SEED_COSINE}.",
        "",
        "## Main table",
        "",
        _main_table(summaries, small, large),
        "",
        f"Meets the whole bar: {', '.join(passing) or 'none'}. Accurate enough but slower than "
        f"{config['bar']['time_ratio']:g}x log_prob: {', '.join(accurate) or 'none'}.",
        "",
        "Worst case per variant (largest abs err): "
        + "; ".join(f"`{s['label']}`: {s['worst_case']}" for s in summaries if s["worst_case"]) + ".",
        "",
        "Worst case per variant (smallest grad cos): "
        + "; ".join(f"`{s['label']}`: {s['worst_gradient_case']}" for s in summaries if s["worst_gradient_case"]) + ".",
        "",
        f"Absolute forward+backward times at K={config['headline'][0]}, D={config['headline'][1]} (median ms; each "
        "log_prob column is the yardstick measured alternately with that row's estimator):",
        "",
    ]  # fmt: skip
    timing_tables = _timing_tables(payload, small, large)
    lines += [
        timing_tables[0],
        "",
        f"![error vs dimension]({figures['error_vs_dim']})",
        "",
        f"![error vs cost]({figures['pareto']})",
        "",
    ]
    lines += _error_tables(summaries, dims, kinds)
    lines += [f"## Time ratio over (K, D) at B={small} (estimator / mixture log_prob, forward+backward)", ""]
    return "\n".join(lines + timing_tables[2:])


def render(payload: Dict[str, Any], output_dir: Path) -> None:
    """Write the page's generated block and the two figures from a summarised payload."""
    figures = {"error_vs_dim": "figures/entropy_error_vs_dim.png", "pareto": "figures/entropy_pareto.png"}
    (output_dir / "figures").mkdir(parents=True, exist_ok=True)
    dims = sorted({c["dim"] for c in payload["cases"]})
    plot_error_vs_dim(payload["summaries"], dims, payload["truth"], output_dir / figures["error_vs_dim"])
    plot_pareto(payload["summaries"], payload["config"], output_dir / figures["pareto"])
    body = render_markdown(payload, figures)
    _report.write_generated(
        output_dir / "entropy_accuracy.md", SCRIPT, body, "Accuracy and cost of the GMM entropy estimators"
    )


# ----------------------------------------------------------------------------------------------------------------------
# Main


def _int_list(text: str) -> List[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: few cases, fewer samples and repeats")
    parser.add_argument("--render", action="store_true", help="only re-summarise and re-render the stored JSON")
    parser.add_argument("--methods", type=lambda s: [p for p in s.split(",") if p], help="method names or labels")
    parser.add_argument("--dims", type=_int_list, default=list(DIMS), help="comma-separated D values")
    parser.add_argument("--components", type=_int_list, default=list(COMPONENTS), help="comma-separated K values")
    parser.add_argument("--seed", type=int, default=0, help="suite seed")
    parser.add_argument("--truth-seed", type=int, default=12345, help="seed of the Monte Carlo truth")
    parser.add_argument("--truth-samples", type=int, help="samples per component per replicate (2^16, quick 2^13)")
    parser.add_argument("--truth-cache", type=Path, help="reuse / store the truth in this .pt file")
    parser.add_argument("--repeats", type=int, help="timing repeats (default 21, quick 5)")
    parser.add_argument("--no-timing-grid", action="store_true", help="time only the headline (K, D)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="estimator input dtype")
    parser.add_argument(
        "--output-dir", type=Path, help="for .md/.json (default docs/, quick /tmp/sb3_gmm_entropy_quick)"
    )
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    th.set_num_threads(1)
    output_dir = args.output_dir or (Path("/tmp/sb3_gmm_entropy_quick") if args.quick else _report.DOCS)
    json_path = output_dir / "entropy_accuracy.json"
    if args.render:
        payload = load_payload(json_path)
    else:
        import sys

        payload = run(args, _report.run_record("benchmarks.entropy_accuracy", sys.argv[1:] if argv is None else argv))
    payload = summarise(payload)
    _report.write_json(json_path, payload)
    render(payload, output_dir)
    for s in payload["summaries"]:
        ratio = fmt(s["time_ratio_headline_small_batch"])
        print(f"{s['label']:44s} max {fmt(s['max_abs_error']):>8s} mean {fmt(s['mean_abs_error']):>8s} ratio {ratio}")
    print(f"wrote {json_path}, {output_dir / 'entropy_accuracy.md'} and figures")
    return payload


if __name__ == "__main__":
    main()
