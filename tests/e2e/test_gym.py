"""worldserve.gym against a real local cluster: Gymnasium's env checker, make / make_vec, options,
autoreset, one StepBatch per vector step, bad actions refused before any RPC, close() cleans up."""

from __future__ import annotations

import time

import grpc
import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import worldserve.gym  # noqa: F401 - registers worldserve/World-v0
from worldserve.client import WorldClient
from worldserve.gym import ENV_ID, WorldEnv, WorldVectorEnv


class CountingClient(WorldClient):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls: dict[str, int] = {}

    def _count(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1

    def step(self, *a, **kw):
        self._count("step")
        return super().step(*a, **kw)

    def step_batch(self, *a, **kw):
        self._count("step_batch")
        return super().step_batch(*a, **kw)


def test_the_env_passes_gymnasiums_checker(cluster):
    env = gym.make(ENV_ID, target=cluster["target"], api_key=cluster["key_a"], max_episode_steps=5)
    try:
        check_env(env.unwrapped, skip_render_check=True)
        obs, info = env.reset(seed=3)
        assert obs.shape == (64, 64, 3) and obs.dtype == np.uint8 and env.observation_space.contains(obs)
        assert isinstance(env.action_space, gym.spaces.Dict)
        assert env.action_space["keys"].n == 6 and env.action_space["mouse"].shape == (2,)
        a = {"keys": np.array([0, 1, 0, 0, 0, 0], np.int8), "mouse": np.zeros(2, np.float32)}  # right
        truncs = []
        for _ in range(5):
            obs, reward, term, trunc, info = env.step(a)
            truncs.append(trunc)
        assert truncs == [False] * 4 + [True] and reward == 0.0 and not term and info["step"] == 5
        again, _ = env.reset(seed=3)  # same seed, same world
        assert np.array_equal(again, env.reset(seed=3)[0])
    finally:
        env.close()


def test_discrete_actions_options_rewards_and_cleanup(cluster):
    client = CountingClient(cluster["target"], cluster["key_a"], timeout_s=60)
    env = WorldEnv(client=client, discrete=True, reward_fn=lambda frame, info: float(frame.mean() > 0))
    try:
        assert env.action_space == gym.spaces.Discrete(64)
        obs, info = env.reset(seed=1, options={"prompt": "a yellow box on the left, snow, night"})
        parent = env.session_id
        _, r, _, _, info = env.step(2)  # bit 1: right
        _, r, _, _, info = env.step(0)
        assert r == 1.0 and info["step"] == 2
        assert client.get_session(parent).step == 2
        with pytest.raises(gym.error.InvalidAction):
            env.step(64)
        with pytest.raises(gym.error.InvalidAction):
            env.step({"keys": [1], "mouse": [0.0]})
        assert client.calls == {"step": 2}  # refused before any RPC
        # a fork of the parent at step 1 starts from the parent's frame 1
        frames = [f for f in client.export_session(parent, fmt="raw")]
        fork_obs, finfo = env.reset(seed=2, options={"fork_of": parent, "step": 1})
        assert np.array_equal(fork_obs, np.frombuffer(frames[1].frame.data, np.uint8).reshape(64, 64, 3))
        with pytest.raises(grpc.RpcError) as e:
            env.reset(options={"fork_of": "s_nope"})
        assert e.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(ValueError, match="unknown reset options"):
            env.reset(options={"colour": "red"})
        made = list(env.world.made)
        assert made
    finally:
        env.close()
    with WorldClient(cluster["target"], cluster["key_a"]) as c:
        for sid in made:
            with pytest.raises(grpc.RpcError) as e:
                c.get_session(sid)
            assert e.value.code() == grpc.StatusCode.NOT_FOUND  # close() deleted what it made


def test_the_vector_env_steps_with_one_step_batch_and_autoresets(cluster):
    client = CountingClient(cluster["target"], cluster["key_a"], timeout_s=60)
    envs = WorldVectorEnv(4, client=client, max_episode_steps=2)
    try:
        obs, info = envs.reset(seed=0)
        assert obs.shape == (4, 64, 64, 3) and envs.observation_space.contains(obs)
        first_ids = list(info["session_id"])
        acts = envs.action_space.sample()
        out = [envs.step(acts) for _ in range(3)]
        assert client.calls == {"step_batch": 2}  # one StepBatch per vector step (the third only resets)
        assert not out[0][3].any() and out[1][3].all()  # truncated at max_episode_steps
        obs3, rew3, term3, trunc3, info3 = out[2]  # next-step autoreset: new episodes' first frames
        assert not trunc3.any() and not term3.any() and (rew3 == 0).all()
        assert all(a != b for a, b in zip(first_ids, info3["session_id"]))
        with pytest.raises(gym.error.InvalidAction):
            envs.step({"keys": np.zeros((3, 6), np.int8), "mouse": np.zeros((3, 2), np.float32)})
        with WorldClient(cluster["target"], cluster["key_a"]) as c:
            with pytest.raises(grpc.RpcError):  # the finished episodes' sessions were deleted
                c.get_session(first_ids[0])
    finally:
        envs.close()


def test_make_vec_and_steps_per_second(cluster):
    envs = gym.make_vec(ENV_ID, num_envs=8, target=cluster["target"], api_key=cluster["key_a"])
    try:
        assert isinstance(envs.unwrapped, WorldVectorEnv)
        envs.reset(seed=5)
        acts = envs.action_space.sample()
        envs.step(acts)
        t0 = time.perf_counter()
        for _ in range(3):
            envs.step(acts)
        batched = 3 * 8 / (time.perf_counter() - t0)
        ids = list(envs.unwrapped.session_ids)
        with WorldClient(cluster["target"], cluster["key_a"]) as c:
            t0 = time.perf_counter()
            for _ in range(3):
                for sid in ids:
                    c.step(sid, ["right"], fmt="raw")
            single = 3 * 8 / (time.perf_counter() - t0)
        print(f"8 envs: {batched:.1f} env-steps/s with one StepBatch per vector step, {single:.1f} with 8 Steps")
        assert batched > 0 and single > 0
    finally:
        envs.close()
