"""sb3_gmm.plotting draws the right densities (plain and tanh-squashed), for array and Dict observations, without
touching matplotlib's global state."""

import os
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from gymnasium import spaces
from PIL import Image
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from sb3_gmm import GMMActorCriticPolicy, GMMMultiInputActorCriticPolicy
from sb3_gmm.plotting import (
    component_densities,
    figure_to_rgb,
    plot_distribution,
    plot_mixture,
    plot_mixtures,
    plot_policy_density,
    policy_distribution,
)


class SquashedMixture:
    """The squashed-distribution contract of the SAC/TQC actors, written out independently of sb3_gmm: a diagonal
    mixture in pre-squash coordinates pushed through tanh, with the exact log density of actions in (-1, 1)^D."""

    squashed = True

    def __init__(self, logits: th.Tensor, means: th.Tensor, stds: th.Tensor):
        self.logits, self.means, self.stds = logits, means, stds

    def log_prob(self, actions: th.Tensor) -> th.Tensor:
        pre_squash = th.atanh(actions)
        components = th.distributions.Independent(th.distributions.Normal(self.means, self.stds), 1)
        mixture = th.distributions.MixtureSameFamily(th.distributions.Categorical(logits=self.logits), components)
        return mixture.log_prob(pre_squash) - th.log1p(-actions.square()).sum(-1)


def two_mode_mixture(dim: int) -> SquashedMixture:
    """One state, K = 3: two well-separated modes and a wide component (its tanh image piles up near the edges)."""
    logits = th.tensor([[0.3, -0.2, 0.0]], dtype=th.float64)
    means = th.tensor([[-1.0, 0.2], [0.8, -0.5], [0.0, 0.3]], dtype=th.float64)[None, :, :dim]
    stds = th.tensor([[0.3, 0.5], [0.4, 0.25], [0.9, 0.7]], dtype=th.float64)[None, :, :dim]
    return SquashedMixture(logits, means, stds)


def mixture_line(ax):
    """The black total-density line of a marginal panel (the components are dashed, the bounds dotted)."""
    (line,) = [line for line in ax.lines if line.get_label() in ("mixture", "squashed mixture")]
    return line


