"""Gymnasium environments over the worldserve gRPC API (client side: needs gymnasium and the SDK,
not torch or ray).

- :class:`WorldEnv`: one session. ``reset`` creates a world (from a prompt, an image, or a fork of
  another session at a step; on a chosen model), ``step`` sends one action as one Step.
- :class:`WorldVectorEnv`: ``num_envs`` sessions stepped by one StepBatch per vector step, with
  Gymnasium 1.x's default autoreset (next-step mode: the step after an episode ends resets that
  sub-environment and returns its first frame).

Observations are raw RGB8 frames, ``Box(0, 255, (H, W, 3), uint8)`` (no PNG round trip). The action
space comes from the model's ``GetModelInfo``: ``Dict(keys=MultiBinary(K), mouse=Box(-1, 1, (M,)))``,
or ``Discrete(2**K)`` over key combinations (bit i = key i held) with ``discrete=True``. Rewards
come from an optional ``reward_fn(frame, info) -> float`` (0 otherwise; ``info`` holds the step,
and ``session_id`` in the vector env; ``WorldEnv.session_id`` names its session); episodes never terminate
on their own and are truncated at ``max_episode_steps``. ``close()`` deletes the sessions the
environment made. Server errors surface as ``grpc.RpcError`` with the server's status code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import grpc
import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv

from worldserve.client import WorldClient, new_request_id
from worldserve.v1 import common_pb2, dynamics_pb2

DEFAULT_PROMPT = "a red door on the left, a blue box on the right, grass, day"
RAW = common_pb2.FRAME_FORMAT_RAW_RGB8
RewardFn = Callable[[np.ndarray, dict], float]


def _frame(f: common_pb2.Frame, shape: tuple[int, int, int]) -> np.ndarray:
    if f.format != RAW:
        raise ValueError(f"expected a raw RGB8 frame, got format {f.format}")
    return np.frombuffer(f.data, np.uint8).reshape(shape).copy()


class _World:
    """What both environments share: the client, the model's spaces, making and converting."""

    def __init__(
        self,
        target: str | None,
        api_key: str | None,
        model: str,
        prompt: str,
        discrete: bool,
        max_episode_steps: int,
        reward_fn: RewardFn | None,
        timeout_s: float,
        client: WorldClient | None,
    ):
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        self.client = client or WorldClient(target, api_key, timeout_s=timeout_s)
        self._own_client = client is None
        self.model, self.prompt, self.discrete = model, prompt, discrete
        self.max_episode_steps, self.reward_fn = max_episode_steps, reward_fn
        info = self.client.model_info(model)
        self.model_name = info.name
        self.keys = tuple(info.keys)
        self.mouse_axes = tuple(a.name for a in info.mouse_axes)
        self.shape = (info.frame_height, info.frame_width, 3)
        self.obs_space = spaces.Box(0, 255, self.shape, np.uint8)
        if discrete:
            self.act_space: spaces.Space = spaces.Discrete(2 ** len(self.keys))
        else:
            self.act_space = spaces.Dict(
                {
                    "keys": spaces.MultiBinary(len(self.keys)),
                    "mouse": spaces.Box(-1.0, 1.0, (len(self.mouse_axes),), np.float32),
                }
            )
        self.made: list[str] = []
        self.understood: dict[str, str] = {}  # session -> the caption its free-text prompt was read as

    # -- actions -----------------------------------------------------------------------------------
    def to_action(self, action: Any) -> tuple[list[str], dict[str, float]]:
        """A space element -> (held keys, mouse); raises before any RPC when it is not one."""
        if self.discrete:
            if not self.act_space.contains(np.int64(action) if np.isscalar(action) else action):
                raise gym.error.InvalidAction(f"action {action!r} is not in {self.act_space}")
            a = int(action)
            return [k for i, k in enumerate(self.keys) if a >> i & 1], {}
        if not isinstance(action, Mapping) or set(action) != {"keys", "mouse"}:
            raise gym.error.InvalidAction(f"action must be a dict with 'keys' and 'mouse', got {action!r}")
        keys = np.asarray(action["keys"])
        mouse = np.asarray(action["mouse"], np.float32)
        if keys.shape != (len(self.keys),) or not np.isin(keys, (0, 1)).all():
            raise gym.error.InvalidAction(f"action['keys'] must be {len(self.keys)} values of 0/1, got {keys!r}")
        if mouse.shape != (len(self.mouse_axes),) or not np.all(np.abs(mouse) <= 1.0):
            raise gym.error.InvalidAction(
                f"action['mouse'] must be {len(self.mouse_axes)} values in [-1, 1], got {mouse!r}"
            )
        return [k for k, v in zip(self.keys, keys) if v], {a: float(v) for a, v in zip(self.mouse_axes, mouse) if v}

    # -- sessions ----------------------------------------------------------------------------------
    def new_session(self, seed: int, options: Mapping[str, Any] | None) -> tuple[str, np.ndarray]:
        """Create (or fork) a session as ``options`` say; returns its id and first frame."""
        opts = dict(options or {})
        unknown = set(opts) - {"prompt", "image", "fork_of", "step", "model"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; known: prompt, image, fork_of, step, model")
        c = self.client
        if opts.get("fork_of"):
            s = c.fork_session(opts["fork_of"], step=opts.get("step"), seed=seed)
            self.made.append(s.session_id)
            first = next(iter(c.export_session(s.session_id, include_frames=True, fmt="raw", from_step=s.step)))
            return s.session_id, _frame(first.frame, self.shape)
        model = opts.get("model", self.model)
        if model and self.model and model != self.model_name:
            raise ValueError(f"this environment's spaces are {self.model_name!r}'s; make another for {model!r}")
        kw: dict[str, Any] = dict(seed=seed, include_first_frame=True, fmt="raw", model=model or self.model)
        if opts.get("image") is not None:
            img = opts["image"]
            kw["image"] = (
                img
                if isinstance(img, common_pb2.Frame)
                else common_pb2.Frame(
                    format=RAW,
                    data=np.ascontiguousarray(img, np.uint8).tobytes(),
                    width=img.shape[1],
                    height=img.shape[0],
                )
            )
        else:
            kw["prompt"] = opts.get("prompt", self.prompt)
        s = c.create_session(**kw)
        self.made.append(s.session_id)
        if s.HasField("understood") and s.understood.source == "text":
            self.understood[s.session_id] = s.understood.caption
        return s.session_id, _frame(s.first_frame, self.shape)

    def delete(self, sid: str) -> None:
        try:
            self.client.delete_session(sid)
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.NOT_FOUND:
                raise
        if sid in self.made:
            self.made.remove(sid)

    def reward(self, frame: np.ndarray, info: dict) -> float:
        return float(self.reward_fn(frame, info)) if self.reward_fn is not None else 0.0

    def close(self) -> None:
        for sid in list(self.made):
            try:
                self.delete(sid)
            except grpc.RpcError:
                pass
        if self._own_client:
            self.client.close()


class WorldEnv(gym.Env):
    """One world session as a Gymnasium environment (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        target: str | None = None,
        api_key: str | None = None,
        *,
        model: str = "",
        prompt: str = DEFAULT_PROMPT,
        discrete: bool = False,
        max_episode_steps: int = 200,
        reward_fn: RewardFn | None = None,
        render_mode: str | None = None,
        timeout_s: float = 60.0,
        client: WorldClient | None = None,
    ):
        self.world = _World(target, api_key, model, prompt, discrete, max_episode_steps, reward_fn, timeout_s, client)
        self.observation_space = self.world.obs_space
        self.action_space = self.world.act_space
        self.render_mode = render_mode
        self.session_id: str | None = None
        self._t = 0
        self._last: np.ndarray | None = None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        old = self.session_id
        world_seed = int(self.np_random.integers(0, 2**31 - 1))
        self.session_id, obs = self.world.new_session(world_seed, options)  # first: it may fork the old one
        if old is not None:
            self.world.delete(old)
        self._t, self._last = 0, obs
        return obs, {"step": 0, "seed": world_seed}

    def step(self, action):
        if self.session_id is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        keys, mouse = self.world.to_action(action)
        r = self.world.client.step(self.session_id, keys, mouse, fmt="raw")
        obs = _frame(r.frame, self.world.shape)
        self._t += 1
        self._last = obs
        info = {"step": int(r.step)}  # the session: self.session_id (infos stay equal across equal seeds)
        truncated = self._t >= self.world.max_episode_steps
        return obs, self.world.reward(obs, info), False, truncated, info

    def render(self):
        return None if self._last is None else self._last.copy()

    def close(self):
        self.world.close()
        self.session_id = None


class WorldVectorEnv(VectorEnv):
    """``num_envs`` world sessions stepped together: one StepBatch per vector step."""

    metadata = {"render_modes": ["rgb_array"], "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int,
        target: str | None = None,
        api_key: str | None = None,
        *,
        model: str = "",
        prompt: str = DEFAULT_PROMPT,
        discrete: bool = False,
        max_episode_steps: int = 200,
        reward_fn: RewardFn | None = None,
        render_mode: str | None = None,
        timeout_s: float = 60.0,
        client: WorldClient | None = None,
    ):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.world = _World(target, api_key, model, prompt, discrete, max_episode_steps, reward_fn, timeout_s, client)
        self.num_envs = num_envs
        self.single_observation_space = self.world.obs_space
        self.single_action_space = self.world.act_space
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self.render_mode = render_mode
        self.session_ids: list[str | None] = [None] * num_envs
        self._t = np.zeros(num_envs, np.int64)
        self._done = np.zeros(num_envs, bool)
        self._obs = np.zeros((num_envs, *self.world.shape), np.uint8)
        self._options: dict[str, Any] | None = None

    def _make(self, i: int) -> None:
        old = self.session_ids[i]
        seed = int(self.np_random.integers(0, 2**31 - 1))
        self.session_ids[i], self._obs[i] = self.world.new_session(seed, self._options)
        if old is not None:
            self.world.delete(old)
        self._t[i] = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self._options = options
        for i in range(self.num_envs):
            self._make(i)
        self._done[:] = False
        return self._obs.copy(), {"session_id": np.array(self.session_ids, dtype=object)}

    def _unbatch(self, actions) -> list[Any]:
        if self.world.discrete:
            a = np.asarray(actions)
            if a.shape != (self.num_envs,):
                raise gym.error.InvalidAction(f"actions must have shape ({self.num_envs},), got {a.shape}")
            return list(a)
        if not isinstance(actions, Mapping):
            raise gym.error.InvalidAction(f"actions must be a dict of batched 'keys' and 'mouse', got {type(actions)}")
        keys, mouse = np.asarray(actions.get("keys")), np.asarray(actions.get("mouse"))
        if keys.shape[:1] != (self.num_envs,) or mouse.shape[:1] != (self.num_envs,):
            raise gym.error.InvalidAction(f"batched actions must lead with num_envs={self.num_envs}")
        return [{"keys": keys[i], "mouse": mouse[i]} for i in range(self.num_envs)]

    def step(self, actions):
        if any(s is None for s in self.session_ids):
            raise gym.error.ResetNeeded("call reset() before step()")
        per_env = [self.world.to_action(a) for a in self._unbatch(actions)]  # all checked before any RPC
        rewards = np.zeros(self.num_envs, np.float64)
        terminated = np.zeros(self.num_envs, bool)
        truncated = np.zeros(self.num_envs, bool)
        steps = np.zeros(self.num_envs, np.int64)
        live = [i for i in range(self.num_envs) if not self._done[i]]
        for i in range(self.num_envs):
            if self._done[i]:  # next-step autoreset: this step starts its new episode
                self._make(i)
        if live:
            reqs = [
                dynamics_pb2.StepRequest(
                    session_id=self.session_ids[i],
                    format=RAW,
                    request_id=new_request_id(),
                    action=common_pb2.Action(keys=per_env[i][0], mouse=per_env[i][1]),
                )
                for i in live
            ]
            res = self.world.client.step_batch(reqs)
            for i, r in zip(live, res.results):
                if r.HasField("error"):
                    raise grpc_error(r.error, self.session_ids[i])
                self._obs[i] = _frame(r.ok.frame, self.world.shape)
                steps[i] = r.ok.step
                self._t[i] += 1
                info_i = {"session_id": self.session_ids[i], "step": int(r.ok.step)}
                rewards[i] = self.world.reward(self._obs[i], info_i)
                truncated[i] = self._t[i] >= self.world.max_episode_steps
        self._done = terminated | truncated
        info = {"session_id": np.array(self.session_ids, dtype=object), "step": steps}
        return self._obs.copy(), rewards, terminated, truncated, info

    def render(self):
        return self._obs.copy()

    def close_extras(self, **kwargs):
        self.world.close()


class StepError(grpc.RpcError):
    """A StepBatch item's error, raised like the RpcError a Step would have raised."""

    def __init__(self, code: grpc.StatusCode, details: str):
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


def grpc_error(status: common_pb2.ErrorStatus, session_id: str | None) -> StepError:
    code = next((c for c in grpc.StatusCode if c.value[0] == status.code), grpc.StatusCode.UNKNOWN)
    return StepError(code, f"{session_id}: {status.message}")
