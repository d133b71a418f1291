"""Training throughput of PPO with GMMActorCriticPolicy relative to PPO with SB3's MlpPolicy.

The machine this runs on is shared and its speed drifts, so the two are measured ALTERNATELY in one process:
every repeat round times ``MlpPolicy, GMM config 1, MlpPolicy, GMM config 2, ..., MlpPolicy``, and each GMM
measurement is divided by the mean of the two MlpPolicy measurements around it. The reported ratio is the median
over rounds (a ratio of 1 means no slowdown). Each measurement is one fresh PPO ``learn()`` of ``--steps`` steps on
Pendulum-v1 with the zoo's PPO settings (``sb3_gmm.hyperparams``: n_envs 4, n_steps 1024, batch 64, n_epochs 10,
no gSDE); model construction is not timed. Time spent in ``collect_rollouts`` (acting) and ``train`` (the PPO update,
where the entropy estimate is computed) is recorded separately.

Three entropy settings of the GMM side: ``ent_coef`` 0.01, ``ent_coef`` 0, and ``ent_coef`` 0 with
``entropy_in_loss=False`` (what the shipped zoo configs and the CLI use at ``ent_coef`` 0: the estimator is skipped).
A SAC section measures SAC with ``GMMSACPolicy`` (K = 4) over SAC with ``MlpPolicy`` the same way
(``benchmarks.maxent_compare.measure_throughput``). ``--before`` renders a before/after table from a run of this
script on an older commit (``git worktree add``; settings the old code refuses show as refused).

A method that raises (e.g. refuses a K) is reported as refused; one whose first measurement is slower than
``--too-slow`` times the baseline is reported as too slow and not repeated.

Usage::

    python -m benchmarks.throughput --repeats 3 --write    # the table in docs/performance.md (~15-25 min)
    python -m benchmarks.throughput --components 4 --methods default --repeats 3   # the headline number only
    python -m benchmarks.throughput --render docs/data/throughput.json --before docs/data/throughput_before.json --write
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch as th  # noqa: E402

from benchmarks import _report  # noqa: E402
from sb3_gmm.entropy import DEFAULT_METHOD, ESTIMATORS, gmm_entropy  # noqa: E402
from sb3_gmm.hyperparams import algorithm_kwargs, hyperparams  # noqa: E402

# "default" plus every registered estimator, in registration order (cheapest families first).
METHODS = ("default", *ESTIMATORS)
# The zoo's Pendulum PPO settings; the entropy coefficient and the number of components are what is varied.
PPO_SETTINGS: Dict[str, Any] = {
    key: value
    for key, value in algorithm_kwargs("ppo", "Pendulum-v1").items()
    if key not in ("ent_coef", "policy_kwargs")
}
N_ENVS = hyperparams("ppo", "Pendulum-v1")["n_envs"]
# GMM fps / MlpPolicy fps wanted with the default estimator, per K (issue 12), and for SAC-GMM K = 4 over SAC.
TARGET_RATIOS: Dict[int, float] = {1: 0.97, 4: 0.90, 8: 0.85}
SAC_TARGET_RATIO = 0.85
# The GMM side's entropy settings: name -> (ent_coef, entropy_in_loss).
ENTROPY_SETTINGS: Dict[str, Tuple[float, bool]] = {"0.01": (0.01, True), "0": (0.0, True), "0-skip": (0.0, False)}
SETTING_LABELS: Dict[str, str] = {
    "0.01": "ent_coef = 0.01",
    "0": "ent_coef = 0",
    "0-skip": "ent_coef = 0 with entropy_in_loss=False (the zoo configs' setting at ent_coef 0)",
}
WARM_UP_CALLS = 20


def timed_learn(
    policy: Any, policy_kwargs: Dict[str, Any], steps: int, seed: int, ent_coef: float = 0.0
) -> Dict[str, float]:
    """Frames per second of one fresh PPO ``learn()``, with its rollout / update split."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    env = make_vec_env("Pendulum-v1", n_envs=N_ENVS, seed=seed)
    model = PPO(policy, env, policy_kwargs=policy_kwargs, seed=seed, verbose=0, ent_coef=ent_coef, **PPO_SETTINGS)
    seconds = {"rollout": 0.0, "train": 0.0}
    original_collect, original_train = model.collect_rollouts, model.train

    def collect_rollouts(*args: Any, **kwargs: Any) -> bool:
        start = time.perf_counter()
        result = original_collect(*args, **kwargs)
        seconds["rollout"] += time.perf_counter() - start
        return result

    def train() -> None:
        start = time.perf_counter()
        original_train()
        seconds["train"] += time.perf_counter() - start

    model.collect_rollouts, model.train = collect_rollouts, train
    start = time.perf_counter()
    model.learn(total_timesteps=steps)
    total = time.perf_counter() - start
    env.close()
    return {"fps": model.num_timesteps / total, "seconds": total, **seconds}


