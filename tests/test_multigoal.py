"""The multigoal task (softlearning's constants, goals, symmetry, seeding) and the max-entropy evidence script."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sb3_gmm  # noqa: F401  (importing the package registers the environments)
from sb3_gmm.envs.multigoal import (
    ACTION_COST_COEFF,
    GOAL_POSITIONS,
    GOAL_REWARD,
    MAX_EPISODE_STEPS,
    MultiGoalEnv,
)

ENV_ID = "sb3_gmm/MultiGoal-v0"

# The symmetry group of the square, as 2x2 matrices: it permutes the goals.
ROTATION = np.array([[0.0, -1.0], [1.0, 0.0]])
MIRROR = np.array([[1.0, 0.0], [0.0, -1.0]])
SQUARE_SYMMETRIES = [np.linalg.matrix_power(ROTATION, k) @ m for k in range(4) for m in (np.eye(2), MIRROR)]


def drive_to(env: gym.Env, goal_index: int, speed: float, seed: int) -> tuple[float, int, dict, list[float]]:
    """Head straight for one goal at ``speed`` per step; returns (return, steps, last info, rewards)."""
    observation, _ = env.reset(seed=seed)
    goal = np.array(GOAL_POSITIONS[goal_index])
    rewards = []
    while True:
        direction = goal - observation
        action = speed * direction / np.linalg.norm(direction)
        observation, reward, terminated, truncated, info = env.step(action.astype(np.float32))
        rewards.append(reward)
        if terminated or truncated:
            return float(np.sum(rewards)), len(rewards), info, rewards


def test_registered_with_softlearning_horizon_and_passes_checker() -> None:
    env = gym.make(ENV_ID)
    assert env.spec.max_episode_steps == MAX_EPISODE_STEPS == 30
    check_env(env.unwrapped, skip_render_check=True)
    unwrapped = env.unwrapped
    assert (unwrapped.goal_reward, unwrapped.action_cost_coeff, unwrapped.distance_cost_coeff) == (10.0, 30.0, 1.0)
    assert unwrapped.init_sigma == 0.1 and unwrapped.goal_radius == 1.0
    np.testing.assert_array_equal(unwrapped.observation_space.high, 7.0)


@pytest.mark.parametrize("goal_index", range(4))
def test_scripted_policy_reaches_each_goal_and_gets_the_bonus(goal_index: int) -> None:
    env = gym.make(ENV_ID)
    episode_return, steps, info, rewards = drive_to(env, goal_index, speed=1.0, seed=0)
    assert info["is_success"] and info["goal_index"] == goal_index
    # the goal is 5 +- 0.3 away (start noise), so 4 or 5 unit steps bring the point within 1 of it
    assert steps in (4, 5)
    final_position = env.unwrapped.position
    distance = np.linalg.norm(final_position - np.array(GOAL_POSITIONS[goal_index]))
    assert distance < 1.0
    expected_last = GOAL_REWARD - ACTION_COST_COEFF * 1.0 - distance**2
    assert rewards[-1] == pytest.approx(expected_last, abs=1e-4)  # float32 action norm
    assert all(reward < 0 for reward in rewards[:-1])  # no bonus before the goal


def test_staying_put_never_reaches_a_goal_and_is_truncated_at_the_horizon() -> None:
    env = gym.make(ENV_ID)
    env.reset(seed=1)
    for step in range(1, MAX_EPISODE_STEPS + 1):
        _, reward, terminated, truncated, info = env.step(np.zeros(2, dtype=np.float32))
        assert not terminated and info["goal_index"] == -1 and not info["is_success"]
        assert reward == pytest.approx(-(np.min(env.unwrapped.goal_distances(env.unwrapped.position)) ** 2))
        assert truncated == (step == MAX_EPISODE_STEPS)


def test_reward_and_dynamics_have_the_symmetry_of_the_square() -> None:
    rng = np.random.default_rng(0)
    env = MultiGoalEnv()
    positions = rng.uniform(-7.0, 7.0, size=(500, 2))
    actions = rng.uniform(-1.0, 1.0, size=(500, 2))
    rewards = env.reward_of(positions, actions)
    goals = np.array(GOAL_POSITIONS)
    for symmetry in SQUARE_SYMMETRIES:
        mapped_goals = goals @ symmetry.T
        assert {tuple(np.round(g, 12) + 0.0) for g in mapped_goals} == set(GOAL_POSITIONS)  # goals onto goals
        np.testing.assert_allclose(env.reward_of(positions @ symmetry.T, actions @ symmetry.T), rewards, atol=1e-9)
    # the goal rewards of the four straight drives agree exactly when the start is the origin
    returns = {drive_to(MultiGoalEnv(init_sigma=0.0), index, 0.8, seed=0)[0] for index in range(4)}
    assert len({round(value, 4) for value in returns}) == 1


def test_rotated_trajectory_reaches_the_rotated_goal() -> None:
    env = MultiGoalEnv(init_sigma=0.0)
    # a wobbly drive towards +x: every step moves 0.6 to 1 along x, so it arrives within 8 steps
    actions = np.random.default_rng(1).uniform([0.6, -0.1], [1.0, 0.1], size=(8, 2))
    reached = {}
    for turn in range(4):
        rotation = np.linalg.matrix_power(ROTATION, turn)
        env.reset(seed=0)
        for action in actions @ rotation.T:
            _, _, terminated, _, info = env.step(action)
            if terminated:
                break
        reached[turn] = info["goal_index"]
    assert sorted(reached.values()) == [0, 1, 2, 3]  # +x, then +y, -x, -y in GOAL_POSITIONS' order
    assert [GOAL_POSITIONS[reached[turn]] for turn in range(4)] == [(5.0, 0.0), (0.0, 5.0), (-5.0, 0.0), (0.0, -5.0)]


def test_same_seed_same_episode_different_seed_different_start() -> None:
    def episode(seed: int) -> np.ndarray:
        env = gym.make(ENV_ID)
        env.action_space.seed(seed)
        observation, _ = env.reset(seed=seed)
        rows = [np.append(observation, 0.0)]
        for _ in range(MAX_EPISODE_STEPS):
            observation, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            rows.append(np.append(observation, reward))
            if terminated or truncated:
                break
        return np.array(rows)

    np.testing.assert_array_equal(episode(7), episode(7))
    starts = np.array([gym.make(ENV_ID).reset(seed=seed)[0] for seed in range(20)])
    assert len({tuple(start) for start in starts}) == 20
    assert np.abs(starts).max() < 0.5 and 0.05 < starts.std() < 0.2  # N(0, 0.1^2) per coordinate


def test_reward_scale_scales_every_reward_and_bad_arguments_are_rejected() -> None:
    unscaled = drive_to(MultiGoalEnv(), 2, 0.7, seed=3)[3]
    scaled = drive_to(MultiGoalEnv(reward_scale=0.1), 2, 0.7, seed=3)[3]
    np.testing.assert_allclose(scaled, 0.1 * np.array(unscaled), rtol=1e-12)
    with pytest.raises(ValueError, match="reward_scale"):
        MultiGoalEnv(reward_scale=0.0)
    with pytest.raises(ValueError, match="goal_radius"):
        MultiGoalEnv(goal_radius=3.0)
    with pytest.raises(ValueError, match="action_cost_coeff"):
        MultiGoalEnv(action_cost_coeff=-1.0)


def test_iqm_and_bootstrap_interval_follow_rliable_definitions() -> None:
    from scipy.stats import trim_mean

    from benchmarks.maxent_compare import bootstrap_interval, iqm

    values = np.array([3.0, 1.0, 5.0, 4.0, 6.0, 1000.0, 2.0, 7.0])
    assert iqm(values) == pytest.approx(trim_mean(values, 0.25)) == pytest.approx(np.mean([3.0, 4.0, 5.0, 6.0]))
    low, high = bootstrap_interval(values, iqm)
    assert low <= iqm(values) <= high
    # the percentile bootstrap of a mean matches the normal interval +-1.96 sigma / sqrt(n) for a large sample
    sample = np.random.default_rng(0).normal(size=400)
    low, high = bootstrap_interval(sample, np.mean)
    assert high - low == pytest.approx(2 * 1.96 * sample.std() / 20.0, rel=0.15)
    assert bootstrap_interval([2.0] * 5, iqm) == (2.0, 2.0)


def test_maxent_compare_end_to_end_at_a_tiny_budget(tmp_path) -> None:
    """Two short MultiGoal runs, the throughput rounds, then tables, figures and the page, all under tmp_path."""
    import json

    from benchmarks import maxent_compare

    runs, figures, page = tmp_path / "runs", tmp_path / "figures", tmp_path / "maxent_results.md"
    maxent_compare.main(
        ["--budget", "tiny", "--suites", "multigoal", "throughput", "--configs", "sac-gaussian", "sac-gmm4-sample",
         "--seeds", "0", "--throughput-rounds", "2", "--throughput-steps", "20", "--out", str(runs),
         "--figures", str(figures), "--write", str(page)]
    )  # fmt: skip
    names = sorted(path.name for path in runs.iterdir())
    assert names == [
        "multigoal__sac-gaussian__entauto__s0.json",
        "multigoal__sac-gmm4-sample__entauto__s0.json",
        "throughput.json",
    ]
    for name in names[:2]:
        result = json.loads((runs / name).read_text())
        counts = np.array(result["goal_counts"])
        assert result["coverage"] == np.count_nonzero(counts) and 0 <= result["coverage"] <= 4
        assert result["success_rate"] == pytest.approx(counts.sum() / result["eval_episodes"])
        assert 0.0 <= result["effective_goals"] <= result["coverage"] + 1e-9
        assert len(result["curve"]["return"]) == maxent_compare.CURVE_BINS
        assert len(result["stochastic_paths"]) == min(maxent_compare.SAVED_TRAJECTORIES, result["eval_episodes"])
    gmm = json.loads((runs / names[1]).read_text())
    assert gmm["options"]["n_components"] == 4 and gmm["options"]["log_pi"] == "sample"
    throughput = json.loads((runs / "throughput.json").read_text())
    assert len(throughput["ratios"]) == 2 and throughput["ratio_median"] > 0.0
    text = page.read_text()
    assert "| sac-gmm4-sample | auto | sample | 1 |" in text and f"ratio {throughput['ratio_median']:.2f}" in text
    assert {path.name for path in figures.iterdir()} == {"maxent_multigoal_curves.png", "maxent_multigoal_rollouts.png"}
