"""What the web tests share: stand-ins for Serve's deployment handles and a
model deployment, a player of a room, and an in-process ASGI client for the gateway's app (HTTP and
WebSocket) so that the ingress is tested without a Ray cluster."""

from __future__ import annotations

import asyncio
import inspect
import json
from types import SimpleNamespace
from typing import Any

import numpy as np

from worldserve.common.auth import add_key
from worldserve.common.caption import caption_of, is_caption, spec_to_dict
from worldserve.common.codec import RAW, EncodedFrame
from worldserve.common.servicer import ServiceBase
from worldserve.dynamics.engine.types import StepOutput
from worldserve.web.live_protocol import RateLimit, unpack_frame


class Handle:
    """A Serve deployment handle's shape over a plain object: ``await h.m.remote(*a)`` calls
    ``obj.m(*a)``; ``h.options(...)`` is recorded and returns the handle."""

    def __init__(self, obj: Any):
        self._obj = obj
        self.options_seen: list[dict] = []

    def options(self, **kw) -> Handle:
        self.options_seen.append(kw)
        return self

    def __getattr__(self, name: str):
        fn = getattr(self._obj, name)

        async def call(*a, **kw):
            out = fn(*a, **kw)
            return await out if inspect.isawaitable(out) else out

        return SimpleNamespace(remote=call)


class ModelServer:
    """A model deployment (``DynamicsModel-<name>``) that steps sessions in memory: raw RGB frames
    whose every byte is the step number; ``step_s``: what it reports as its seconds per step."""

    def __init__(
        self, name: str = "m", step_s: float = 0.0, size: tuple[int, int] = (8, 6), events: tuple[str, ...] = ()
    ):
        self.name, self.step_s = name, step_s
        self.width, self.height = size
        self.events = events  # the events it declares (ModelInfo.events)
        self.steps: dict[str, int] = {}
        self.in_force: dict[str, str] = {}  # session -> the event in force
        self.requests: list = []

    async def step(self, req):
        self.requests.append(req)
        n = self.steps[req.session_id] = self.steps.get(req.session_id, 0) + 1
        if req.event is not None:
            self.in_force[req.session_id] = req.event
        data = np.full((self.height, self.width, 3), n % 256, dtype=np.uint8).tobytes()
        frame = EncodedFrame(RAW, data, self.width, self.height)
        return StepOutput(req.session_id, n, frame, self.in_force.get(req.session_id, "")), "replica-1"

    def step_seconds(self) -> float:
        return self.step_s

    def info(self) -> dict:
        return {**info(self.name), "events": list(self.events)}


def info(name: str = "m") -> dict:
    return {
        "name": name,
        "keys": ["left", "right", "jump"],
        "mouse_axes": ["x"],
        "events_supported": True,
        "event_max_bytes": 16,
        "frame_width": 8,
        "frame_height": 6,
    }


class Dynamics:
    """The DynamicsService's calls the gateway makes."""

    def __init__(self, names=("m",), default: str = "m"):
        self.names, self.default = list(names), default
        self.list_calls = 0

    def list_models(self):
        self.list_calls += 1
        return [info(n) for n in self.names], self.default

    def model_info(self, model: str = ""):
        return info(model or self.default)


class Player:
    """A room's player: what it was sent, and how it was closed."""

    def __init__(self):
        self.frames: list[tuple[dict, bytes]] = []
        self.texts: list[dict] = []
        self.closed: tuple[int, str] | None = None

    async def send_bytes(self, b: bytes) -> None:
        self.frames.append(unpack_frame(b))

    async def send_json(self, m: dict) -> None:
        self.texts.append(m)

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def join(self, room, role: str = "controller", fmt: int = RAW):
        return room.join(role, fmt, self.send_bytes, self.send_json, self.close, RateLimit(100, 100))


# -- the gateway in process ---------------------------------------------------------------------------
KEY, OTHER_KEY = "sk-acme-0123456789", "sk-beta-0123456789"


class Sessions:
    """The SessionService calls the gateway makes (create_for / fork_for), over the real store."""

    def __init__(self, store):
        self.store = store
        self.created: list[dict] = []

    async def create_for(self, tenant, *, prompt="", image=b"", seed=0, model=""):
        self.created.append({"tenant": tenant, "prompt": prompt, "image": image, "seed": seed, "model": model})
        spec = is_caption(prompt) if prompt else None  # a caption is understood as the sessions app does
        understood = {"spec": spec_to_dict(spec), "caption": caption_of(spec), "source": "grammar"} if spec else None
        return await self.store.create(
            tenant,
            model=model or "m",
            prompt=prompt,
            seed=seed,
            width=8,
            height=6,
            first_frame=b"png",
            understood=understood,
        )

    async def fork_for(self, tenant, session_id, step):
        return await self.store.fork(tenant, session_id, step=step)


