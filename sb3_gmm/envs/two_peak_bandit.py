"""A continuous bandit whose reward has two equally high peaks separated by a penalised valley."""

from typing import TYPE_CHECKING, Any, Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces

if TYPE_CHECKING:
    import torch as th


class TwoPeakBanditEnv(gym.Env):
    """Repeated continuous bandit with two separated optimal actions per dimension.

    Each step the agent picks ``a`` in ``[-1, 1]^D`` and receives the mean over dimensions of

    ``r(a_d) = max(bump(a_d - c), bump(a_d + c)) - depth * max(0, 1 - (a_d / w)^2)``,

    with ``bump(x) = exp(-x^2 / (2 s^2))``, peaks at ``+-c`` (``peak_position``, width ``s`` = ``peak_width``)
    and a valley penalty of depth ``depth`` (``valley_depth``) supported on ``|a_d| < w`` (``valley_width``).
    The observation is the fraction of the episode still to play (1.0 at the first step), and the episode
    terminates after ``episode_length`` steps.

    Optimal return: every per-step reward is at most 1, reached exactly at ``a_d = +-c`` for every ``d`` (the
    valley penalty is zero there and the other bump does not count because of the max), so the best
    deterministic return is ``episode_length`` (5.0 with the defaults) whatever ``action_dim`` is. Always playing
    ``a = 0`` (the valley, where a single Gaussian straddling both peaks is centred) earns about ``-depth`` per
    step (-2.5 per episode with the defaults).

    Why it is multimodal: both peaks are equally good, so under an entropy bonus the best stochastic policy
    spreads its mass over both of them. A single Gaussian can only do that by covering the valley; a mixture
    can put one component on each peak. For moderate bonuses the best single Gaussian therefore sits on one peak
    and gives up ``alpha * log 2`` of the per-step objective ``E[r] + alpha * H`` (computed by
    ``benchmarks/rl_compare.py``, see docs/rl_results.md).

    :param action_dim: number of action dimensions D (each has its own pair of peaks)
    :param episode_length: steps per episode
    :param peak_position: distance ``c`` of each peak from 0, in (0, 1]
    :param peak_width: standard deviation ``s`` of each reward bump
    :param valley_width: half-width ``w`` of the penalised valley around 0 (must be below ``peak_position``)
    :param valley_depth: penalty at ``a_d = 0``
    :param render_mode: None or ``"rgb_array"`` (the reward curve with the last action's first coordinate)
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        action_dim: int = 1,
        episode_length: int = 5,
        peak_position: float = 0.6,
        peak_width: float = 0.15,
        valley_width: float = 0.3,
        valley_depth: float = 0.5,
        render_mode: Optional[str] = None,
    ) -> None:
        super().__init__()
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        if int(action_dim) != action_dim or action_dim < 1:
            raise ValueError(f"action_dim must be a positive integer, got {action_dim!r}")
        if int(episode_length) != episode_length or episode_length < 1:
            raise ValueError(f"episode_length must be a positive integer, got {episode_length!r}")
        if not 0.0 < peak_position <= 1.0:
            raise ValueError(f"peak_position must lie in (0, 1] so that the peaks are reachable, got {peak_position}")
        if peak_width <= 0.0:
            raise ValueError(f"peak_width must be positive, got {peak_width}")
        if not 0.0 <= valley_width < peak_position:
            raise ValueError(
                f"valley_width must be in [0, peak_position={peak_position}) so that the peaks stay unpenalised, "
                f"got {valley_width}"
            )
        if valley_depth < 0.0:
            raise ValueError(f"valley_depth must be non-negative, got {valley_depth}")
        self.action_dim = int(action_dim)
        self.episode_length = int(episode_length)
        self.peak_position = float(peak_position)
        self.peak_width = float(peak_width)
        self.valley_width = float(valley_width)
        self.valley_depth = float(valley_depth)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(self.action_dim,), dtype=np.float32)
        self.observation_space = spaces.Box(0.0, 1.0, shape=(1,), dtype=np.float32)
        self._steps_taken = 0
        self._last_action: Optional[np.ndarray] = None

    @property
    def optimal_return(self) -> float:
        """Best achievable (deterministic) undiscounted episode return."""
        return float(self.episode_length)

    @property
    def optimal_actions(self) -> np.ndarray:
        """The two optimal actions along each dimension, ``[-c, +c]`` (any per-dimension choice is optimal)."""
        return np.array([-self.peak_position, self.peak_position], dtype=np.float32)

    def reward_of(self, action: np.ndarray) -> np.ndarray:
        """Per-step reward of actions ``[..., D]`` (clipped to the action box first), shape ``[...]``."""
        return self._reward(np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0), np)

    def reward_of_tensor(self, action: "th.Tensor") -> "th.Tensor":
        """:meth:`reward_of` for torch actions ``[..., D]``, differentiable in the action (a known critic for tests and
        benchmarks of actor gradients); clipped to the action box first."""
        import torch as th

        return self._reward(action.clamp(-1.0, 1.0), th)

    def _reward(self, clipped: Any, xp: Any) -> Any:
        """The reward formula for numpy or torch (``xp``) arrays already inside the action box."""
        scale = 2.0 * self.peak_width**2
        bumps = xp.maximum(
            xp.exp(-((clipped - self.peak_position) ** 2) / scale),
            xp.exp(-((clipped + self.peak_position) ** 2) / scale),
        )
        if self.valley_width > 0.0:
            valley = self.valley_depth * xp.maximum(xp.zeros_like(clipped), 1.0 - (clipped / self.valley_width) ** 2)
        else:
            valley = xp.zeros_like(clipped)
        return (bumps - valley).mean(-1)

    def _observation(self) -> np.ndarray:
        remaining = (self.episode_length - self._steps_taken) / self.episode_length
        return np.array([remaining], dtype=np.float32)

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict[str, Any]] = None):
        super().reset(seed=seed)
        self._steps_taken = 0
        self._last_action = None
        return self._observation(), {}

    def step(self, action: np.ndarray):
        action = np.asarray(action, dtype=np.float64).reshape(self.action_dim)
        reward = float(self.reward_of(action))
        self._last_action = np.clip(action, -1.0, 1.0)
        self._steps_taken += 1
        terminated = self._steps_taken >= self.episode_length
        return self._observation(), reward, terminated, False, {}

    def render(self) -> Optional[np.ndarray]:
        """An ``[96, 160, 3]`` image: the one-dimensional reward curve (black) and the last action (red)."""
        if self.render_mode is None:
            return None
        height, width = 96, 160
        image = np.full((height, width, 3), 255, dtype=np.uint8)
        actions = np.linspace(-1.0, 1.0, width)
        rewards = TwoPeakBanditEnv.reward_of(self, actions[:, None])
        low = min(-self.valley_depth, 0.0)
        rows = np.round((1.0 - (rewards - low) / (1.0 - low)) * (height - 1)).astype(int)
        image[rows, np.arange(width)] = 0
        if self._last_action is not None:
            column = int(round((float(self._last_action[0]) + 1.0) / 2.0 * (width - 1)))
            image[:, column] = (220, 30, 30)
        return image