def gmm_kwargs(n_components: int, method: str, entropy_in_loss: bool = True) -> Dict[str, Any]:
    kwargs: Dict[str, Any] = {"n_components": n_components}
    if method != "default":
        kwargs["entropy_method"] = method
    if not entropy_in_loss:
        kwargs["entropy_in_loss"] = False
    return kwargs


def config_key(n_components: int, method: str, setting: str) -> str:
    return f"K{n_components}-{method}-ent{setting}"


def measure(
    components: List[int], methods: List[str], repeats: int, steps: int, too_slow: float, settings: List[str]
) -> Tuple[Dict[str, Any], List[Dict[str, float]]]:
    """Alternating measurements; returns per-config records and the baseline measurements.

    The MlpPolicy baseline always runs with ent_coef 0: SB3 computes and back-propagates the Gaussian's closed-form
    entropy at every ent_coef, so its cost does not depend on the coefficient. A GMM's does (with ent_coef 0 the
    entropy gradient is all zero and the quadrature's backward is skipped), hence the GMM side is measured at each.
    """
    from sb3_gmm import GMMActorCriticPolicy

    configs = [(k, m, c) for c in settings for k in components for m in methods]
    records: Dict[str, Any] = {
        config_key(k, m, c): {"K": k, "method": m, "setting": c, "pairs": [], "status": "ok"} for k, m, c in configs
    }
    baselines: List[Dict[str, float]] = []
    seed = 0
    timed_learn("MlpPolicy", {}, min(steps, 2048), seed)  # warm-up: imports, allocator, caches
    for round_index in range(repeats):
        before = timed_learn("MlpPolicy", {}, steps, seed)
        baselines.append(before)
        for n_components, method, setting in configs:
            record = records[config_key(n_components, method, setting)]
            if record["status"] != "ok":
                continue
            seed += 1
            ent_coef, entropy_in_loss = ENTROPY_SETTINGS[setting]
            try:
                policy_kwargs = gmm_kwargs(n_components, method, entropy_in_loss)
                gmm = timed_learn(GMMActorCriticPolicy, policy_kwargs, steps, seed, ent_coef)
            except Exception as error:  # a refused K (e.g. too many series terms) is a result, not a crash
                record["status"] = f"refused: {type(error).__name__}: {str(error).splitlines()[0][:160]}"
                print(f"K={n_components} {method} ent_coef={setting}: {record['status']}", flush=True)
                continue
            after = timed_learn("MlpPolicy", {}, steps, seed)
            baselines.append(after)
            baseline_fps = 0.5 * (before["fps"] + after["fps"])
            ratio = gmm["fps"] / baseline_fps
            record["pairs"].append({"gmm": gmm, "baseline_fps": baseline_fps, "ratio": ratio})
            print(
                f"round {round_index + 1}/{repeats} K={n_components} {method} ent_coef={setting}: "
                f"gmm {gmm['fps']:.0f} fps, "
                f"mlp {baseline_fps:.0f} fps, ratio {ratio:.3f}",
                flush=True,
            )
            if ratio < 1.0 / too_slow:
                record["status"] = f"too slow (ratio {ratio:.3f} < 1/{too_slow:g}; not repeated)"
            before = after
    return records, baselines