def make_gateway(store, tmp_path, monkeypatch, *, models=None, dynamics=None, serve_it: bool = True, **config):
    """A WebGateway (the class under Serve's wrapper) wired to ``store`` and stand-ins; made the
    servable of Serve's replica context (``serve_it``), so that ``gateway.app`` routes to it."""
    keys = tmp_path / "keys.json"
    if not keys.exists():
        add_key(keys, "acme", KEY)
        add_key(keys, "beta", OTHER_KEY)
    from worldserve.web import gateway

    cls = next(c for c in gateway.WebGateway.func_or_class.__mro__ if "wire" in c.__dict__)
    gw = object.__new__(cls)
    ServiceBase.__init__(gw, {"api_keys_file": str(keys), **config})
    models = models or {"m": ModelServer("m")}
    handles = {name: Handle(m) for name, m in models.items()}
    gw.model_stubs = models
    gw.sessions_stub = Sessions(store)
    gw.dynamics_stub = dynamics or Dynamics(list(models))
    gw.wire(
        store, sessions=Handle(gw.sessions_stub), dynamics=Handle(gw.dynamics_stub), model_handle=handles.__getitem__
    )
    if serve_it:
        serve_with(monkeypatch, gw)
    gw.rpcs = []
    record = gw.metrics.record_rpc
    monkeypatch.setattr(
        gw.metrics, "record_rpc", lambda rpc, code, s: (gw.rpcs.append((rpc, code)), record(rpc, code, s))
    )
    return gw


def serve_with(monkeypatch, gw) -> None:
    """Serve's replica context for the gateway's routes (their ``self``): ``gw`` from now on."""
    from ray import serve

    monkeypatch.setattr(serve, "get_replica_context", lambda: SimpleNamespace(servable_object=gw))


def _scope(kind: str, path: str, query: str, headers) -> dict:
    return {
        "type": kind,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "http" if kind == "http" else "ws",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }


async def http(app, method: str, path: str, *, headers=(), body: bytes | dict | None = None) -> tuple[int, Any]:
    """One HTTP request to an ASGI app: (status, the JSON body or the raw bytes)."""
    raw = json.dumps(body).encode() if isinstance(body, dict) else (body or b"")
    scope = _scope("http", path, "", list(headers) + [("content-length", str(len(raw)))])
    scope["method"] = method
    done = asyncio.Event()
    first = True

    async def receive():
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": raw, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    out: list[dict] = []

    async def send(m):
        out.append(m)

    try:
        await app(scope, receive, send)
    finally:
        done.set()
    status = next(m["status"] for m in out if m["type"] == "http.response.start")
    data = b"".join(m.get("body", b"") for m in out if m["type"] == "http.response.body")
    try:
        return status, json.loads(data)
    except ValueError:
        return status, data


class WebSocketClient:
    """A WebSocket connection to an ASGI app, driven in process: what the app sent (``texts``,
    ``frames``), whether it accepted (``subprotocol``), and its close (``closed``)."""

    def __init__(self, app, path: str, query: str = "", headers=(), subprotocols=()):
        scope = _scope("websocket", path, query, headers)
        scope["subprotocols"] = list(subprotocols)
        self._to_app: asyncio.Queue[dict] = asyncio.Queue()
        self._to_app.put_nowait({"type": "websocket.connect"})
        self.accepted = False
        self.subprotocol: str | None = None
        self.texts: list[dict] = []
        self.frames: list[tuple[dict, bytes]] = []
        self.closed: tuple[int, str] | None = None
        self.task = asyncio.ensure_future(app(scope, self._to_app.get, self._from_app))

    async def _from_app(self, m: dict) -> None:
        t = m["type"]
        if t == "websocket.accept":
            self.accepted, self.subprotocol = True, m.get("subprotocol")
        elif t == "websocket.send":
            if m.get("bytes") is not None:
                self.frames.append(unpack_frame(m["bytes"]))
            else:
                self.texts.append(json.loads(m["text"]))
        elif t == "websocket.close" and self.closed is None:
            self.closed = (m.get("code", 1000), m.get("reason") or "")

    def of_type(self, kind: str) -> list[dict]:
        return [t for t in self.texts if t.get("type") == kind]

    def send(self, msg: dict | str | bytes) -> None:
        if isinstance(msg, bytes):
            self._to_app.put_nowait({"type": "websocket.receive", "bytes": msg})
        else:
            self._to_app.put_nowait(
                {"type": "websocket.receive", "text": msg if isinstance(msg, str) else json.dumps(msg)}
            )

    async def disconnect(self, timeout: float = 5.0) -> None:
        self._to_app.put_nowait({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(self.task, timeout)
