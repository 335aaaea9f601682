"""The worldserve client SDK (sync and asyncio). Needs only grpcio and protobuf: no torch, no ray.

    from worldserve.client import WorldClient

    with WorldClient("127.0.0.1:9000", api_key="ws_...") as c:
        s = c.create_session(prompt="a red door on the left", seed=1)
        r = c.step(s.session_id, keys=["right"])
        open("frame.png", "wb").write(r.frame.data)

Every call sends ``application`` (which Serve app answers), ``authorization: Bearer <key>`` and,
for calls about one session, ``session_id`` (so the router keeps the session on one replica).
Errors are ``grpc.RpcError`` with the server's status code and a one-line message.

Exactly once: every step carries a request id (a fresh one unless you pass ``request_id``). A Step
answered UNAVAILABLE (Redis away, a replica died) may have been applied; ``step`` and
``step_batch`` retry it with the same id until ``retry_s`` runs out (reads -- ``get_session``,
``list_sessions`` -- are retried the same way), and a retry of a step that had
landed gets that step's recorded frame back instead of a second step. A Rollout or Play item's id
is the request's ``request_id`` + ``/<index>``: resend the same Rollout with the same
``request_id`` to resume it (the items that landed come back as recorded).

Quotas: a call refused by a tenant quota answers RESOURCE_EXHAUSTED; when waiting helps, the status
details carry a ``google.rpc.RetryInfo`` (read it with :func:`retry_after`). Nothing was applied:
every call (creates and forks too) waits that delay and retries while ``retry_s`` lasts.

Free text: ``create_session(prompt=...)`` and ``generate_image`` take a caption in the grammar
("a red door on the left, grass, night") or free text ("a snowy night with a pink door to my
right"), read by the server's text app; ``Session.understood`` (``understood(session)`` as a dict)
says how it was understood. A step's ``Action.event`` takes one of the model's events
(``ModelInfo.events``) or free text ("make it rain"); ``StepResponse.event`` is the event in
force for the frame.

Layout: this module holds the two clients; the request builders are in ``_requests.py``, the
retry rules in ``_retry.py``, the server streams in ``_stream.py``. Import every public name from
here (``__all__``).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from worldserve.client._requests import (
    FORMATS,
    ActionLike,
    _fmt,
    action,
    create_request,
    new_request_id,
    rollout_request,
    step_request,
    text_embedding,
    to_actions,
)
from worldserve.client._retry import STATUS_DETAILS_KEY, _backoff, _retry_delay, retry_after
from worldserve.client._stream import ResponseStream, _ResumingStream
from worldserve.v1 import (
    common_pb2,
    dynamics_pb2,
    dynamics_pb2_grpc,
    image_pb2,
    image_pb2_grpc,
    sessions_pb2,
    sessions_pb2_grpc,
)

__all__ = [
    "WorldClient",
    "understood",
    "AsyncWorldClient",
    "action",
    "to_actions",
    "new_request_id",
    "text_embedding",
    "retry_after",
    "FORMATS",
    "STATUS_DETAILS_KEY",
    "ActionLike",
    "ResponseStream",
]


def understood(message: Any) -> dict[str, Any] | None:
    """How a prompt was understood, from a ``Session`` or a ``GenerateImageResponse``, as plain data:
    ``{"spec": {"objects": [{"colour", "kind", "side"}], "ground", "time", "rain"}, "caption",
    "source"}`` (``source``: "grammar" or "text"); None when it carries none (an uploaded image)."""
    if not message.HasField("understood"):
        return None
    u = message.understood
    return {
        "spec": {
            "objects": [{"colour": o.colour, "kind": o.kind, "side": o.side} for o in u.spec.objects],
            "ground": u.spec.ground,
            "time": u.spec.time_of_day,
            "rain": u.spec.rain,
        },
        "caption": u.caption,
        "source": u.source,
    }


# grpc ships no type information: what its stubs' calls return is typed where it is received.
_T = TypeVar("_T")

CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
"""gRPC's default of 4 MiB per received message is below a full StepBatch's answer (1,024 PNG
frames of 64x64 are about 4.8 MB; raw frames 12.6 MB)."""


class _Base:
    def __init__(
        self, target: str | None = None, api_key: str | None = None, timeout_s: float = 60.0, retry_s: float = 30.0
    ):
        self.target = target or os.environ.get("WORLDSERVE_TARGET", "127.0.0.1:9000")
        self.api_key = api_key if api_key is not None else os.environ.get("WORLDSERVE_API_KEY", "")
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        """How long ``step`` / ``step_batch`` keep retrying a retryable failure (0: never retry)."""
        self.retries = 0
        """Retries made so far (all calls of this client)."""

    def _retrying(self, call: Callable[[], _T], idempotent: bool = True) -> _T:
        """Run ``call()``; retry retryable failures (same request ids) until ``retry_s`` runs out.
        ``idempotent=False``: retry only refusals that applied nothing (RetryInfo)."""
        deadline = time.monotonic() + self.retry_s
        attempt = 0
        while True:
            try:
                return call()
            except grpc.RpcError as e:
                delay = _backoff(e, attempt, idempotent)
                if delay is None or time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            attempt += 1
            self.retries += 1

    async def _aretrying(self, call: Callable[[], Awaitable[_T]], idempotent: bool = True) -> _T:
        deadline = time.monotonic() + self.retry_s
        attempt = 0
        while True:
            try:
                return await call()
            except grpc.RpcError as e:
                delay = _backoff(e, attempt, idempotent)
                if delay is None or time.monotonic() + delay > deadline:
                    raise
            await asyncio.sleep(delay)
            attempt += 1
            self.retries += 1

    def _md(self, app: str, session_id: str | None = None) -> list[tuple[str, str]]:
        md = [("application", app)]
        if self.api_key:
            md.append(("authorization", f"Bearer {self.api_key}"))
        if session_id:
            md.append(("session_id", session_id))
        return md

    _create_req = staticmethod(create_request)
    _step_req = staticmethod(step_request)
    _rollout_req = staticmethod(rollout_request)


class WorldClient(_Base):
    """Blocking client."""

    def __init__(
        self, target: str | None = None, api_key: str | None = None, timeout_s: float = 60.0, retry_s: float = 30.0
    ):
        super().__init__(target, api_key, timeout_s, retry_s)
        self.channel = grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        self.images = image_pb2_grpc.ImageServiceStub(self.channel)
        self.sessions = sessions_pb2_grpc.SessionServiceStub(self.channel)
        self.dynamics = dynamics_pb2_grpc.DynamicsServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> WorldClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def health(self, app: str) -> str:
        r = self.health_stub.Check(health_pb2.HealthCheckRequest(), metadata=self._md(app), timeout=self.timeout_s)
        name: str = health_pb2.HealthCheckResponse.ServingStatus.Name(r.status)
        return name

    def generate_image(
        self, prompt: str, seed: int = 0, fmt: str = "png", **kw: Any
    ) -> image_pb2.GenerateImageResponse:
        """``kw``: more fields of the GenerateImageRequest."""
        req = image_pb2.GenerateImageRequest(prompt=prompt, seed=seed, format=_fmt(fmt), **kw)
        r: image_pb2.GenerateImageResponse = self.images.GenerateImage(
            req, metadata=self._md("image"), timeout=self.timeout_s
        )
        return r

    def create_session(
        self,
        prompt: str | None = None,
        *,
        image: common_pb2.Frame | None = None,
        seed: int = 0,
        ttl_s: int = 0,
        include_first_frame: bool = False,
        fmt: str = "png",
        image_steps: int = 0,
        image_guidance: float = 0.0,
        model: str = "",
        text_embedding: bytes = b"",
    ) -> sessions_pb2.Session:
        """A new world bound to ``model`` (see ``list_models``; empty: the cluster's default).
        ``text_embedding``: the prompt's precomputed embedding for a model that takes one
        (``ModelInfo.text_dim``; build it with :func:`text_embedding`). Retried only when a quota
        refused it with a retry delay (nothing was created)."""
        req = self._create_req(
            prompt, image, seed, ttl_s, include_first_frame, fmt, image_steps, image_guidance, model, text_embedding
        )
        s: sessions_pb2.Session = self._retrying(
            lambda: self.sessions.CreateSession(req, metadata=self._md("sessions"), timeout=self.timeout_s),
            idempotent=False,
        )
        return s

    def get_session(self, session_id: str) -> sessions_pb2.Session:
        """A read: retried while UNAVAILABLE, like a step."""
        req = sessions_pb2.GetSessionRequest(session_id=session_id)
        md = self._md("sessions", session_id)
        s: sessions_pb2.Session = self._retrying(
            lambda: self.sessions.GetSession(req, metadata=md, timeout=self.timeout_s)
        )
        return s

    def list_sessions(self, page_size: int = 100) -> Iterator[sessions_pb2.Session]:
        token = ""
        while True:
            req = sessions_pb2.ListSessionsRequest(page_size=page_size, page_token=token)
            r: sessions_pb2.ListSessionsResponse = self._retrying(
                lambda: self.sessions.ListSessions(req, metadata=self._md("sessions"), timeout=self.timeout_s)
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
        md = self._md("sessions", session_id)
        s: sessions_pb2.Session = self._retrying(
            lambda: self.sessions.ForkSession(req, metadata=md, timeout=self.timeout_s), idempotent=False
        )
        return s

    def delete_session(self, session_id: str) -> bool:
        req = sessions_pb2.DeleteSessionRequest(session_id=session_id)
        r: sessions_pb2.DeleteSessionResponse = self.sessions.DeleteSession(
            req, metadata=self._md("sessions", session_id), timeout=self.timeout_s
        )
        return r.deleted

    def export_session(
        self, session_id: str, include_frames: bool = True, fmt: str = "png", from_step: int = 0
    ) -> ResponseStream[sessions_pb2.TrajectoryStep]:
        req = sessions_pb2.ExportSessionRequest(
            session_id=session_id, include_frames=include_frames, format=_fmt(fmt), from_step=from_step
        )
        stream: ResponseStream[sessions_pb2.TrajectoryStep] = self.sessions.ExportSession(
            req, metadata=self._md("sessions", session_id), timeout=self.timeout_s
        )
        return stream

    def model_info(self, model: str = "") -> dynamics_pb2.ModelInfo:
        """One served model's info (empty: the default model)."""
        r: dynamics_pb2.ModelInfo = self.dynamics.GetModelInfo(
            dynamics_pb2.GetModelInfoRequest(model=model), metadata=self._md("dynamics"), timeout=self.timeout_s
        )
        return r

    def list_models(self) -> dynamics_pb2.ListModelsResponse:
        """Every model the cluster serves, and the default one."""
        r: dynamics_pb2.ListModelsResponse = self.dynamics.ListModels(
            dynamics_pb2.ListModelsRequest(), metadata=self._md("dynamics"), timeout=self.timeout_s
        )
        return r

    def step(
        self,
        session_id: str,
        keys: Sequence[str] = (),
        mouse: Mapping[str, float] | None = None,
        *,
        expected_step: int | None = None,
        fmt: str = "png",
        guidance: float | None = None,
        event: str | None = None,
        request_id: str | None = None,
        deadline_ms: int | None = None,
    ) -> dynamics_pb2.StepResponse:
        """One step, exactly once: retried with its request id while UNAVAILABLE (see the module doc).
        ``deadline_ms``: the frame is wanted within this many milliseconds (a player's frame
        interval): the step is scheduled as interactive, ahead of steps without a deadline."""
        req = self._step_req(session_id, keys, mouse, expected_step, fmt, guidance, event, request_id, deadline_ms)
        md = self._md("dynamics", session_id)
        r: dynamics_pb2.StepResponse = self._retrying(
            lambda: self.dynamics.Step(req, metadata=md, timeout=self.timeout_s)
        )
        return r

    def step_batch(self, requests: Sequence[dynamics_pb2.StepRequest]) -> dynamics_pb2.StepBatchResponse:
        """Items without a request id get one. The call, and then the items that answered
        UNAVAILABLE, are retried (same ids: exactly once) until ``retry_s`` runs out."""
        req = dynamics_pb2.StepBatchRequest(steps=list(requests))
        for r in req.steps:  # copies: the caller's messages stay as they were
            r.request_id = r.request_id or new_request_id()
        deadline = time.monotonic() + self.retry_s
        call: Callable[[dynamics_pb2.StepBatchRequest], dynamics_pb2.StepBatchResponse] = lambda q: (
            self.dynamics.StepBatch(q, metadata=self._md("dynamics"), timeout=self.timeout_s)
        )
        out = self._retrying(lambda: call(req))
        unavailable = grpc.StatusCode.UNAVAILABLE.value[0]
        attempt = 0
        while True:
            again = [i for i, r in enumerate(out.results) if r.HasField("error") and r.error.code == unavailable]
            delay = _retry_delay(attempt)
            if not again or time.monotonic() + delay > deadline:
                return out
            time.sleep(delay)
            attempt += 1
            self.retries += 1
            redo = self._retrying(lambda: call(dynamics_pb2.StepBatchRequest(steps=[req.steps[i] for i in again])))
            for i, res in zip(again, redo.results):
                out.results[i].CopyFrom(res)

    def rollout(
        self,
        session_id: str,
        actions: Iterable[ActionLike],
        fmt: str = "png",
        expected_step: int | None = None,
        request_id: str | None = None,
    ) -> _ResumingStream:
        """A stream of one StepResponse per action (``cancel()`` ends it). Refused by a quota with a
        retry delay, or UNAVAILABLE, it is resent with the same ``request_id`` while ``retry_s`` lasts: the
        steps that landed come back as recorded and are skipped (each action applied and yielded once)."""
        req = self._rollout_req(session_id, actions, fmt, request_id, expected_step)
        md = self._md("dynamics", session_id)
        return _ResumingStream(self, lambda: self.dynamics.Rollout(req, metadata=md, timeout=self.timeout_s))

    def play(
        self, session_id: str, actions: Iterable[ActionLike], fmt: str = "png", deadline_ms: int = 0
    ) -> ResponseStream[dynamics_pb2.StepResponse]:
        """Bidirectional: yields one StepResponse per action, as actions are consumed. Play steps
        are interactive; ``deadline_ms``: each frame's deadline (0: the cluster's default)."""

        def reqs() -> Iterator[dynamics_pb2.PlayRequest]:
            for i, a in enumerate(to_actions(actions)):
                yield dynamics_pb2.PlayRequest(
                    session_id=session_id if i == 0 else "",
                    action=a,
                    format=_fmt(fmt),
                    request_id=new_request_id(),
                    deadline_ms=deadline_ms,
                )

        stream: ResponseStream[dynamics_pb2.StepResponse] = self.dynamics.Play(
            reqs(), metadata=self._md("dynamics", session_id), timeout=self.timeout_s
        )
        return stream


class AsyncWorldClient(_Base):
    """asyncio client (grpc.aio); the same calls as WorldClient, awaited."""

    def __init__(
        self, target: str | None = None, api_key: str | None = None, timeout_s: float = 60.0, retry_s: float = 30.0
    ):
        super().__init__(target, api_key, timeout_s, retry_s)
        self.channel = grpc.aio.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        self.sessions = sessions_pb2_grpc.SessionServiceStub(self.channel)
        self.dynamics = dynamics_pb2_grpc.DynamicsServiceStub(self.channel)
        self.images = image_pb2_grpc.ImageServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncWorldClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def create_session(
        self,
        prompt: str | None = None,
        *,
        image: common_pb2.Frame | None = None,
        seed: int = 0,
        ttl_s: int = 0,
        include_first_frame: bool = False,
        fmt: str = "png",
        image_steps: int = 0,
        image_guidance: float = 0.0,
        model: str = "",
        text_embedding: bytes = b"",
    ) -> sessions_pb2.Session:
        """See :meth:`WorldClient.create_session`."""
        req = self._create_req(
            prompt, image, seed, ttl_s, include_first_frame, fmt, image_steps, image_guidance, model, text_embedding
        )
        return await self._aretrying(
            lambda: self.sessions.CreateSession(req, metadata=self._md("sessions"), timeout=self.timeout_s),
            idempotent=False,
        )

    async def delete_session(self, session_id: str) -> bool:
        req = sessions_pb2.DeleteSessionRequest(session_id=session_id)
        r: sessions_pb2.DeleteSessionResponse = await self.sessions.DeleteSession(
            req, metadata=self._md("sessions", session_id), timeout=self.timeout_s
        )
        return r.deleted

    async def model_info(self, model: str = "") -> dynamics_pb2.ModelInfo:
        r: dynamics_pb2.ModelInfo = await self.dynamics.GetModelInfo(
            dynamics_pb2.GetModelInfoRequest(model=model), metadata=self._md("dynamics"), timeout=self.timeout_s
        )
        return r

    async def list_models(self) -> dynamics_pb2.ListModelsResponse:
        r: dynamics_pb2.ListModelsResponse = await self.dynamics.ListModels(
            dynamics_pb2.ListModelsRequest(), metadata=self._md("dynamics"), timeout=self.timeout_s
        )
        return r

    async def step(
        self,
        session_id: str,
        keys: Sequence[str] = (),
        mouse: Mapping[str, float] | None = None,
        *,
        expected_step: int | None = None,
        fmt: str = "png",
        guidance: float | None = None,
        event: str | None = None,
        request_id: str | None = None,
        deadline_ms: int | None = None,
    ) -> dynamics_pb2.StepResponse:
        req = self._step_req(session_id, keys, mouse, expected_step, fmt, guidance, event, request_id, deadline_ms)
        md = self._md("dynamics", session_id)
        return await self._aretrying(lambda: self.dynamics.Step(req, metadata=md, timeout=self.timeout_s))

    async def rollout(
        self, session_id: str, actions: Iterable[ActionLike], fmt: str = "png", request_id: str | None = None
    ) -> AsyncIterator[dynamics_pb2.StepResponse]:
        req = self._rollout_req(session_id, actions, fmt, request_id)
        async for r in self.dynamics.Rollout(req, metadata=self._md("dynamics", session_id), timeout=self.timeout_s):
            yield r