def summarise(records: Dict[str, Any], baselines: List[Dict[str, float]]) -> Dict[str, Any]:
    rows = {}
    for name, record in records.items():
        ratios = [pair["ratio"] for pair in record["pairs"]]
        row = {
            "K": record["K"],
            "method": record["method"],
            "setting": record["setting"],
            "status": record["status"],
            "n": len(ratios),
        }
        if ratios:
            row.update(
                ratio_median=float(np.median(ratios)),
                ratio_min=float(np.min(ratios)),
                ratio_max=float(np.max(ratios)),
                fps_median=float(np.median([pair["gmm"]["fps"] for pair in record["pairs"]])),
                train_share=float(
                    np.median([pair["gmm"]["train"] / pair["gmm"]["seconds"] for pair in record["pairs"]])
                ),
                train_seconds=float(np.median([pair["gmm"]["train"] for pair in record["pairs"]])),
                rollout_seconds=float(np.median([pair["gmm"]["rollout"] for pair in record["pairs"]])),
            )
        rows[name] = row
    baseline = {
        "fps_median": float(np.median([b["fps"] for b in baselines])),
        "train_seconds": float(np.median([b["train"] for b in baselines])),
        "rollout_seconds": float(np.median([b["rollout"] for b in baselines])),
        "train_share": float(np.median([b["train"] / b["seconds"] for b in baselines])),
        "n": len(baselines),
    }
    return {"rows": rows, "baseline": baseline}


def markdown(summary: Dict[str, Any], components: List[int], methods: List[str], settings: List[str]) -> str:
    """Ratio tables (methods x K, one per entropy setting) and a rollout/update breakdown table."""
    rows = summary["rows"]
    lines: List[str] = []
    for setting in settings:
        lines += [
            f"GMM fps / MlpPolicy fps, GMM trained with {SETTING_LABELS[setting]}:",
            "",
            "| method | " + " | ".join(f"K={k}" for k in components) + " |",
            "|---|" + "---|" * len(components),
        ]
        for method in methods:
            cells = []
            for k in components:
                row = rows[config_key(k, method, setting)]
                if "ratio_median" not in row:
                    cells.append(row["status"].split(":")[0])
                    continue
                cell = f"{row['ratio_median']:.2f} [{row['ratio_min']:.2f}-{row['ratio_max']:.2f}]"
                if row["status"] != "ok":
                    cell += " (too slow, 1 run)"
                cells.append(cell)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    baseline = summary["baseline"]
    lines += [
        "Seconds per measurement (median), split into acting (`collect_rollouts`) and the PPO update (`train`):",
        "",
        "| policy | ent_coef | fps (median) | rollout s | update s | update share |",
        "|---|---|---|---|---|---|",
        f"| MlpPolicy | 0 | {baseline['fps_median']:.0f} | {baseline['rollout_seconds']:.2f} | "
        f"{baseline['train_seconds']:.2f} | {baseline['train_share']:.0%} |",
    ]
    for setting in settings:
        for method in methods:
            for k in components:
                row = rows[config_key(k, method, setting)]
                if "fps_median" in row and method in ("default", "component_average"):
                    lines.append(
                        f"| GMM K={k} {method} | {setting} | {row['fps_median']:.0f} | "
                        f"{row['rollout_seconds']:.2f} | {row['train_seconds']:.2f} | {row['train_share']:.0%} |"
                    )
    return "\n".join(lines)


