"""The worldserve client SDK (sync and asyncio). Needs only grpcio and protobuf: no torch, no ray.

    from worldserve.client import WorldClient

    with WorldClient("127.0.0.1:9000", api_key="ws_...") as c:
        s = c.create_session(prompt="a red door on the left", seed=1)
        r = c.step(s.session_id, keys=["right"])
        open("frame.png", "wb").write(r.frame.data)

Every call sends ``application`` (which Serve app answers), ``authorization: Bearer <key>`` and,
for calls about one session, ``session_id`` (so the router keeps the session on one replica).
Errors are ``grpc.RpcError`` with the server's status code and a one-line message.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from worldserve.v1 import common_pb2, dynamics_pb2, dynamics_pb2_grpc, image_pb2, image_pb2_grpc, sessions_pb2, sessions_pb2_grpc

FORMATS = {
    "png": common_pb2.FRAME_FORMAT_PNG,
    "jpeg": common_pb2.FRAME_FORMAT_JPEG,
    "raw": common_pb2.FRAME_FORMAT_RAW_RGB8,
}

__all__ = ["WorldClient", "AsyncWorldClient", "action", "FORMATS"]


def action(keys: Sequence[str] = (), mouse: Mapping[str, float] | None = None, event: str | None = None) -> common_pb2.Action:
    """An action; ``event`` switches the world event from this step on ("" clears it)."""
    a = common_pb2.Action(keys=list(keys), mouse=dict(mouse or {}))
    if event is not None:
        a.event = event
    return a


def _fmt(fmt: str | int) -> int:
    if isinstance(fmt, int):
        return fmt
    try:
        return FORMATS[fmt.lower()]
    except KeyError:
        raise ValueError(f"unknown frame format {fmt!r}; expected one of {sorted(FORMATS)}") from None


def _actions(actions: Iterable) -> list[common_pb2.Action]:
    out = []
    for a in actions:
        if isinstance(a, common_pb2.Action):
            out.append(a)
        elif isinstance(a, str):
            out.append(action([k for k in a.split("+") if k and k != "noop"]))
        else:
            out.append(action(a))
    return out


class _Base:
    def __init__(self, target: str | None = None, api_key: str | None = None, timeout_s: float = 60.0):
        self.target = target or os.environ.get("WORLDSERVE_TARGET", "127.0.0.1:9000")
        self.api_key = api_key if api_key is not None else os.environ.get("WORLDSERVE_API_KEY", "")
        self.timeout_s = timeout_s

    def _md(self, app: str, session_id: str | None = None) -> list[tuple[str, str]]:
        md = [("application", app)]
        if self.api_key:
            md.append(("authorization", f"Bearer {self.api_key}"))
        if session_id:
            md.append(("session_id", session_id))
        return md

    @staticmethod
    def _create_req(prompt, image, seed, ttl_s, include_first_frame, fmt, image_steps, image_guidance, model=""):
        req = sessions_pb2.CreateSessionRequest(
            seed=seed, ttl_s=ttl_s, include_first_frame=include_first_frame, format=_fmt(fmt),
            image_steps=image_steps, image_guidance=image_guidance, model=model,
        )
        if image is not None:
            req.image.CopyFrom(image)
        else:
            req.prompt = prompt or ""
        return req

    @staticmethod
    def _step_req(session_id, keys, mouse, expected_step, fmt, guidance, event=None):
        req = dynamics_pb2.StepRequest(session_id=session_id, action=action(keys, mouse, event), format=_fmt(fmt))
        if expected_step is not None:
            req.expected_step = expected_step
        if guidance is not None:
            req.guidance = guidance
        return req


class WorldClient(_Base):
    """Blocking client."""

    def __init__(self, target: str | None = None, api_key: str | None = None, timeout_s: float = 60.0):
        super().__init__(target, api_key, timeout_s)
        self.channel = grpc.insecure_channel(self.target)
        self.images = image_pb2_grpc.ImageServiceStub(self.channel)
        self.sessions = sessions_pb2_grpc.SessionServiceStub(self.channel)
        self.dynamics = dynamics_pb2_grpc.DynamicsServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "WorldClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def health(self, app: str) -> str:
        r = self.health_stub.Check(health_pb2.HealthCheckRequest(), metadata=self._md(app), timeout=self.timeout_s)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)

    def generate_image(self, prompt: str, seed: int = 0, fmt: str = "png", **kw) -> image_pb2.GenerateImageResponse:
        req = image_pb2.GenerateImageRequest(prompt=prompt, seed=seed, format=_fmt(fmt), **kw)
        return self.images.GenerateImage(req, metadata=self._md("image"), timeout=self.timeout_s)

    def create_session(
        self, prompt: str | None = None, *, image: common_pb2.Frame | None = None, seed: int = 0, ttl_s: int = 0,
        include_first_frame: bool = False, fmt: str = "png", image_steps: int = 0, image_guidance: float = 0.0,
        model: str = "",
    ) -> sessions_pb2.Session:
        """A new world bound to ``model`` (see ``list_models``; empty: the cluster's default)."""
        req = self._create_req(prompt, image, seed, ttl_s, include_first_frame, fmt, image_steps, image_guidance, model)
        return self.sessions.CreateSession(req, metadata=self._md("sessions"), timeout=self.timeout_s)

    def get_session(self, session_id: str) -> sessions_pb2.Session:
        req = sessions_pb2.GetSessionRequest(session_id=session_id)
        return self.sessions.GetSession(req, metadata=self._md("sessions", session_id), timeout=self.timeout_s)

    def list_sessions(self, page_size: int = 100) -> Iterator[sessions_pb2.Session]:
        token = ""
        while True:
            r = self.sessions.ListSessions(
                sessions_pb2.ListSessionsRequest(page_size=page_size, page_token=token),
                metadata=self._md("sessions"), timeout=self.timeout_s,
            )
            yield from r.sessions
            token = r.next_page_token
            if not token:
                return

    def fork_session(self, session_id: str, step: int | None = None, seed: int | None = None) -> sessions_pb2.Session:
        req = sessions_pb2.ForkSessionRequest(session_id=session_id)
        if step is not None:
            req.step = step
        if seed is not None:
            req.seed = seed
        return self.sessions.ForkSession(req, metadata=self._md("sessions", session_id), timeout=self.timeout_s)

    def delete_session(self, session_id: str) -> bool:
        req = sessions_pb2.DeleteSessionRequest(session_id=session_id)
        return self.sessions.DeleteSession(req, metadata=self._md("sessions", session_id), timeout=self.timeout_s).deleted

    def export_session(self, session_id: str, include_frames: bool = True, fmt: str = "png", from_step: int = 0):
        req = sessions_pb2.ExportSessionRequest(
            session_id=session_id, include_frames=include_frames, format=_fmt(fmt), from_step=from_step
        )
        return self.sessions.ExportSession(req, metadata=self._md("sessions", session_id), timeout=self.timeout_s)

    def model_info(self, model: str = "") -> dynamics_pb2.ModelInfo:
        """One served model's info (empty: the default model)."""
        return self.dynamics.GetModelInfo(
            dynamics_pb2.GetModelInfoRequest(model=model), metadata=self._md("dynamics"), timeout=self.timeout_s
        )

    def list_models(self) -> dynamics_pb2.ListModelsResponse:
        """Every model the cluster serves, and the default one."""
        return self.dynamics.ListModels(dynamics_pb2.ListModelsRequest(), metadata=self._md("dynamics"),
                                        timeout=self.timeout_s)

    def step(
        self, session_id: str, keys: Sequence[str] = (), mouse: Mapping[str, float] | None = None, *,
        expected_step: int | None = None, fmt: str = "png", guidance: float | None = None, event: str | None = None,
    ) -> dynamics_pb2.StepResponse:
        req = self._step_req(session_id, keys, mouse, expected_step, fmt, guidance, event)
        return self.dynamics.Step(req, metadata=self._md("dynamics", session_id), timeout=self.timeout_s)

    def step_batch(self, requests: Sequence[dynamics_pb2.StepRequest]) -> dynamics_pb2.StepBatchResponse:
        return self.dynamics.StepBatch(
            dynamics_pb2.StepBatchRequest(steps=list(requests)), metadata=self._md("dynamics"), timeout=self.timeout_s
        )

    def rollout(self, session_id: str, actions: Iterable, fmt: str = "png", expected_step: int | None = None):
        req = dynamics_pb2.RolloutRequest(session_id=session_id, actions=_actions(actions), format=_fmt(fmt))
        if expected_step is not None:
            req.expected_step = expected_step
        return self.dynamics.Rollout(req, metadata=self._md("dynamics", session_id), timeout=self.timeout_s)

    def play(self, session_id: str, actions: Iterable, fmt: str = "png"):
        """Bidirectional: yields one StepResponse per action, as actions are consumed."""

        def reqs():
            for i, a in enumerate(_actions(actions)):
                yield dynamics_pb2.PlayRequest(session_id=session_id if i == 0 else "", action=a, format=_fmt(fmt))

        return self.dynamics.Play(reqs(), metadata=self._md("dynamics", session_id), timeout=self.timeout_s)


class AsyncWorldClient(_Base):
    """asyncio client (grpc.aio); the same calls as WorldClient, awaited."""

    def __init__(self, target: str | None = None, api_key: str | None = None, timeout_s: float = 60.0):
        super().__init__(target, api_key, timeout_s)
        self.channel = grpc.aio.insecure_channel(self.target)
        self.sessions = sessions_pb2_grpc.SessionServiceStub(self.channel)
        self.dynamics = dynamics_pb2_grpc.DynamicsServiceStub(self.channel)
        self.images = image_pb2_grpc.ImageServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> "AsyncWorldClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def create_session(self, prompt: str | None = None, *, image=None, seed: int = 0, ttl_s: int = 0,
                             include_first_frame: bool = False, fmt: str = "png", image_steps: int = 0,
                             image_guidance: float = 0.0, model: str = "") -> sessions_pb2.Session:
        req = self._create_req(prompt, image, seed, ttl_s, include_first_frame, fmt, image_steps, image_guidance, model)
        return await self.sessions.CreateSession(req, metadata=self._md("sessions"), timeout=self.timeout_s)

    async def delete_session(self, session_id: str) -> bool:
        req = sessions_pb2.DeleteSessionRequest(session_id=session_id)
        r = await self.sessions.DeleteSession(req, metadata=self._md("sessions", session_id), timeout=self.timeout_s)
        return r.deleted

    async def model_info(self, model: str = "") -> dynamics_pb2.ModelInfo:
        return await self.dynamics.GetModelInfo(
            dynamics_pb2.GetModelInfoRequest(model=model), metadata=self._md("dynamics"), timeout=self.timeout_s
        )

    async def list_models(self) -> dynamics_pb2.ListModelsResponse:
        return await self.dynamics.ListModels(dynamics_pb2.ListModelsRequest(), metadata=self._md("dynamics"),
                                              timeout=self.timeout_s)

    async def step(self, session_id: str, keys: Sequence[str] = (), mouse: Mapping[str, float] | None = None, *,
                   expected_step: int | None = None, fmt: str = "png", guidance: float | None = None,
                   event: str | None = None) -> dynamics_pb2.StepResponse:
        req = self._step_req(session_id, keys, mouse, expected_step, fmt, guidance, event)
        return await self.dynamics.Step(req, metadata=self._md("dynamics", session_id), timeout=self.timeout_s)

    async def rollout(self, session_id: str, actions: Iterable, fmt: str = "png") -> AsyncIterator[dynamics_pb2.StepResponse]:
        req = dynamics_pb2.RolloutRequest(session_id=session_id, actions=_actions(actions), format=_fmt(fmt))
        async for r in self.dynamics.Rollout(req, metadata=self._md("dynamics", session_id), timeout=self.timeout_s):
            yield r
