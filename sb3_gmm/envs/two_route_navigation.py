"""A short 2-D navigation task with two equally good routes around a central obstacle."""

from typing import Any, Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces


class TwoRouteNavigationEnv(gym.Env):
    """Drive a point from the left of a round obstacle to a goal on its right, passing above or below.

    The arena is ``[-1, 1]^2``; a disc of radius ``obstacle_radius`` sits at the origin. The agent starts at
    ``(-0.7, y0)`` with ``y0`` uniform in ``[-start_noise, start_noise]`` and must reach the goal disc of radius
    ``goal_radius`` around ``(0.7, 0)``. The action is a 2-D velocity in ``[-1, 1]^2``, rescaled to Euclidean
    norm at most 1 and multiplied by ``max_speed``. A move whose segment would enter the obstacle is refused
    (the agent stays put) and costs ``collision_penalty``; positions are clipped to the arena.

    Reward: progress ``(g(p_prev) - g(p_new)) / g(p_start)`` with ``g(p) = max(|p - goal| - goal_radius, 0)``, so
    the progress of a whole successful episode sums to exactly 1 whatever the start, plus ``goal_bonus`` when
    the goal disc is reached (the episode then terminates), minus the collision penalties. Episodes are
    truncated after ``max_steps`` steps.

    Optimal return: ``1 + goal_bonus`` = 2.0 with the defaults, reached by any collision-free path that
    arrives within ``max_steps``. The shortest path (tangents and arc around the disc) needs about 1.43 of
    travel, i.e. 10 steps of 0.15, well inside the 25-step limit; the routes above and below are mirror images,
    hence equally good. Driving straight right stops in front of the obstacle after 2 steps (progress 0.23) and
    pays the collision penalty on every remaining step: about -0.92 with the defaults.

    Why it is multimodal: at the start the best stochastic policy puts its mass on two separated headings
    (up-right and down-right); their average, straight right, is the worst choice.

    :param max_steps: time limit (truncation)
    :param max_speed: distance travelled per step at full throttle
    :param obstacle_radius: radius of the central disc
    :param goal_radius: radius of the goal disc
    :param start_noise: half-range of the uniform vertical offset of the start
    :param collision_penalty: cost of each refused move into the obstacle
    :param goal_bonus: reward on reaching the goal
    :param render_mode: None or ``"rgb_array"`` (top view of the arena)
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    start_x = -0.7
    goal_position = (0.7, 0.0)

    def __init__(
        self,
        max_steps: int = 25,
        max_speed: float = 0.15,
        obstacle_radius: float = 0.3,
        goal_radius: float = 0.1,
        start_noise: float = 0.05,
        collision_penalty: float = 0.05,
        goal_bonus: float = 1.0,
        render_mode: Optional[str] = None,
    ) -> None:
        super().__init__()
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        if int(max_steps) != max_steps or max_steps < 1:
            raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")
        if not 0.0 < max_speed <= 2.0 * goal_radius:
            raise ValueError(
                f"max_speed must be in (0, 2 * goal_radius = {2 * goal_radius}] so a step cannot jump over the goal, "
                f"got {max_speed}"
            )
        if not 0.0 < obstacle_radius < 0.6:
            raise ValueError(f"obstacle_radius must be in (0, 0.6) to leave room around it, got {obstacle_radius}")
        if not 0.0 < goal_radius < 0.3:
            raise ValueError(f"goal_radius must be in (0, 0.3), got {goal_radius}")
        if not 0.0 <= start_noise <= 0.2:
            raise ValueError(f"start_noise must be in [0, 0.2], got {start_noise}")
        if collision_penalty < 0.0 or goal_bonus < 0.0:
            raise ValueError("collision_penalty and goal_bonus must be non-negative")
        self.max_steps = int(max_steps)
        self.max_speed = float(max_speed)
        self.obstacle_radius = float(obstacle_radius)
        self.goal_radius = float(goal_radius)
        self.start_noise = float(start_noise)
        self.collision_penalty = float(collision_penalty)
        self.goal_bonus = float(goal_bonus)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._goal = np.array(self.goal_position, dtype=np.float64)
        self._position = np.array([self.start_x, 0.0])
        self._start_gap = 1.0
        self._steps_taken = 0

    @property
    def optimal_return(self) -> float:
        """Best achievable undiscounted episode return (any collision-free path reaching the goal in time)."""
        return 1.0 + self.goal_bonus

    @property
    def position(self) -> np.ndarray:
        """Current agent position (a copy)."""
        return self._position.copy()

    def _gap(self, position: np.ndarray) -> float:
        return max(float(np.linalg.norm(position - self._goal)) - self.goal_radius, 0.0)

    def _hits_obstacle(self, start: np.ndarray, end: np.ndarray) -> bool:
        # Closest point of the segment to the obstacle centre (the origin); checking only the end point would let a
        # step cut through the rim of the disc.
        direction = end - start
        length_sq = float(direction @ direction)
        fraction = 0.0 if length_sq == 0.0 else float(np.clip(-(start @ direction) / length_sq, 0.0, 1.0))
        closest = start + fraction * direction
        return float(np.linalg.norm(closest)) < self.obstacle_radius

    def _observation(self) -> np.ndarray:
        return self._position.astype(np.float32)

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None):
        super().reset(seed=seed)
        start_y = self.np_random.uniform(-self.start_noise, self.start_noise) if self.start_noise > 0.0 else 0.0
        self._position = np.array([self.start_x, start_y])
        self._start_gap = self._gap(self._position)
        self._steps_taken = 0
        return self._observation(), {}

    def step(self, action: np.ndarray):
        velocity = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        norm = float(np.linalg.norm(velocity))
        if norm > 1.0:
            velocity = velocity / norm
        proposed = np.clip(self._position + self.max_speed * velocity, -1.0, 1.0)
        collided = self._hits_obstacle(self._position, proposed)
        previous_gap = self._gap(self._position)
        if not collided:
            self._position = proposed
        new_gap = self._gap(self._position)
        reward = (previous_gap - new_gap) / self._start_gap
        if collided:
            reward -= self.collision_penalty
        terminated = new_gap == 0.0
        if terminated:
            reward += self.goal_bonus
        self._steps_taken += 1
        truncated = not terminated and self._steps_taken >= self.max_steps
        info = {"collided": collided, "reached_goal": terminated}
        return self._observation(), float(reward), terminated, truncated, info

    def render(self) -> Optional[np.ndarray]:
        """A ``[128, 128, 3]`` top view: obstacle (grey), goal (green), agent (blue); y points up."""
        if self.render_mode is None:
            return None
        size = 128
        coordinates = (np.arange(size) + 0.5) / size * 2.0 - 1.0
        x, y = np.meshgrid(coordinates, coordinates[::-1])
        image = np.full((size, size, 3), 255, dtype=np.uint8)
        image[x**2 + y**2 < self.obstacle_radius**2] = (120, 120, 120)
        image[(x - self._goal[0]) ** 2 + (y - self._goal[1]) ** 2 < self.goal_radius**2] = (40, 170, 60)
        image[(x - self._position[0]) ** 2 + (y - self._position[1]) ** 2 < 0.04**2] = (30, 60, 220)
        return image