def verdicts(summary: Dict[str, Any], settings: List[str], sac: Optional[Dict[str, Any]]) -> List[str]:
    """One line per target: the default estimator's ratio at each K with a target, and SAC-GMM K = 4."""
    lines = []
    for k, target in TARGET_RATIOS.items():
        for setting in settings:
            row = summary["rows"].get(config_key(k, "default", setting), {})
            if "ratio_median" in row:
                verdict = "met" if row["ratio_median"] >= target else "NOT met"
                lines.append(
                    f"- K={k}, default estimator, {SETTING_LABELS[setting]}: {row['ratio_median']:.2f} "
                    f"(target >= {target:.2f}: {verdict})"
                )
    if sac:
        verdict = "met" if sac["ratio_median"] >= SAC_TARGET_RATIO else "NOT met"
        lines.append(
            f"- SAC, GMMSACPolicy K=4 over MlpPolicy: {sac['ratio_median']:.2f} (target >= {SAC_TARGET_RATIO:.2f}: "
            f"{verdict})"
        )
    return lines


def before_after_table(before: Dict[str, Any], after: Dict[str, Any]) -> str:
    """The default estimator's ratio per K and setting in an older run (``before``) and this one."""
    summaries = [summarise(payload["records"], payload["baselines"])["rows"] for payload in (before, after)]
    components = after["config"]["components"]
    settings = after["config"]["settings"]
    rows = []
    for setting in settings:
        cells = []
        for k in components:
            pair = []
            for rows_of in summaries:
                row = rows_of.get(config_key(k, "default", setting), {})
                pair.append(f"{row['ratio_median']:.2f}" if "ratio_median" in row else row.get("status", "-")[:7])
            cells.append(" -> ".join(pair))
        rows.append([SETTING_LABELS[setting].split(" (")[0], *cells])
    sac_cells = [payload.get("sac") for payload in (before, after)]
    lines = [
        f"Default estimator, GMM fps / MlpPolicy fps, before (commit `{before['record']['git_commit']}`, "
        f"{before['record']['date'][:10]}) -> after (this run):",
        "",
        _report.markdown_table(["GMM side", *(f"K={k}" for k in components)], rows),
    ]
    if all(sac_cells):
        lines += [
            "",
            f"SAC GMM K=4 / SAC MlpPolicy: {sac_cells[0]['ratio_median']:.2f} -> {sac_cells[1]['ratio_median']:.2f}",
        ]
    return "\n".join(lines)


def entropy_microbenchmark(
    components: List[int], methods: List[str], batch_size: int = 64, action_dim: int = 1, calls: int = 20
) -> Dict[str, List[str]]:
    """Milliseconds per forward + backward of the entropy estimate alone, for one PPO minibatch: method -> cells."""
    generator = th.Generator().manual_seed(0)
    cells: Dict[str, List[str]] = {method: [] for method in methods}
    for method in methods:
        name = DEFAULT_METHOD if method == "default" else method
        for n_components in components:
            logits = th.randn(batch_size, n_components, generator=generator).requires_grad_()
            means = th.randn(batch_size, n_components, action_dim, generator=generator).requires_grad_()
            stds = (0.5 + th.rand(batch_size, n_components, action_dim, generator=generator)).requires_grad_()
            try:
                # Warm-up: with only 3 calls the table's first row came out up to 2x too slow (caches, allocator).
                for _ in range(WARM_UP_CALLS):
                    gmm_entropy(logits, means, stds, method=name).sum().backward()
                block_seconds = []
                for _ in range(5):  # median of 5 blocks: robust to the other jobs on a shared machine
                    start = time.perf_counter()
                    for _ in range(calls):
                        gmm_entropy(logits, means, stds, method=name).sum().backward()
                    block_seconds.append((time.perf_counter() - start) / calls)
                cells[method].append(f"{np.median(block_seconds) * 1e3:.2f}")
            except Exception as error:
                cells[method].append(f"refused ({type(error).__name__})")
    return cells


def measure_sac(rounds: int, steps: int) -> Dict[str, Any]:
    """SAC GMMSACPolicy K = 4 fps over SAC MlpPolicy fps on Pendulum, in alternating rounds (maxent_compare)."""
    from benchmarks.maxent_compare import measure_throughput

    return measure_throughput("full", rounds, steps)


