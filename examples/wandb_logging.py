"""Log a GMM policy's training to Weights & Biases (works offline: WANDB_MODE=offline, no login needed).

    WANDB_MODE=offline python examples/wandb_logging.py --project sb3-gmm --timesteps 50000

SB3 writes TensorBoard scalars, W&B syncs them (sync_tensorboard=True), and GMMDiagnosticsCallback adds the gmm/*
keys (entropy and its bracket, effective components, std range, separation) and action-density images.
"""

import argparse

import wandb
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import CallbackList
from wandb.integration.sb3 import WandbCallback

from sb3_gmm import GMMActorCriticPolicy
from sb3_gmm.callbacks import GMMDiagnosticsCallback
from sb3_gmm.hyperparams import algorithm_kwargs

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--project", default="sb3-gmm")
parser.add_argument("--timesteps", type=int, default=50_000)
parser.add_argument("--n-components", type=int, default=4)
args = parser.parse_args()

config = dict(env="Pendulum-v1", n_components=args.n_components, timesteps=args.timesteps)
run = wandb.init(project=args.project, config=config, sync_tensorboard=True)
# rl-zoo's Pendulum settings without gSDE (zoo_configs/ppo.yml), with the chosen number of components
ppo_kwargs = algorithm_kwargs("ppo", "Pendulum-v1")
ppo_kwargs["policy_kwargs"]["n_components"] = args.n_components
model = PPO(GMMActorCriticPolicy, "Pendulum-v1", tensorboard_log=f"{run.dir}/tensorboard", seed=0, **ppo_kwargs)
model.learn(args.timesteps, callback=CallbackList([WandbCallback(), GMMDiagnosticsCallback(plot_freq=5)]))
run.finish()
print(f"W&B run directory: {run.dir}")
