"""Diagnostics of a Gaussian-mixture policy, logged through SB3's logger (so TensorBoard and W&B both get them).

Usable from an rl-zoo config::

    callback:
      - sb3_gmm.callbacks.GMMDiagnosticsCallback:
          plot_freq: 10
"""

from typing import Any, Optional

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Figure

from sb3_gmm.entropy import gmm_entropy
from sb3_gmm.plotting import plot_policy_density, policy_distribution


class GMMDiagnosticsCallback(BaseCallback):
    """After every rollout, record how the mixture policy looks on a sample of the rollout's observations.

    Keys (means over the sampled states): ``gmm/entropy`` (the policy's configured estimator), ``gmm/entropy_lower``
    and ``gmm/entropy_upper`` (the pairwise Bhattacharyya and KL bounds: the true entropy lies between them),
    ``gmm/weight_entropy`` (entropy of the mixture weights), ``gmm/effective_components`` (``exp`` of it),
    ``gmm/std_min``, ``gmm/std_mean``, ``gmm/std_max`` (over components and action dims),
    ``gmm/mean_separation`` (mean distance between pairs of component means divided by the mean std: below ~1 the
    components overlap, above ~4 they are distinct modes). Every ``plot_freq`` rollouts ``gmm/action_density`` is a
    figure of the action density for a few fixed observations (a W&B image too when a W&B run is active).

    :param n_observations: states sampled (evenly) from each rollout
    :param plot_freq: plot every this many rollouts (0 disables plots)
    :param n_plot_observations: observations in the figure (fixed: taken from the first rollout)
    :param verbose: verbosity
    """

    def __init__(self, n_observations: int = 256, plot_freq: int = 10, n_plot_observations: int = 3, verbose: int = 0):
        super().__init__(verbose)
        if n_observations < 1:
            raise ValueError(f"n_observations must be >= 1, got {n_observations}")
        if plot_freq < 0:
            raise ValueError(f"plot_freq must be >= 0 (0 disables plots), got {plot_freq}")
        self.n_observations = n_observations
        self.plot_freq = plot_freq
        self.n_plot_observations = n_plot_observations
        self.n_rollouts = 0
        self.plot_observations: Optional[np.ndarray] = None

    def _on_step(self) -> bool:
        return True

    def _rollout_observations(self) -> Optional[np.ndarray]:
        buffer = getattr(self.model, "rollout_buffer", None)
        observations = getattr(buffer, "observations", None)
        if observations is None or isinstance(observations, dict):
            return None
        flat = observations.reshape(-1, *observations.shape[2:])
        index = np.linspace(0, len(flat) - 1, min(self.n_observations, len(flat))).astype(int)
        return flat[index]

    def _on_rollout_end(self) -> None:
        self.n_rollouts += 1
        observations = self._rollout_observations()
        if observations is None:
            if self.verbose and self.n_rollouts == 1:
                print("GMMDiagnosticsCallback: no array observations in the rollout buffer; skipping diagnostics")
            return
        policy = self.model.policy
        with th.no_grad():
            obs_tensor, _ = policy.obs_to_tensor(observations)
            distribution = policy_distribution(policy, obs_tensor)
            self._record_statistics(distribution)
        if self.plot_observations is None:
            self.plot_observations = observations[:: max(1, len(observations) // self.n_plot_observations)]
            self.plot_observations = self.plot_observations[: self.n_plot_observations]
        if self.plot_freq and (self.n_rollouts - 1) % self.plot_freq == 0:
            self._record_figure()

    def _record_statistics(self, distribution: Any) -> None:
        logits, means, stds = distribution.logits, distribution.means, distribution.stds
        log_weights = th.log_softmax(logits, dim=-1)
        weight_entropy = -(log_weights.exp() * log_weights).sum(-1)
        n_components = means.shape[-2]
        if n_components > 1:
            distances = th.cdist(means, means)  # [B, K, K]
            pairs = n_components * (n_components - 1)
            separation = (distances.sum((-1, -2)) / pairs) / stds.mean((-1, -2))
        else:
            separation = th.zeros(means.shape[0])
        record = self.logger.record
        record("gmm/entropy", distribution.entropy().mean().item())
        record("gmm/entropy_lower", gmm_entropy(logits, means, stds, method="pairwise_bhattacharyya").mean().item())
        record("gmm/entropy_upper", gmm_entropy(logits, means, stds, method="pairwise_kl").mean().item())
        record("gmm/weight_entropy", weight_entropy.mean().item())
        record("gmm/effective_components", weight_entropy.exp().mean().item())
        record("gmm/std_min", stds.min().item())
        record("gmm/std_mean", stds.mean().item())
        record("gmm/std_max", stds.max().item())
        record("gmm/mean_separation", separation.mean().item())

    def _record_figure(self) -> None:
        figure = plot_policy_density(self.model, self.plot_observations)
        try:
            import wandb

            if wandb.run is not None:
                wandb.log({"gmm/action_density": wandb.Image(figure)}, commit=False)
        except ImportError:
            pass
        self.logger.record("gmm/action_density", Figure(figure, close=True), exclude=("stdout", "log", "json", "csv"))
