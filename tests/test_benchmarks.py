"""The benchmark scripts write their own numbers into the docs (only inside their generated block)."""

import json
import math

import pytest

from benchmarks._report import begin_marker, end_marker, write_generated


def test_write_generated_replaces_only_the_block(tmp_path):
    page = tmp_path / "page.md"
    write_generated(page, "benchmarks/x.py", "first numbers", title="X")
    assert page.read_text().startswith("# X\n")
    page.write_text(page.read_text() + "\nHand-written reading of the numbers.\n")
    write_generated(page, "benchmarks/x.py", "second numbers", title="X")
    text = page.read_text()
    assert "second numbers" in text and "first numbers" not in text
    assert "Hand-written reading of the numbers." in text
    assert text.count(begin_marker("benchmarks/x.py")) == 1 and text.count(end_marker("benchmarks/x.py")) == 1


def test_throughput_script_writes_its_table(tmp_path):
    from benchmarks import throughput

    page, raw = tmp_path / "performance.md", tmp_path / "raw.json"
    throughput.main(
        ["--components", "2", "--methods", "default", "--settings", "0", "0-skip", "--repeats", "1", "--steps", "64",
         "--sac-rounds", "1", "--sac-steps", "50", "--write", str(page), "--json", str(raw)]
    )  # fmt: skip
    text = page.read_text()
    assert "python -m benchmarks.throughput --components 2" in text
    payload = json.loads(raw.read_text())
    row = throughput.summarise(payload["records"], payload["baselines"])["rows"]["K2-default-ent0"]
    assert row["n"] == 1 and 0.0 < row["ratio_median"] < 10.0
    assert f"{row['ratio_median']:.2f}" in text
    # The page can be rebuilt from the stored measurements alone.
    rebuilt = tmp_path / "rebuilt.md"
    throughput.main(["--render", str(raw), "--write", str(rebuilt)])
    assert rebuilt.read_text().replace("# Training throughput\n\n", "") in text
    # Both entropy settings and SAC were measured, and a before/after table renders from two stored runs.
    assert payload["records"]["K2-default-ent0-skip"]["pairs"] and payload["sac"]["ratio_median"] > 0
    throughput.main(["--render", str(raw), "--before", str(raw), "--write", str(rebuilt)])
    assert "before (commit" in rebuilt.read_text()


def test_throughput_covers_every_registered_estimator():
    from benchmarks.throughput import METHODS
    from sb3_gmm.entropy import ESTIMATORS

    assert set(METHODS) == {"default", *ESTIMATORS}


def test_bin_curve_keeps_episode_means_and_counts():
    """Stored curves are binned: each bin holds the mean of the episodes ending in (left, right] and their count."""
    from benchmarks.rl_compare import bin_curve

    edges, means, counts = bin_curve([1, 2, 5, 6, 10, 11], [1.0, 3.0, 5.0, 7.0, 9.0, 100.0], total=10, bins=5)
    assert edges == [2, 4, 6, 8, 10] and counts == [2, 0, 2, 0, 1]  # the episode past the budget is left out
    assert means == [2.0, None, 6.0, None, 9.0]


def test_entropy_accuracy_page_is_rendered_from_its_json(tmp_path):
    """Re-summarising the stored raw results reproduces the stored summaries, and rendering shows them."""
    import shutil

    from benchmarks import entropy_accuracy
    from benchmarks._report import DOCS

    stored = json.loads((DOCS / "entropy_accuracy.json").read_text())
    shutil.copy(DOCS / "entropy_accuracy.json", tmp_path / "entropy_accuracy.json")
    payload = entropy_accuracy.main(["--render", "--output-dir", str(tmp_path)])
    for old, new in zip(stored["summaries"], payload["summaries"]):
        assert old["label"] == new["label"] and old["max_abs_error"] == pytest.approx(new["max_abs_error"], rel=1e-6)
        assert old["n_refused"] == new["n_refused"] and old["meets_bar"] == new["meets_bar"]
    page = (DOCS / "entropy_accuracy.md").read_text()
    for line in (tmp_path / "entropy_accuracy.md").read_text().splitlines():
        if line.startswith("|"):
            assert line in page, f"docs/entropy_accuracy.md does not show {line!r}: run entropy_accuracy --render"


