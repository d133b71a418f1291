"""Diagnostics of a Gaussian-mixture policy, logged through SB3's logger (so TensorBoard and W&B both get them).

Usable from an rl-zoo config::

    callback:
      - sb3_gmm.callbacks.GMMDiagnosticsCallback:
          plot_freq: 10
"""

from typing import Any, Dict, Optional, Union

import numpy as np
import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Image
from stable_baselines3.common.utils import obs_as_tensor

from sb3_gmm.entropy import ESTIMATORS, gmm_entropy
from sb3_gmm.plotting import (
    figure_to_rgb,
    is_squashed,
    observation_batch_size,
    plot_distribution,
    policy_distribution,
)

Observations = Union[np.ndarray, Dict[str, np.ndarray]]

# An off-policy "rollout" is train_freq steps (one step by default): record this often instead.
OFF_POLICY_RECORD_FREQ = 1000


class GMMDiagnosticsCallback(BaseCallback):
    """At the end of rollouts, record how the mixture policy looks on a sample of recent observations.

    Works with on-policy models (PPO, A2C, TRPO, RecurrentPPO: states from the rollout just collected, every
    rollout) and off-policy ones (SAC, TQC: the replay buffer's states since the last record, first once it holds
    ``n_observations`` states, then every ``record_freq`` steps), with array or Dict observations.

    Keys (means over the sampled states), for PPO-family policies:
    ``gmm/entropy`` (the policy's configured estimator), ``gmm/entropy_lower`` and ``gmm/entropy_upper`` (the
    pairwise Bhattacharyya and KL bounds: the true entropy lies between them), ``gmm/weight_entropy`` (entropy of
    the mixture weights), ``gmm/effective_components`` (``exp`` of it), ``gmm/std_min``, ``gmm/std_mean``,
    ``gmm/std_max`` (over components and action dims), ``gmm/mean_separation`` (mean distance between pairs of
    component means divided by the mean std: below ~1 the components overlap, above ~4 they are distinct modes).

    A tanh-squashed policy (SAC, TQC) is a mixture in pre-squash coordinates pushed through tanh. ``gmm/entropy`` is
    then the distribution's own estimate of the entropy of the actions in ``[-1, 1]^D`` (``entropy()``: the
    pre-squash estimate plus the expected log-Jacobian; what SAC's target entropy refers to). The estimator's
    pre-squash value, its bracket, the stds and the separation describe the pre-squash mixture and are logged as
    ``gmm/pre_squash_entropy``, ``gmm/pre_squash_entropy_lower``, ``gmm/pre_squash_entropy_upper``,
    ``gmm/pre_squash_std_min`` / ``_mean`` / ``_max`` and ``gmm/pre_squash_mean_separation``. The weights are the
    same before and after squashing, so ``gmm/weight_entropy`` and ``gmm/effective_components`` keep their names.
    tanh contracts, so the squashed entropy is below the pre-squash one.

    Every ``plot_freq`` records, ``gmm/action_density`` is an image of the action density for a few fixed
    observations (taken at the first record), a W&B image too when a W&B run is active. The figure is rendered and
    dropped at once, so nothing accumulates between logger dumps.

    :param n_observations: states sampled (evenly) at each record
    :param plot_freq: plot every this many records (0 disables plots); for on-policy models a record is a rollout
    :param n_plot_observations: observations in the figure (fixed: taken at the first record)
    :param record_freq: at least this many environment steps between records; None: every rollout for on-policy
        models, ``OFF_POLICY_RECORD_FREQ`` for off-policy ones
    :param verbose: verbosity
    """

    def __init__(
        self,
        n_observations: int = 256,
        plot_freq: int = 10,
        n_plot_observations: int = 3,
        record_freq: Optional[int] = None,
        verbose: int = 0,
    ):
        super().__init__(verbose)
        if n_observations < 1:
            raise ValueError(f"n_observations must be >= 1, got {n_observations}")
        if plot_freq < 0:
            raise ValueError(f"plot_freq must be >= 0 (0 disables plots), got {plot_freq}")
        if n_plot_observations < 1:
            raise ValueError(f"n_plot_observations must be >= 1, got {n_plot_observations}")
        if record_freq is not None and record_freq < 0:
            raise ValueError(f"record_freq must be >= 0 environment steps (or None for the default), got {record_freq}")
        self.n_observations = n_observations
        self.plot_freq = plot_freq
        self.n_plot_observations = n_plot_observations
        self.record_freq = record_freq
        self.n_records = 0
        self.last_record_timestep: Optional[int] = None
        self.plot_observations: Optional[Union[th.Tensor, Dict[str, th.Tensor]]] = None

    @property
    def n_rollouts(self) -> int:
        """Records made so far (kept under its old name: for on-policy models a record is a rollout)."""
        return self.n_records

    def _on_step(self) -> bool:
        return True

    def _record_interval(self) -> int:
        if self.record_freq is not None:
            return self.record_freq
        return 0 if getattr(self.model, "rollout_buffer", None) is not None else OFF_POLICY_RECORD_FREQ

    def _sample_observations(self) -> Optional[Observations]:
        """Up to ``n_observations`` recent states, evenly spaced, in the buffer's layout with envs flattened."""
        buffer = getattr(self.model, "rollout_buffer", None)
        on_policy = buffer is not None
        if not on_policy:
            buffer = getattr(self.model, "replay_buffer", None)
        observations = getattr(buffer, "observations", None)
        if observations is None:
            return None
        n_filled = buffer.buffer_size if buffer.full else buffer.pos
        n_envs = buffer.n_envs
        # A replay buffer starts almost empty: wait until it holds a full sample (the figure's states are fixed at
        # the first record, so they would otherwise be the very first state).
        if n_filled * n_envs < min(self.n_observations, buffer.buffer_size * n_envs) or n_filled == 0:
            return None
        n_positions = min(n_filled, -(-self.n_observations // n_envs))
        if on_policy:
            # The whole rollout just collected.
            window = n_filled
        else:
            # The replay buffer's newest entries, back to the last record (it is a ring: pos is the next write).
            since_last = self.model.num_timesteps - (self.last_record_timestep or 0)
            window = min(n_filled, max(n_positions, -(-since_last // n_envs)))
        offsets = np.linspace(0, window - 1, n_positions).round().astype(int)
        positions = (buffer.pos - window + offsets) % buffer.buffer_size if not on_policy else offsets

        def take(array: np.ndarray) -> np.ndarray:
            # Fancy indexing copies, so later writes to the buffer cannot change what was taken.
            rows = array[positions].reshape(-1, *array.shape[2:])
            index = np.linspace(0, len(rows) - 1, min(self.n_observations, len(rows))).round().astype(int)
            return rows[index]

        if isinstance(observations, dict):
            sampled: Observations = {key: take(value) for key, value in observations.items()}
        else:
            sampled = take(observations)
        vec_normalize = self.model.get_vec_normalize_env()
        if not on_policy and vec_normalize is not None:
            # A replay buffer stores raw observations and normalises them when sampled; a rollout buffer stores
            # what the policy saw.
            sampled = vec_normalize.normalize_obs(sampled)
        return sampled

    def _on_rollout_end(self) -> None:
        timestep = self.model.num_timesteps
        if self.last_record_timestep is not None and timestep - self.last_record_timestep < self._record_interval():
            return
        observations = self._sample_observations()
        if observations is None:
            return
        self.n_records += 1
        policy = self.model.policy
        # Buffer contents are already in the layout training feeds the policy (e.g. Discrete as [N, 1]), so they
        # go straight to tensors; policy.obs_to_tensor is for observations as an env returns them.
        obs_tensor = obs_as_tensor(observations, policy.device)
        with th.no_grad():
            distribution = policy_distribution(policy, obs_tensor)
            self._record_statistics(distribution)
        self.last_record_timestep = timestep
        if self.plot_observations is None:
            n_rows = observation_batch_size(obs_tensor)
            rows = np.linspace(0, n_rows - 1, min(self.n_plot_observations, n_rows)).round().astype(int)
            if isinstance(obs_tensor, dict):
                self.plot_observations = {key: value[rows] for key, value in obs_tensor.items()}
            else:
                self.plot_observations = obs_tensor[rows]
        if self.plot_freq and (self.n_records - 1) % self.plot_freq == 0:
            self._record_figure()

    def _record_statistics(self, distribution: Any) -> None:
        logits, means, stds = distribution.logits, distribution.means, distribution.stds
        squashed = is_squashed(distribution)
        log_weights = th.log_softmax(logits, dim=-1)
        weight_entropy = -(log_weights.exp() * log_weights).sum(-1)
        n_components = means.shape[-2]
        if n_components > 1:
            distances = th.cdist(means, means)  # [B, K, K]
            pairs = n_components * (n_components - 1)
            separation = (distances.sum((-1, -2)) / pairs) / stds.mean((-1, -2))
        else:
            separation = th.zeros(means.shape[0])
        # The distribution's configured estimator; one that names none (a third-party squashed actor) gets the
        # library default.
        method = getattr(distribution, "entropy_method", None)
        options = dict(getattr(distribution, "entropy_kwargs", None) or {})
        if method not in ESTIMATORS:
            method, options = None, {}
        entropy = gmm_entropy(logits, means, stds, method=method, **options)
        prefix = "gmm/pre_squash_" if squashed else "gmm/"
        record = self.logger.record
        record(f"{prefix}entropy", entropy.mean().item())
        lower = gmm_entropy(logits, means, stds, method="pairwise_bhattacharyya")
        record(f"{prefix}entropy_lower", lower.mean().item())
        record(f"{prefix}entropy_upper", gmm_entropy(logits, means, stds, method="pairwise_kl").mean().item())
        record("gmm/weight_entropy", weight_entropy.mean().item())
        record("gmm/effective_components", weight_entropy.exp().mean().item())
        record(f"{prefix}std_min", stds.min().item())
        record(f"{prefix}std_mean", stds.mean().item())
        record(f"{prefix}std_max", stds.max().item())
        record(f"{prefix}mean_separation", separation.mean().item())
        if squashed:
            record("gmm/entropy", distribution.entropy().mean().item())

    def _record_figure(self) -> None:
        policy = self.model.policy
        with th.no_grad():
            distribution = policy_distribution(policy, self.plot_observations)
        titles = [f"obs {i}" for i in range(distribution.means.shape[0])]
        # The figure is not registered with pyplot, so it is freed once rendered. The logger keeps only the pixels
        # until its next dump (A2C dumps every 100 rollouts by default), and each record replaces the last.
        image = figure_to_rgb(plot_distribution(distribution, policy.action_space, row_titles=titles))
        try:
            import wandb

            if wandb.run is not None:
                wandb.log({"gmm/action_density": wandb.Image(image)}, commit=False)
        except ImportError:
            pass
        self.logger.record("gmm/action_density", Image(image, "HWC"), exclude=("stdout", "log", "json", "csv"))
