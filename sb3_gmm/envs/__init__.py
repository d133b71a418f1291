"""Small built-in Gymnasium environments whose best stochastic policy is multimodal.

Importing this module registers them (pass ``--gym-packages sb3_gmm.envs`` to rl-zoo3):

- ``sb3_gmm/TwoPeakBandit-v0``: continuous bandit with two reward peaks and a valley between (optimal return 5.0);
  ``gym.make("sb3_gmm/TwoPeakBandit-v0", action_dim=4)`` gives the higher-dimensional version.
- ``sb3_gmm/TwoRouteNavigation-v0``: 2-D navigation with two mirror-image routes around an obstacle
  (optimal return 2.0).
- ``sb3_gmm/MultiGoal-v0``: the 2-D point mass with four symmetric goals of soft Q-learning (Haarnoja et al.
  2017), 30 steps per episode; ``info["goal_index"]`` says which goal was reached.
"""

import gymnasium as gym

from sb3_gmm.envs.multigoal import MAX_EPISODE_STEPS as MULTIGOAL_MAX_EPISODE_STEPS
from sb3_gmm.envs.multigoal import MultiGoalEnv
from sb3_gmm.envs.two_peak_bandit import TwoPeakBanditEnv
from sb3_gmm.envs.two_route_navigation import TwoRouteNavigationEnv

ENV_IDS = ("sb3_gmm/TwoPeakBandit-v0", "sb3_gmm/TwoRouteNavigation-v0", "sb3_gmm/MultiGoal-v0")


def register_envs() -> None:
    """Register the built-in environments with Gymnasium (idempotent: importing twice does not warn)."""
    entry_points = {
        "sb3_gmm/TwoPeakBandit-v0": "sb3_gmm.envs.two_peak_bandit:TwoPeakBanditEnv",
        "sb3_gmm/TwoRouteNavigation-v0": "sb3_gmm.envs.two_route_navigation:TwoRouteNavigationEnv",
    }
    for env_id, entry_point in entry_points.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry_point)
    if "sb3_gmm/MultiGoal-v0" not in gym.registry:
        # the class never truncates (as in softlearning); the horizon lives in the registration
        gym.register(
            id="sb3_gmm/MultiGoal-v0",
            entry_point="sb3_gmm.envs.multigoal:MultiGoalEnv",
            max_episode_steps=MULTIGOAL_MAX_EPISODE_STEPS,
        )


register_envs()

__all__ = ["ENV_IDS", "MultiGoalEnv", "TwoPeakBanditEnv", "TwoRouteNavigationEnv", "register_envs"]