def test_importing_leaves_the_backend_and_pyplot_alone(tmp_path):
    """Importing the modules, plotting and saving must not switch the user's backend nor register figures."""
    script = (
        "import sys, matplotlib, torch as th\n"
        "import sb3_gmm.callbacks, sb3_gmm.plotting\n"
        "from sb3_gmm.plotting import plot_mixture\n"
        "figure = plot_mixture(th.zeros(2), th.randn(2, 2), th.ones(2, 2), bounds=[(-1, 1), (-1, 1)])\n"
        f"figure.savefig({str(tmp_path / 'mixture.png')!r})\n"
        "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)\n"
    )
    environment = dict(os.environ, MPLBACKEND="svg")
    result = subprocess.run([sys.executable, "-c", script], env=environment, capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["svg", "False"]
    assert Image.open(tmp_path / "mixture.png").size == (3 * 320, 260)  # 2 marginals + 1 pair, one row, at dpi 100


def test_plain_marginal_is_the_mixture_density():
    """Against torch's own mixture log density, and it integrates to 1 over the plotted range."""
    logits, means, stds = th.tensor([0.5, -0.5]), th.tensor([[-2.0, 0.0], [1.0, 3.0]]), th.tensor([[0.5, 1], [1, 2]])
    grid = th.linspace(-8, 8, 4001, dtype=th.float64)
    density = component_densities(grid[:, None], logits, means, stds, [0]).sum(-1)
    normal = th.distributions.Normal(means[:, 0].double(), stds[:, 0].double())
    reference = th.distributions.MixtureSameFamily(th.distributions.Categorical(logits=logits.double()), normal)
    th.testing.assert_close(density.log(), reference.log_prob(grid))
    assert th.trapezoid(density, grid).item() == pytest.approx(1.0, abs=1e-6)


def test_squashed_marginal_integrates_to_one_inside_the_bounds_and_matches_log_prob():
    """A squashed mixture's mass is all inside the box; in D = 1 the drawn density is exp(log_prob) of the contract,
    rescaled from [-1, 1] to the action space's units (half-range 2 here)."""
    distribution = two_mode_mixture(dim=1)
    bounds = [(-2.0, 2.0)]
    # A grid fine near the edges, where the wide component's tanh image piles up.
    grid = 2.0 * th.tanh(th.linspace(-9, 9, 20001, dtype=th.float64))
    grid = grid[(grid > -2) & (grid < 2)]
    density = component_densities(grid[:, None], distribution.logits[0], distribution.means[0],
                                  distribution.stds[0], [0], squashed=True, bounds=bounds).sum(-1)  # fmt: skip
    th.testing.assert_close(density, distribution.log_prob(grid[:, None] / 2.0).exp() / 2.0)
    assert th.trapezoid(density, grid).item() == pytest.approx(1.0, abs=1e-4)


def test_squashed_pair_matches_samples():
    """The 2-D squashed density against a histogram of tanh-squashed samples (independent of the formula)."""
    distribution = two_mode_mixture(dim=2)
    generator = th.Generator().manual_seed(0)
    n_samples = 200_000
    components = th.multinomial(th.softmax(distribution.logits[0], -1), n_samples, True, generator=generator)
    noise = th.randn(n_samples, 2, generator=generator, dtype=th.float64)
    actions = th.tanh(distribution.means[0][components] + distribution.stds[0][components] * noise)
    edges = th.linspace(-1, 1, 11, dtype=th.float64)
    histogram = np.histogram2d(actions[:, 0].numpy(), actions[:, 1].numpy(), bins=[edges.numpy()] * 2)[0]
    # Cell probabilities of the drawn density by a fine midpoint rule inside each cell.
    fine = th.linspace(-1, 1, 401, dtype=th.float64)
    centres = (fine[1:] + fine[:-1]) / 2
    xx, yy = th.meshgrid(centres, centres, indexing="ij")
    points = th.stack([xx.reshape(-1), yy.reshape(-1)], -1)
    density = component_densities(points, distribution.logits[0], distribution.means[0], distribution.stds[0],
                                  [0, 1], squashed=True).sum(-1).reshape(400, 400)  # fmt: skip
    cell_mass = (density * (2 / 400) ** 2).reshape(10, 40, 10, 40).sum((1, 3)).numpy()
    assert cell_mass.sum() == pytest.approx(1.0, abs=2e-3)
    standard_error = np.sqrt(cell_mass * (1 - cell_mass) / n_samples)
    # Midpoint-rule error is largest in the edge cells, where the density is steepest.
    assert np.all(np.abs(histogram / n_samples - cell_mass) < 5 * standard_error + 2e-3)


def test_squashed_points_outside_the_box_are_refused():
    distribution = two_mode_mixture(dim=1)
    with pytest.raises(ValueError, match="inside the bounds"):
        component_densities(th.tensor([[1.0]]), distribution.logits[0], distribution.means[0], distribution.stds[0],
                            [0], squashed=True)  # fmt: skip


def test_plot_distribution_draws_the_squashed_density_in_env_units():
    """The figure's black line is the squashed density on the box's interior, in the action space's units."""
    distribution = two_mode_mixture(dim=2)
    action_space = spaces.Box(low=np.array([-2.0, 0.0], np.float32), high=np.array([2.0, 1.0], np.float32))
    figure = plot_distribution(distribution, action_space)
    marginal_axes, _, pair_axes = figure.axes
    line = mixture_line(marginal_axes)
    assert line.get_label() == "squashed mixture"
    x, y = line.get_xdata(), line.get_ydata()
    assert -2 < x.min() < -1.98 and 1.98 < x.max() < 2
    expected = component_densities(th.from_numpy(x)[:, None], distribution.logits[0], distribution.means[0],
                                   distribution.stds[0], [0], squashed=True, bounds=[(-2.0, 2.0)]).sum(-1)  # fmt: skip
    np.testing.assert_allclose(y, expected.numpy())
    assert pair_axes.get_xlim()[0] >= -2 and pair_axes.get_ylim() == pytest.approx((0.0, 1.0), abs=0.01)
    assert figure_to_rgb(figure).shape == (260, 3 * 320, 3)


def test_plot_mixtures_grid_and_unbounded_space():
    """One row per state; an action space with infinite bounds is drawn without bound lines (no inf grid)."""
    logits, means, stds = th.zeros(2, 3), th.randn(2, 3, 5), th.ones(2, 3, 5)
    figure = plot_mixtures(logits, means, stds, row_titles=["a", "b"])
    assert len(figure.axes) == 2 * (5 + 2)  # five marginals, pairs (0, 1) and (2, 3)
    assert figure.axes[0].get_ylabel() == "a"
    policy_space = spaces.Box(-np.inf, np.inf, shape=(5,))
    image = figure_to_rgb(plot_distribution(SquashedMixture(logits, means, stds), policy_space))
    assert image.shape[:2] == (2 * 260, 7 * 320)
    assert plot_mixture(logits[0], means[0], stds[0], title="t").texts[0].get_text() == "t"


class DictPointEnv(gym.Env):
    """Dict observations (a Box and a Discrete part), a 2-D continuous action: small enough for a test."""

    def __init__(self):
        self.observation_space = spaces.Dict(
            {"position": spaces.Box(-1.0, 1.0, shape=(3,)), "mode": spaces.Discrete(3)}
        )
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,))
        self.steps = 0

    def _observation(self):
        return {
            "position": self.np_random.uniform(-1, 1, 3).astype(np.float32),
            "mode": int(self.np_random.integers(3)),
        }

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.steps = 0
        return self._observation(), {}

    def step(self, action):
        self.steps += 1
        return self._observation(), -float(np.square(action).sum()), False, self.steps >= 16, {}