def test_rl_compare_runs_a_small_grid_and_writes_its_page(tmp_path):
    """End to end on the bandit: 4 short runs, then the table, figures and the generated block of the page."""
    from benchmarks import rl_compare

    page, figures, runs = tmp_path / "rl_results.md", tmp_path / "figures", tmp_path / "runs"
    page.write_text("# RL\n\nHand-written reading.\n")
    rl_compare.main(
        ["--budget", "quick", "--envs", "sb3_gmm/TwoPeakBandit-v0", "--seeds", "0", "--components", "2",
         "--treatments", "default", "--workers", "1", "--out", str(runs), "--figures", str(figures),
         "--write", str(page)]
    )  # fmt: skip
    results = sorted(path.stem for path in runs.glob("*.json"))
    assert results == [
        "bandit__gaussian__ent0.01__s0",
        "bandit__gaussian__ent0__s0",
        "bandit__gmm-K2-default__ent0.01__s0",
        "bandit__gmm-K2__ent0__s0",
    ]
    for name in results:
        result = json.loads((runs / f"{name}.json").read_text())
        # returns are finite and never above the documented optimum 5.0 (the valley penalty can make them negative)
        curve = [value for value in result["curve_returns"] if value is not None]
        assert len(result["curve_returns"]) == rl_compare.CURVE_BINS == len(result["curve_episodes"])
        assert sum(result["curve_episodes"]) > 0 and all(math.isfinite(value) for value in curve)
        assert max(curve) <= 5.0 + 1e-6 and result["deterministic_return"] <= 5.0 + 1e-6
    text = page.read_text()
    assert "Hand-written reading." in text and "| bandit | 0.01 | gmm-K2-default | 1 |" in text
    assert (figures / "rl_bandit.png").stat().st_size > 0 and "figures/rl_bandit.png" in text


def test_rl_results_page_matches_the_committed_runs():
    """docs/rl_results.md's table is rebuilt from the committed run files, so neither can drift from the other."""
    from benchmarks import rl_compare

    results = rl_compare.load_results(rl_compare.default_out_dir("full"))
    treatments, seeds = tuple(rl_compare.ENTROPY_TREATMENTS), (0, 1, 2)
    grid = rl_compare.build_grid(tuple(rl_compare.ENV_SETTINGS), "full", seeds, (2, 4), treatments)
    ran = sorted(rl_compare.RunSpec(**r["spec"]).key for r in results)
    assert ran == sorted(spec.key for spec in grid), "the committed runs are not the full grid the page describes"
    assert all(math.isfinite(r["deterministic_return"]) and math.isfinite(r["stochastic_return"]) for r in results)
    assert len({r["code_commit"] for r in results}) == 1, "the committed grid mixes code versions"
    page = (rl_compare.REPO_ROOT / "docs" / "rl_results.md").read_text()
    for line in rl_compare.results_table(results).splitlines():
        assert line in page, f"docs/rl_results.md does not show {line!r}: re-run rl_compare.py --report --write"


@pytest.mark.slow  # about 30 s of CPU: several fresh subprocesses
def test_memory_script_quick_run_writes_its_page(tmp_path):
    """The memory benchmark's smoke run: fresh-process measurements with chunking off and on, and its page."""
    from benchmarks import memory

    page = tmp_path / "memory.md"
    memory.main(["--quick", "--rounds", "3", "--calls", "2", "--write", "--page", str(page)])
    text = page.read_text()
    assert "python -m benchmarks.memory --quick" in text and "chunking" in text


def test_bandit_optimal_policy_and_kl_are_exact_on_the_grid():
    """The closed-form max-entropy policy integrates to one, peaks at the reward peaks, and the KL machinery gives 0
    for pi* itself and about log 2 for a policy on one peak only (what a single Gaussian can do at most)."""
    import gymnasium as gym
    import numpy as np

    import sb3_gmm.envs  # noqa: F401
    from benchmarks.maxent_bandit import ENV_ID, GRID_LIMIT, GRID_POINTS, kl_and_masses, optimal_log_density

    env = gym.make(ENV_ID).unwrapped
    u = np.linspace(-GRID_LIMIT, GRID_LIMIT, GRID_POINTS)
    log_optimal = optimal_log_density(u, env.reward_of, alpha=0.05)
    itself = kl_and_masses(log_optimal, log_optimal, u)
    assert itself["mass"] == pytest.approx(1.0, abs=1e-9) and itself["kl"] == pytest.approx(0.0, abs=1e-12)
    assert itself["mass_negative"] == pytest.approx(0.5, abs=1e-6)  # the two peaks are mirror images
    assert abs(np.tanh(u[np.argmax(log_optimal)])) == pytest.approx(env.peak_position, abs=0.02)
    # pi* restricted to its right half (renormalised): the best a one-peaked policy can do.
    right_half = np.where(u > 0, log_optimal + math.log(2.0), -np.inf)
    one_peak = kl_and_masses(right_half, log_optimal, u)
    assert one_peak["kl"] == pytest.approx(math.log(2.0), abs=1e-3) and one_peak["mass_negative"] == 0.0


