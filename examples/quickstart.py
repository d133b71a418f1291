"""PPO with a Gaussian-mixture policy in a few lines.

python examples/quickstart.py --timesteps 100000 --save-path gmm_pendulum.zip
"""

import argparse

from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

from sb3_gmm import GMMActorCriticPolicy
from sb3_gmm.hyperparams import algorithm_kwargs, hyperparams

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--timesteps", type=int, default=100_000)
parser.add_argument("--save-path", default="gmm_pendulum.zip")
args = parser.parse_args()

# rl-zoo's Pendulum settings without gSDE (zoo_configs/ppo.yml): n_components=4 mixture components, the library's
# default entropy estimator.
env = make_vec_env("Pendulum-v1", n_envs=hyperparams("ppo", "Pendulum-v1")["n_envs"], seed=0)
model = PPO(GMMActorCriticPolicy, env, seed=0, **algorithm_kwargs("ppo", "Pendulum-v1"))
model.learn(total_timesteps=args.timesteps)
model.save(args.save_path)
action, _ = model.predict(model.env.reset(), deterministic=True)
print(f"saved {args.save_path}; deterministic action at a fresh start: {action.ravel()}")