def test_plot_policy_density_with_dict_observations(tmp_path):
    """A batch of Dict observations from a VecEnv, and a single one from a plain env, are both drawn and saved."""
    env = make_vec_env(DictPointEnv, n_envs=2, seed=0)
    model = PPO(
        GMMMultiInputActorCriticPolicy, env, n_steps=16, batch_size=32, seed=0, policy_kwargs=dict(n_components=2)
    )
    figure = plot_policy_density(model, env.reset(), path=tmp_path / "dict.png")
    assert len(figure.axes) == 2 * 3  # two states, 2 marginals + 1 pair each
    assert Image.open(tmp_path / "dict.png").size == (3 * 320, 2 * 260)
    single, _ = DictPointEnv().reset(seed=1)
    assert len(plot_policy_density(model.policy, single).axes) == 3
    # The drawn mixture is the policy's for that observation.
    obs_tensor, _ = model.policy.obs_to_tensor(single)
    with th.no_grad():
        distribution = policy_distribution(model.policy, obs_tensor)
        marginal = mixture_line(plot_policy_density(model, single).axes[0])
        expected = component_densities(th.from_numpy(marginal.get_xdata())[:, None], distribution.logits[0],
                                       distribution.means[0], distribution.stds[0], [0]).sum(-1)  # fmt: skip
    np.testing.assert_allclose(marginal.get_ydata(), expected.numpy(), rtol=1e-6)


def test_plot_policy_density_draws_at_most_four_states(tmp_path):
    model = PPO(
        GMMActorCriticPolicy, "Pendulum-v1", n_steps=16, batch_size=16, seed=0, policy_kwargs=dict(n_components=2)
    )
    observations = np.stack([model.observation_space.sample() for _ in range(6)])
    assert len(plot_policy_density(model, observations).axes) == 4


def test_policy_distribution_refuses_a_gaussian_policy():
    model = PPO("MlpPolicy", "Pendulum-v1", n_steps=16, batch_size=16)
    with pytest.raises(ValueError, match="GMM policy"):
        plot_policy_density(model, np.zeros((1, 3), dtype=np.float32))
