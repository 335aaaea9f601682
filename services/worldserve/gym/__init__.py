"""Gymnasium environments over the worldserve API (``pip install 'worldserve[gym]'``).

    import gymnasium as gym
    import worldserve.gym  # registers worldserve/World-v0

    env = gym.make("worldserve/World-v0", target="127.0.0.1:9000", api_key="ws_...", model="")
    envs = gym.make_vec("worldserve/World-v0", num_envs=64, target=..., api_key=...)  # one StepBatch per step

See :mod:`worldserve.gym.env`.
"""

from gymnasium.envs.registration import register, registry

from .env import DEFAULT_PROMPT, WorldEnv, WorldVectorEnv

ENV_ID = "worldserve/World-v0"

if ENV_ID not in registry:
    register(
        id=ENV_ID, entry_point="worldserve.gym.env:WorldEnv", vector_entry_point="worldserve.gym.env:WorldVectorEnv"
    )

__all__ = ["ENV_ID", "DEFAULT_PROMPT", "WorldEnv", "WorldVectorEnv"]
