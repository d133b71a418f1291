"""PPO with a Gaussian-mixture policy in a few lines.

python examples/quickstart.py --timesteps 100000 --save-path gmm_pendulum.zip
"""

import argparse

from stable_baselines3 import PPO

from sb3_gmm import GMMActorCriticPolicy

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--timesteps", type=int, default=100_000)
parser.add_argument("--save-path", default="gmm_pendulum.zip")
args = parser.parse_args()

# rl-zoo's Pendulum settings without gSDE; n_components=4 mixture components, the library's default entropy estimator.
model = PPO(GMMActorCriticPolicy, "Pendulum-v1", n_steps=1024, batch_size=64, gamma=0.9, gae_lambda=0.95,
            learning_rate=1e-3, policy_kwargs=dict(n_components=4), seed=0)  # fmt: skip
model.learn(total_timesteps=args.timesteps)
model.save(args.save_path)
action, _ = model.predict(model.env.reset(), deterministic=True)
print(f"saved {args.save_path}; deterministic action at a fresh start: {action.ravel()}")
