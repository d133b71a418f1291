"""The built-in multimodal environments: API conformance, documented optimal returns, traps, seeding."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import sb3_gmm.envs  # noqa: F401  (registers the environments)
from sb3_gmm.envs import ENV_IDS, TwoPeakBanditEnv, TwoRouteNavigationEnv


def run_episode(env: gym.Env, policy, seed: int) -> tuple[float, int, dict]:
    observation, _ = env.reset(seed=seed)
    episode_return, steps = 0.0, 0
    while True:
        observation, reward, terminated, truncated, info = env.step(policy(observation))
        episode_return += reward
        steps += 1
        if terminated or truncated:
            return episode_return, steps, info


def route_policy(side: float):
    """Hand-written optimal navigation policy: full speed to a waypoint beside the obstacle, then to the goal."""
    waypoint = np.array([0.0, 0.42 * side])
    goal = np.array(TwoRouteNavigationEnv.goal_position)
    passed_waypoint = [False]

    def policy(observation: np.ndarray) -> np.ndarray:
        position = observation.astype(np.float64)
        if np.linalg.norm(position - waypoint) < 0.1:
            passed_waypoint[0] = True
        target = goal if passed_waypoint[0] else waypoint
        direction = target - position
        return (direction / np.linalg.norm(direction)).astype(np.float32)

    return policy


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_registered_envs_pass_gymnasium_checker(env_id: str) -> None:
    env = gym.make(env_id, render_mode="rgb_array")
    check_env(env.unwrapped)
    env.reset(seed=0)
    env.step(env.action_space.sample())
    image = env.render()
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert len(np.unique(image.reshape(-1, 3), axis=0)) >= 3  # background plus drawn elements
    assert env.action_space.shape[0] >= 1
    np.testing.assert_array_equal(env.action_space.low, -1.0)
    np.testing.assert_array_equal(env.action_space.high, 1.0)


def test_zoo_env_name_of_namespaced_id_is_a_flat_folder_name() -> None:
    huggingface_sb3 = pytest.importorskip("huggingface_sb3")
    name = huggingface_sb3.EnvironmentName("sb3_gmm/TwoPeakBandit-v0")
    assert name == "sb3_gmm-TwoPeakBandit-v0"
    assert name.gym_id == "sb3_gmm/TwoPeakBandit-v0"


@pytest.mark.parametrize("action_dim", [1, 4])
def test_bandit_optimal_policy_reaches_documented_return(action_dim: int) -> None:
    env = gym.make("sb3_gmm/TwoPeakBandit-v0", action_dim=action_dim)
    check_env(env.unwrapped, skip_render_check=True)
    assert env.unwrapped.optimal_return == 5.0
    signs = np.where(np.arange(action_dim) % 2 == 0, 1.0, -1.0)
    for side in (1.0, -1.0):
        episode_return, steps, _ = run_episode(env, lambda _, s=side: (0.6 * s * signs).astype(np.float32), seed=0)
        assert steps == 5
        assert episode_return == pytest.approx(5.0, abs=1e-12)


def test_bandit_peaks_are_the_maxima_and_the_valley_is_penalised() -> None:
    env = TwoPeakBanditEnv()
    grid = np.linspace(-1.0, 1.0, 20001)[:, None]
    rewards = env.reward_of(grid)
    assert rewards.max() == pytest.approx(1.0, abs=1e-12)
    assert set(np.round(grid[rewards > 1.0 - 1e-9, 0], 3)) == {-0.6, 0.6}
    np.testing.assert_allclose(rewards, rewards[::-1], atol=1e-12)  # both peaks equally good
    assert env.reward_of(np.array([0.0])) == pytest.approx(-0.5, abs=1e-3)
    # a single Gaussian centred on the valley and wide enough to cover both peaks earns far less than a peak
    rng = np.random.default_rng(0)
    straddle = env.reward_of(np.clip(rng.normal(0.0, 0.6, size=(200000, 1)), -1, 1)).mean()
    mixture = env.reward_of(0.6 * rng.choice([-1.0, 1.0], size=(200000, 1)) + rng.normal(0, 0.1, (200000, 1))).mean()
    assert straddle < 0.3 and mixture > 0.75


def test_bandit_valley_policy_gets_clearly_less() -> None:
    env = gym.make("sb3_gmm/TwoPeakBandit-v0")
    episode_return, _, _ = run_episode(env, lambda _: np.zeros(1, dtype=np.float32), seed=0)
    assert episode_return == pytest.approx(-2.5, abs=0.01)


def test_bandit_tensor_reward_equals_the_numpy_one_and_is_differentiable() -> None:
    """reward_of_tensor (a known critic for actor-gradient checks) is the same formula as reward_of."""
    import torch as th

    env = TwoPeakBanditEnv(action_dim=2)
    actions = np.random.default_rng(0).uniform(-1.2, 1.2, size=(200, 2))  # some outside the box: both clip
    tensor_actions = th.tensor(actions, requires_grad=True)
    rewards = env.reward_of_tensor(tensor_actions)
    np.testing.assert_allclose(rewards.detach().numpy(), env.reward_of(actions), rtol=0, atol=1e-12)
    rewards.sum().backward()
    inside = np.abs(actions).max(-1) < 1.0
    assert th.isfinite(tensor_actions.grad).all() and (tensor_actions.grad[th.from_numpy(inside)] != 0).any()


def test_bandit_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="valley_width"):
        TwoPeakBanditEnv(valley_width=0.7)
    with pytest.raises(ValueError, match="action_dim"):
        TwoPeakBanditEnv(action_dim=0)


@pytest.mark.parametrize("side", [1.0, -1.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_navigation_both_routes_reach_documented_optimal_return(side: float, seed: int) -> None:
    env = gym.make("sb3_gmm/TwoRouteNavigation-v0")
    assert env.unwrapped.optimal_return == 2.0
    episode_return, steps, info = run_episode(env, route_policy(side), seed=seed)
    assert info["reached_goal"] and not info["collided"]
    assert steps <= 25
    assert episode_return == pytest.approx(2.0, abs=1e-9)


def test_navigation_straight_policy_hits_obstacle_and_gets_clearly_less() -> None:
    env = gym.make("sb3_gmm/TwoRouteNavigation-v0")
    episode_return, steps, info = run_episode(env, lambda _: np.array([1.0, 0.0], dtype=np.float32), seed=0)
    assert info["collided"] and not info["reached_goal"]
    assert steps == 25
    assert episode_return == pytest.approx(0.3 / 1.3 - 23 * 0.05, abs=0.01)  # the docstring's -0.92
    # the obstacle is never entered
    assert np.linalg.norm(env.unwrapped.position) >= env.unwrapped.obstacle_radius


def test_navigation_shortest_route_fits_in_time_limit() -> None:
    env = TwoRouteNavigationEnv()
    start_to_centre = abs(env.start_x)
    tangent = np.sqrt(start_to_centre**2 - env.obstacle_radius**2)
    arc = env.obstacle_radius * (np.pi - 2.0 * np.arccos(env.obstacle_radius / start_to_centre))
    shortest = 2.0 * tangent + arc - env.goal_radius
    assert shortest == pytest.approx(1.43, abs=0.01)
    assert np.ceil(shortest / env.max_speed) == 10 < env.max_steps


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_reset_with_seed_is_reproducible(env_id: str) -> None:
    def trajectory(seed: int) -> list[np.ndarray]:
        env = gym.make(env_id)
        env.action_space.seed(seed)
        observation, _ = env.reset(seed=seed)
        observations = [observation]
        for _ in range(10):
            observation, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            observations.append(np.append(observation, reward))
            if terminated or truncated:
                observation, _ = env.reset()
                observations.append(observation)
        return observations

    first, second = trajectory(3), trajectory(3)
    for left, right in zip(first, second):
        np.testing.assert_array_equal(left, right)
    if env_id.endswith("TwoRouteNavigation-v0"):
        starts = {float(gym.make(env_id).reset(seed=seed)[0][1]) for seed in range(5)}
        assert len(starts) == 5  # the start really depends on the seed


def test_navigation_refuses_moves_through_the_obstacle_rim() -> None:
    env = TwoRouteNavigationEnv(start_noise=0.0, max_speed=0.1)
    env.reset(seed=0)
    # both ends of this step lie outside the disc but its middle dips inside
    env._position = np.array([-0.05, -0.299])
    assert np.linalg.norm([-0.05, -0.299]) > env.obstacle_radius and np.linalg.norm([0.05, -0.299]) > 0.3
    _, reward, _, _, info = env.step(np.array([1.0, 0.0]))
    assert info["collided"]
    assert reward == pytest.approx(-env.collision_penalty)
    np.testing.assert_array_equal(env.position, [-0.05, -0.299])
