"""The multigoal point-mass task of soft Q-learning (Haarnoja et al. 2017): four equally good goals around the start."""

from typing import Any, Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces

# Constants of softlearning's ``MultiGoalEnv`` (rail-berkeley/softlearning, softlearning/environments/gym/
# multi_goal.py) with the cost coefficients its multigoal example trains with (examples/multi_goal/main.py).
GOAL_POSITIONS = ((5.0, 0.0), (-5.0, 0.0), (0.0, 5.0), (0.0, -5.0))
GOAL_RADIUS = 1.0  # softlearning's goal_threshold: an episode ends once the point is strictly closer than this
GOAL_REWARD = 10.0
ACTION_COST_COEFF = 30.0
DISTANCE_COST_COEFF = 1.0
INIT_SIGMA = 0.1
ARENA_HALF_WIDTH = 7.0  # positions are clipped to [-7, 7]^2
MAX_EPISODE_STEPS = 30  # softlearning's max_path_length for this task; applied by the registered TimeLimit


class MultiGoalEnv(gym.Env):
    """Move a 2-D point mass from near the origin to any one of four goals placed symmetrically around it.

    The observation is the position in ``[-7, 7]^2``; the action is the velocity in ``[-1, 1]^2`` (clipped), and
    the next position is ``clip(position + action)``. Each episode starts at ``N(0, init_sigma^2 I)`` (clipped).
    The reward of a step, evaluated at the new position ``p``, is

    ``-action_cost_coeff * |a|^2 - distance_cost_coeff * min_g |p - g|^2``,

    plus ``goal_reward`` when ``p`` is strictly within ``goal_radius`` of a goal, which also terminates the
    episode. The goals are ``(+-5, 0)`` and ``(0, +-5)``. The defaults are softlearning's multigoal example
    (``goal_reward=10``, ``actuation_cost_coeff=30``, ``distance_cost_coeff=1``, ``init_sigma=0.1``, 30 steps per
    episode); softlearning's SAC also scaled rewards by 0.1 during training, which ``reward_scale`` reproduces.
    The class itself never truncates: ``gym.make("sb3_gmm/MultiGoal-v0")`` adds the 30-step ``TimeLimit``
    (wrap the class in ``gymnasium.wrappers.TimeLimit`` when constructing it directly).

    The task has the symmetry of the square (rotations by 90 degrees and mirror images map goals onto goals and
    leave rewards unchanged), so the four goals are exactly equally good and the maximum-entropy optimal policy
    at the start spreads over all four directions; a single Gaussian has to pick one, or straddle two and head
    for the cost ridge between them.

    ``info["goal_index"]`` is the index in :data:`GOAL_POSITIONS` of the goal reached on this step, or -1;
    ``info["is_success"]`` says whether a goal was reached (SB3's ``Monitor`` and ``evaluate_policy`` read it).

    :param goal_reward: bonus paid on reaching a goal
    :param action_cost_coeff: weight of the squared action norm in the cost
    :param distance_cost_coeff: weight of the squared distance to the nearest goal in the cost
    :param init_sigma: standard deviation of each start coordinate around the origin
    :param goal_radius: distance to a goal below which the episode ends with the bonus
    :param reward_scale: factor applied to every reward (0.1 in softlearning's SAC training; 1 leaves them as is)
    :param render_mode: None or ``"rgb_array"`` (top view: goals green, agent blue)
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        goal_reward: float = GOAL_REWARD,
        action_cost_coeff: float = ACTION_COST_COEFF,
        distance_cost_coeff: float = DISTANCE_COST_COEFF,
        init_sigma: float = INIT_SIGMA,
        goal_radius: float = GOAL_RADIUS,
        reward_scale: float = 1.0,
        render_mode: Optional[str] = None,
    ) -> None:
        super().__init__()
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        for name, value in (
            ("goal_reward", goal_reward),
            ("action_cost_coeff", action_cost_coeff),
            ("distance_cost_coeff", distance_cost_coeff),
            ("init_sigma", init_sigma),
        ):
            if not np.isfinite(value) or value < 0.0:
                raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
        if not 0.0 < goal_radius < 2.5:
            raise ValueError(
                f"goal_radius must be in (0, 2.5) so the goals stay apart from the start, got {goal_radius}"
            )
        if not np.isfinite(reward_scale) or reward_scale <= 0.0:
            raise ValueError(f"reward_scale must be a finite positive number, got {reward_scale!r}")
        self.render_mode = render_mode
        self.goal_reward = float(goal_reward)
        self.action_cost_coeff = float(action_cost_coeff)
        self.distance_cost_coeff = float(distance_cost_coeff)
        self.init_sigma = float(init_sigma)
        self.goal_radius = float(goal_radius)
        self.reward_scale = float(reward_scale)
        self.goal_positions = np.array(GOAL_POSITIONS, dtype=np.float64)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.observation_space = spaces.Box(-ARENA_HALF_WIDTH, ARENA_HALF_WIDTH, shape=(2,), dtype=np.float32)
        self._position = np.zeros(2)

    @property
    def position(self) -> np.ndarray:
        """Current position (a copy)."""
        return self._position.copy()

    def goal_distances(self, positions: np.ndarray) -> np.ndarray:
        """Distance from each of ``positions`` (shape ``[..., 2]``) to each goal, shape ``[..., 4]``."""
        return np.linalg.norm(np.asarray(positions, dtype=np.float64)[..., None, :] - self.goal_positions, axis=-1)

    def reward_of(self, positions: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """Unscaled reward of arriving at ``positions`` with ``actions`` (both ``[..., 2]``, actions in the box)."""
        distances = self.goal_distances(positions)
        cost = self.action_cost_coeff * np.sum(np.asarray(actions, dtype=np.float64) ** 2, axis=-1)
        cost = cost + self.distance_cost_coeff * np.min(distances, axis=-1) ** 2
        return np.where(np.min(distances, axis=-1) < self.goal_radius, self.goal_reward, 0.0) - cost

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None):
        super().reset(seed=seed)
        start = self.init_sigma * self.np_random.standard_normal(2)
        self._position = np.clip(start, -ARENA_HALF_WIDTH, ARENA_HALF_WIDTH)
        return self._position.astype(np.float32), {"goal_index": -1, "is_success": False}

    def step(self, action: np.ndarray):
        velocity = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        self._position = np.clip(self._position + velocity, -ARENA_HALF_WIDTH, ARENA_HALF_WIDTH)
        distances = self.goal_distances(self._position)
        reached = bool(distances.min() < self.goal_radius)
        reward = float(self.reward_of(self._position, velocity)) * self.reward_scale
        info = {"goal_index": int(np.argmin(distances)) if reached else -1, "is_success": reached}
        return self._position.astype(np.float32), reward, reached, False, info

    def render(self) -> Optional[np.ndarray]:
        """A ``[128, 128, 3]`` top view of the arena: goal discs (green), agent (blue); y points up."""
        if self.render_mode is None:
            return None
        size = 128
        coordinates = ((np.arange(size) + 0.5) / size * 2.0 - 1.0) * ARENA_HALF_WIDTH
        x, y = np.meshgrid(coordinates, coordinates[::-1])
        image = np.full((size, size, 3), 255, dtype=np.uint8)
        for goal_x, goal_y in self.goal_positions:
            image[(x - goal_x) ** 2 + (y - goal_y) ** 2 < self.goal_radius**2] = (40, 170, 60)
        image[(x - self._position[0]) ** 2 + (y - self._position[1]) ** 2 < 0.25**2] = (30, 60, 220)
        return image