def test_bandit_script_runs_and_writes_its_block(tmp_path):
    """A short run of each kind of actor, its JSON, and the page block with the table and the density figure."""
    from benchmarks import maxent_bandit

    out = tmp_path / "runs"
    maxent_bandit.main(["--actors", "sac-gaussian", "sac-gmm4-sample", "--temperatures", "0.2", "--seeds", "0",
                        "--timesteps", "200", "--out", str(out)])  # fmt: skip
    runs = sorted(path.name for path in out.glob("*.json"))
    assert runs == ["sac-gaussian__alpha0.2__s0.json", "sac-gmm4-sample__alpha0.2__s0.json"]
    for name in runs:
        result = json.loads((out / name).read_text())
        assert result["kl"] >= 0.0 and all(abs(row["mass"] - 1.0) < 1e-3 for row in result["per_observation"])
    maxent_bandit.main(["--direct", "--temperatures", "0.2", "--seeds", "0", "--direct-steps", "20", "--out", str(out)])
    direct = json.loads((out / "direct" / "estimate__alpha0.2__s0.json").read_text())
    assert [row["step"] for row in direct["trace"]][-1] == 20 and direct["trace"][-1]["kl"] >= 0.0
    page = tmp_path / "page.md"
    maxent_bandit.main(["--out", str(out), "--write", str(page)])
    text = page.read_text()
    assert "| 0.2 | sac-gaussian | 1 |" in text and (tmp_path / "figures" / "maxent_bandit_densities.png").exists()
    assert "| 0.2 | estimate | 1 | 20 |" in text


def test_maxent_pages_match_the_committed_runs():
    """docs/maxent_results.md shows the tables the committed SAC runs give (bandit, perfect critic, control tasks)."""
    from benchmarks import maxent_bandit, maxent_compare

    page = maxent_compare.PAGE.read_text()
    bandit_runs = maxent_bandit.load(maxent_bandit.OUT_DIR)
    assert len(bandit_runs) == len(maxent_bandit.ACTORS) * len(maxent_bandit.TEMPERATURES) * len(maxent_bandit.SEEDS)
    tables = [maxent_bandit.table(bandit_runs), maxent_bandit.direct_table(maxent_bandit.OUT_DIR)]
    control_runs = maxent_compare.load_results(maxent_compare.REPO_ROOT / "docs" / "data" / "maxent")
    tables += [maxent_compare.control_table(control_runs, suite) for suite in ("pendulum", "lunar")]
    for line in "\n".join(tables).splitlines():
        assert line in page, f"docs/maxent_results.md does not show {line!r}: re-run the scripts with --write"


def test_claimed_gives_each_run_to_one_process(tmp_path):
    """The claim file that lets several grid processes share runs: a second claim is refused, the file is removed."""
    from benchmarks._report import claimed

    result = tmp_path / "run.json"
    with claimed(result) as first:
        with claimed(result) as second:
            assert first and not second
        assert result.with_suffix(".claim").exists()  # the refused claim leaves the holder's file alone
    assert not result.with_suffix(".claim").exists()


def test_entropy_cost_measures_and_renders_its_tables(monkeypatch):
    """One small cell of benchmarks/entropy_cost.py end to end (its calls reach into the distribution's internals)."""
    from benchmarks import _report, entropy_cost

    monkeypatch.setattr(entropy_cost, "CELLS", ((2, 1),))
    monkeypatch.setattr(entropy_cost, "STEP_COMPONENTS", (2,))
    payload = entropy_cost.measure(rounds=1, per_round=1)
    payload.update(record=_report.run_record("benchmarks.entropy_cost", []), minutes=0.0)
    text = entropy_cost.render(payload)
    assert all(setting in text for setting in entropy_cost.STEP_SETTINGS)
    assert f"one call, {entropy_cost.OTHER_RULE_1D_LABEL} us" in text and "| 2 | 1 | 36 |" in text
    assert all(len(samples) == 1 and samples[0] > 0 for samples in payload["samples"].values())