def run(args: argparse.Namespace, record: Dict[str, Any]) -> Dict[str, Any]:
    """The micro-benchmark and the alternating training measurements (raw, as stored in JSON)."""
    start = time.perf_counter()
    micro = entropy_microbenchmark(args.components, args.methods)
    settings = list(args.settings)
    records, baselines = measure(args.components, args.methods, args.repeats, args.steps, args.too_slow, settings)
    sac = measure_sac(args.sac_rounds, args.sac_steps) if args.sac_rounds > 0 else None
    config = dict(components=args.components, methods=args.methods, settings=settings, default=DEFAULT_METHOD)
    minutes = (time.perf_counter() - start) / 60
    return dict(
        record=record, minutes=minutes, config=config, micro=micro, records=records, baselines=baselines, sac=sac
    )


def render(payload: Dict[str, Any], before: Optional[Dict[str, Any]] = None) -> str:
    """The generated block of docs/performance.md from a stored payload (and an older run's, for before/after)."""
    config, summary = payload["config"], summarise(payload["records"], payload["baselines"])
    components, default = config["components"], config["default"]
    micro_rows = [[method, *cells] for method, cells in payload["micro"].items()]
    lines = [_report.provenance(payload["record"], payload["minutes"]), "", "Targets:", ""]
    lines += verdicts(summary, config["settings"], payload.get("sac"))
    if before is not None:
        lines += ["", before_after_table(before, payload)]
    lines += [
        "",
        f"Entropy estimate alone, ms per forward+backward, batch 64, D=1 (default = {default}):",
        "",
        _report.markdown_table(["method", *(f"K={k}" for k in components)], micro_rows),
        "",
        f"Whole training, default estimator = {default}; median [min-max] over rounds.",
        "",
        markdown(summary, components, config["methods"], config["settings"]),
    ]
    sac = payload.get("sac")
    if sac:
        lines += [
            "",
            f"SAC on Pendulum-v1 (zoo settings), {sac['rounds']} alternating rounds of {sac['steps_per_round']} "
            f"steps: GMMSACPolicy K=4 over MlpPolicy fps, median {sac['ratio_median']:.2f} "
            f"[{min(sac['ratios']):.2f}-{max(sac['ratios']):.2f}].",
        ]
    return "\n".join(lines)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--components", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument(
        "--settings",
        nargs="+",
        choices=list(ENTROPY_SETTINGS),
        default=list(ENTROPY_SETTINGS),
        help="entropy settings of the GMM runs: ent_coef 0.01, 0, and 0 with entropy_in_loss=False (0-skip)",
    )
    parser.add_argument("--sac-rounds", type=int, default=7, help="SAC rounds (0 skips the SAC measurement)")
    parser.add_argument("--sac-steps", type=int, default=1000, help="SAC steps per round")
    parser.add_argument("--before", type=Path, help="a stored JSON of an older run: add a before/after table")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=4096, help="steps per measurement (4096 = one PPO iteration)")
    parser.add_argument("--too-slow", type=float, default=10.0, help="stop repeating a config this many times slower")
    parser.add_argument("--json", type=Path, help="write the raw measurements here (default with --write: docs/data)")
    parser.add_argument("--render", type=Path, help="no measuring: render the page from this stored JSON")
    parser.add_argument(
        "--write",
        nargs="?",
        type=Path,
        const=_report.DOCS / "performance.md",
        default=None,
        help="rewrite the generated block of this page (default docs/performance.md)",
    )
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    th.set_num_threads(1)
    if args.render:
        payload = json.loads(args.render.read_text())
    else:
        payload = run(args, _report.run_record("benchmarks.throughput", sys.argv[1:] if argv is None else argv))
        json_path = args.json or (_report.DOCS / "data" / "throughput.json" if args.write else None)
        if json_path:
            _report.write_json(json_path, payload)
    before = json.loads(args.before.read_text()) if args.before else None
    body = render(payload, before)
    print(body)
    if args.write:
        _report.write_generated(args.write, "benchmarks/throughput.py", body, "Training throughput")
        print("wrote", args.write)


if __name__ == "__main__":
    main()
