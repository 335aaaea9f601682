"""The web gateway: a Serve application on Serve's HTTP proxy (FastAPI), for browsers.

- ``GET /``: the play page (``static/``: nothing is loaded from outside the cluster);
- ``POST /v1/tokens``: a short-lived token for the API key in the ``Authorization`` header (the
  page's WebSocket carries the token, never the key; a key is never put in a URL, nor logged);
- ``GET /v1/models``, ``POST /v1/sessions``, ``GET /v1/sessions/{id}``, ``POST /v1/sessions/{id}/fork``:
  JSON over the sessions and dynamics applications' deployment handles;
- ``WS /v1/sessions/{id}/play?role=controller|spectator&fps=N&format=jpeg|png|raw``: a live
  player (worldserve.web.live); authenticated by ``Authorization: Bearer <key or token>`` or by the
  subprotocol ``worldserve.token.<token>`` beside ``worldserve``.

Steps go straight to the session's model deployment (``DynamicsModel-<name>``) through a handle
with the session as the routing key, as the dynamics ingress sends them (session affinity).
A live session ticks on one gateway replica, the one holding its Redis lease; a player that
reaches another replica plays through a relay there: the owner publishes each tick's frame on the
session's Redis channel, the relay fans it out to its players and forwards their messages back
(worldserve.web.live.RelayRoom), so the gateway scales out like any other deployment.

No ``from __future__ import annotations`` here: FastAPI reads the handlers' parameter types
(``Request``, ``WebSocket``) at run time, and under ``serve.ingress`` string annotations were
seen to turn ``request`` into a query parameter (422). Module helpers sit above the class: the
replica gets the class by value and only the names defined before it.
"""

import asyncio
import base64
import binascii
import functools
import hashlib
import json
import logging
import secrets
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from ray import serve
from starlette.websockets import WebSocketDisconnect, WebSocketState

from worldserve.common.codec import RAW
from worldserve.common.errors import InvalidArgument, NotFound, Unauthenticated, status_of
from worldserve.common.quotas import QuotaEnforcer
from worldserve.common.servicer import ServiceBase
from worldserve.dynamics.engine.types import Priority, StepRequest
from worldserve.web.live import (
    CONTROLLER, FORMATS, MAX_MESSAGE_BYTES, SPECTATOR, ActionSpace, LiveClosed, LiveMetrics, LiveRoom, RateLimit,
    RelayRoom, parse_message,
)

log = logging.getLogger("worldserve.web")
STATIC = Path(__file__).parent / "static"
TOKEN_PREFIX = "wst_"
SUBPROTOCOL = "worldserve"
TOKEN_SUBPROTOCOL = "worldserve.token."
STEP_OVERHEAD_S = 0.02  # a live step's cost beyond the model's (Redis, handle hops), before one is measured
LEASE_S = 15.0  # a live session's lease on its gateway replica, renewed every third of it
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.ALREADY_EXISTS: 409, grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409, grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504, grpc.StatusCode.DATA_LOSS: 500, grpc.StatusCode.INTERNAL: 500,
}
"""The one table from a status code (worldserve.common.errors.status_of) to an HTTP status."""

app = FastAPI(title="worldserve web gateway", docs_url=None, redoc_url=None, openapi_url=None)
app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _bearer(value: str | None) -> str | None:
    if value is None:
        return None
    scheme, _, cred = value.partition(" ")
    if scheme.lower() != "bearer" or not cred.strip():
        raise Unauthenticated("malformed Authorization header: expected 'Bearer <key or token>'")
    return cred.strip()


async def _json_body(request: Request, limit: int) -> dict:
    raw = await request.body()
    if len(raw) > limit:
        raise InvalidArgument(f"request body of {len(raw)} bytes exceeds {limit}")
    try:
        body = json.loads(raw or b"{}")
    except json.JSONDecodeError:
        raise InvalidArgument("request body is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidArgument("request body must be a JSON object")
    return body


def _http(rpc: str):
    """An HTTP handler's timing, its ``requests`` metric and its errors as ``{"code", "message"}``
    with the HTTP status of the gRPC code (the HTTP side of ``errors.grpc_method``)."""

    def wrap(fn):
        @functools.wraps(fn)  # FastAPI reads the parameters through __wrapped__
        async def handler(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                out = await fn(self, *args, **kwargs)
                code = "OK"
            except Exception as e:  # noqa: BLE001 - answered with its status
                status, msg = status_of(e)
                out, code = JSONResponse({"code": status.name, "message": msg},
                                         status_code=HTTP_STATUS.get(status, 500)), status.name
            self.metrics.record_rpc(rpc, code, time.perf_counter() - t0)
            return out

        return handler

    return wrap


def _session_json(rec) -> dict:
    d = asdict(rec)
    return {k: d[k] for k in ("session_id", "model", "prompt", "seed", "step", "parent_id", "fork_step", "created_at",
                              "width", "height")}


@serve.deployment(
    name="WebGateway",
    max_ongoing_requests=1024,  # every open WebSocket is an ongoing request
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 256},
    ray_actor_options={"num_cpus": 0.25},
)
@serve.ingress(app)
class WebGateway(ServiceBase):
    service = "web"

    def __init__(self, config: dict[str, Any] | None = None, sessions_app: str = "sessions",
                 dynamics_app: str = "dynamics"):
        from worldserve.state.store import SessionStore

        super().__init__(config)
        self.store = SessionStore.from_config(self.config)
        self.enforcer = QuotaEnforcer(self.store.r, self.metrics)
        self.sessions = serve.get_deployment_handle("SessionService", app_name=sessions_app)
        self.dynamics = serve.get_deployment_handle("DynamicsService", app_name=dynamics_app)
        self.dynamics_app = dynamics_app
        self.live = LiveMetrics(self.metrics)
        self.rooms: dict[tuple[str, str], LiveRoom | RelayRoom] = {}  # live sessions played from here
        self._room_tasks: dict[tuple[str, str], asyncio.Future] = {}  # their pub/sub listeners
        self._spaces: dict[str, ActionSpace] = {}
        self._step_s: dict[str, float] = {}  # model -> its measured seconds per live step (EMA)
        self._model_handles: dict[str, Any] = {}
        self.replica = secrets.token_hex(8)

    # -- credentials -----------------------------------------------------------------------------
    @staticmethod
    def _token_key(token: str) -> str:
        return "ws:webtoken:" + hashlib.sha256(token.encode()).hexdigest()

    async def _tenant(self, credential: str | None) -> str:
        """The tenant of an API key or of a live token (UNAUTHENTICATED otherwise)."""
        if credential and credential.startswith(TOKEN_PREFIX):
            tenant = await self.store.r.get(self._token_key(credential))
            if tenant is None:
                raise Unauthenticated("unknown or expired token; mint a new one at POST /v1/tokens")
            return tenant.decode() if isinstance(tenant, bytes) else tenant
        return self.tenant_of_key(credential)

    def tenant_of_key(self, key: str | None) -> str:
        return self.tenant_of([("authorization", f"Bearer {key}")] if key else [])

    async def _http_tenant(self, request: Request) -> str:
        return await self._tenant(_bearer(request.headers.get("authorization")))

    # -- HTTP --------------------------------------------------------------------------------------
    @app.get("/")
    async def index(self) -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.post("/v1/tokens")
    @_http("web.MintToken")
    async def mint_token(self, request: Request):
        """A live token for the key in the Authorization header (a token cannot mint another)."""
        cred = _bearer(request.headers.get("authorization"))
        if cred and cred.startswith(TOKEN_PREFIX):
            raise Unauthenticated("a token cannot mint a token; send the API key")
        tenant = self.tenant_of_key(cred)
        token = TOKEN_PREFIX + secrets.token_urlsafe(24)
        ttl = self.config.live_token_ttl_s
        await self.store.r.set(self._token_key(token), tenant, ex=ttl)
        return {"token": token, "expires_in": ttl, "tenant": tenant}

    @app.get("/v1/models")
    @_http("web.ListModels")
    async def models(self, request: Request):
        await self._http_tenant(request)
        infos, default = await self.dynamics.list_models.remote()
        return {"default_model": default, "models": infos}

    @app.post("/v1/sessions")
    @_http("web.CreateSession")
    async def create(self, request: Request):
        """JSON ``{"prompt": str, "seed": int, "model": str}`` or ``{"image": base64 PNG/JPEG, ...}``."""
        tenant = await self._http_tenant(request)
        body = await _json_body(request, self.config.max_upload_bytes * 2)
        seed = body.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
            raise InvalidArgument("seed must be a non-negative integer")
        model = body.get("model") or ""
        if not isinstance(model, str):
            raise InvalidArgument("model must be a string")
        image = body.get("image")
        if image:
            try:
                data = base64.b64decode(image, validate=True)
            except (binascii.Error, TypeError, ValueError):
                raise InvalidArgument("image must be base64 (a PNG or JPEG)") from None
            rec = await self.sessions.create_for.remote(tenant, image=data, seed=seed, model=model)
        else:
            prompt = body.get("prompt", "")
            if not isinstance(prompt, str):
                raise InvalidArgument("prompt must be a string")
            rec = await self.sessions.create_for.remote(tenant, prompt=prompt, seed=seed, model=model)
        return _session_json(rec)

    @app.get("/v1/sessions/{session_id}")
    @_http("web.GetSession")
    async def get(self, session_id: str, request: Request):
        return _session_json(await self.store.get(await self._http_tenant(request), session_id, touch=False))

    @app.post("/v1/sessions/{session_id}/fork")
    @_http("web.ForkSession")
    async def fork(self, session_id: str, request: Request):
        """JSON ``{"step": int}`` (optional: the session's current step)."""
        tenant = await self._http_tenant(request)
        body = await _json_body(request, 4096)
        step = body.get("step")
        if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
            raise InvalidArgument("step must be an integer")
        return _session_json(await self.sessions.fork_for.remote(tenant, session_id, step))

    # -- live play ---------------------------------------------------------------------------------
    async def _space(self, model: str) -> ActionSpace:
        space = self._spaces.get(model)
        if space is None:
            space = self._spaces[model] = ActionSpace.of(await self.dynamics.model_info.remote(model))
        return space

    def _model_handle(self, model: str):
        h = self._model_handles.get(model)
        if h is None:
            from worldserve.dynamics.service import model_deployment_name

            h = self._model_handles[model] = serve.get_deployment_handle(
                model_deployment_name(model), app_name=self.dynamics_app)
        return h

    async def max_fps(self, model: str) -> float:
        """The live fps bound: the config's, and what the model's measured step time allows (live
        steps measured here; before the first, the model's own seconds per step plus the hops)."""
        bound = float(self.config.live_max_fps)
        s = self._step_s.get(model)
        if s is None:
            try:
                model_s = await self._model_handle(model).step_seconds.remote()
            except Exception as e:  # noqa: BLE001 - no estimate: the config's bound alone
                log.warning("no step time from model %r: %s", model, e)
                model_s = 0.0
            s = model_s + STEP_OVERHEAD_S if model_s else None
        if s:
            bound = min(bound, max(1.0, 1.0 / s))
        return bound

    def _stepper(self, tenant: str, session_id: str, model: str):
        handle = self._model_handle(model).options(session_id=session_id)

        async def step(keys, mouse, event, deadline, tick):
            await self.enforcer.charge_steps(tenant, self.quotas(tenant), 1)
            req = StepRequest(tenant=tenant, session_id=session_id, keys=keys, mouse=mouse, event=event, fmt=RAW,
                              priority=Priority.INTERACTIVE, deadline=deadline)
            t0 = time.perf_counter()
            out, _ = await handle.step.remote(req)
            dt = time.perf_counter() - t0
            prev = self._step_s.get(model)
            self._step_s[model] = dt if prev is None else 0.9 * prev + 0.1 * dt
            f = out.frame
            return out.step, np.frombuffer(f.data, dtype=np.uint8).reshape(f.height, f.width, 3)

        return step

    @staticmethod
    def _names(key: tuple[str, str]) -> tuple[str, str, str]:
        """The session's lease key and its two channels: owner -> relays, relays -> owner."""
        base = f"ws:live:{{{key[0]}:{key[1]}}}"  # one hash slot in a Redis Cluster
        return base, base + ":out", base + ":in"

    async def _lease(self, key: tuple[str, str], fps: float) -> tuple[bool, float]:
        """Take (or renew) the Redis lease that makes this replica the one ticking the session:
        (ours?, the fps of the room that holds it)."""
        name = self._names(key)[0]
        r = self.store.r
        mine = f"{self.replica} {fps}"
        if await r.set(name, mine, nx=True, px=int(LEASE_S * 1000)):
            return True, fps
        held = await r.get(name)
        held = (held.decode() if isinstance(held, bytes) else held) or ""
        owner, _, owner_fps = held.partition(" ")
        if owner == self.replica:
            await r.pexpire(name, int(LEASE_S * 1000))
            return True, float(owner_fps or fps)
        return False, float(owner_fps or fps)

    async def _keep_lease(self, key: tuple[str, str], room: LiveRoom) -> None:
        while self.rooms.get(key) is room:
            await asyncio.sleep(LEASE_S / 3)
            try:
                await self._lease(key, room.fps)
            except Exception as e:  # noqa: BLE001 - Redis away: the next renewal tries again
                log.warning("live lease of %s not renewed: %s", key[1], e)

    def _room_closed(self, key: tuple[str, str], room) -> None:
        if self.rooms.get(key) is room:
            del self.rooms[key]
            task = self._room_tasks.pop(key, None)
            if task is not None:
                task.cancel()
            if isinstance(room, LiveRoom):
                async def release() -> None:
                    name = self._names(key)[0]
                    held = await self.store.r.get(name)
                    held = (held.decode() if isinstance(held, bytes) else held) or ""
                    if held.partition(" ")[0] == self.replica:
                        await self.store.r.delete(name)

                asyncio.ensure_future(release())

    async def _listen(self, channel: str, handle, ready: asyncio.Event) -> None:
        """Feed every message of a Redis channel to ``handle`` until cancelled (``ready`` is set
        once subscribed)."""
        ps = self.store.r.pubsub()
        try:
            await ps.subscribe(channel)
            ready.set()
            while True:
                m = await ps.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if m is not None and m.get("type") == "message":
                    try:
                        await handle(m["data"])
                    except Exception:  # noqa: BLE001 - one bad message never stops the room
                        log.exception("live message on %s not handled", channel)
        except asyncio.CancelledError:
            pass
        finally:
            try:
                await ps.unsubscribe(channel)
                await ps.aclose()
            except Exception:  # noqa: BLE001
                pass

    async def _open_room(self, tenant: str, session_id: str, model: str, fps: float):
        """This replica's room for a live session: the ticking one when it takes the lease, else a
        relay of the replica that holds it (frames and players' messages through Redis pub/sub)."""
        key = (tenant, session_id)
        room = self.rooms.get(key)
        if room is not None and room.closed is None:
            return room
        space = await self._space(model)
        ours, room_fps = await self._lease(key, fps)
        room = self.rooms.get(key)  # again: another player may have opened it during the awaits
        if room is not None and room.closed is None:
            return room
        r = self.store.r
        _, out_ch, in_ch = self._names(key)
        common = dict(session_id=session_id, model=model, fps=room_fps, max_controllers=self.config.live_max_controllers,
                      space=space, metrics=self.live, on_empty=lambda rm: self._room_closed(key, rm))
        stale = self._room_tasks.pop(key, None)  # a closed room's listener (its players still leaving)
        if stale is not None:
            stale.cancel()
        ready = asyncio.Event()
        if ours:
            room = LiveRoom(step=self._stepper(tenant, session_id, model), publish=lambda d: r.publish(out_ch, d),
                            **common)
            listener = self._listen(in_ch, lambda d: room.from_relay(json.loads(d)), ready)
        else:
            room = RelayRoom(replica=self.replica, send=lambda m: r.publish(in_ch, json.dumps(m)), **common)
            listener = self._listen(out_ch, room.on_owner, ready)
        self.rooms[key] = room
        self._room_tasks[key] = asyncio.ensure_future(listener)
        if ours:
            asyncio.ensure_future(self._keep_lease(key, room))
        try:
            await asyncio.wait_for(ready.wait(), timeout=10)
        except asyncio.TimeoutError:
            self._room_closed(key, room)
            raise LiveClosed(1013, "live session unavailable (Redis pub/sub did not answer); try again") from None
        return room

    @app.websocket("/v1/sessions/{session_id}/play")
    async def play(self, ws: WebSocket, session_id: str):
        offered = ws.scope.get("subprotocols") or []
        await ws.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        closed = False

        async def close(code: int, reason: str) -> None:
            nonlocal closed
            if not closed and ws.application_state != WebSocketState.DISCONNECTED:
                closed = True
                try:
                    await ws.close(code=code, reason=reason[:120])
                except Exception:  # noqa: BLE001 - already gone
                    pass

        room = player = None
        try:
            q = ws.query_params
            try:
                cred = _bearer(ws.headers.get("authorization"))
                if cred is None:
                    cred = next((p[len(TOKEN_SUBPROTOCOL):] for p in offered if p.startswith(TOKEN_SUBPROTOCOL)), None)
                if "key" in q or "token" in q or "api_key" in q:
                    raise Unauthenticated("credentials go in the Authorization header or the subprotocol, "
                                          "never in the URL")
                tenant = await self._tenant(cred)
            except Unauthenticated as e:
                raise LiveClosed(4401, str(e)) from None
            role = q.get("role", CONTROLLER)
            if role not in (CONTROLLER, SPECTATOR):
                raise LiveClosed(4400, f"role must be {CONTROLLER!r} or {SPECTATOR!r}")
            fmt = FORMATS.get(q.get("format", "jpeg"))
            if fmt is None:
                raise LiveClosed(4400, f"format must be one of {sorted(FORMATS)}")
            try:
                fps = float(q.get("fps", self.config.live_default_fps))
            except ValueError:
                fps = -1.0
            if not 0 < fps <= 1000:
                raise LiveClosed(4400, "fps must be a number in (0, 1000]")
            try:
                rec = await self.store.get(tenant, session_id, touch=True)
            except NotFound as e:
                raise LiveClosed(4404, str(e)) from None
            except InvalidArgument as e:
                raise LiveClosed(4400, str(e)) from None
            max_fps = await self.max_fps(rec.model)
            room = await self._open_room(tenant, session_id, rec.model, min(fps, max_fps))
            limit = RateLimit(self.config.live_client_msgs_per_s, 2 * self.config.live_client_msgs_per_s)
            player = room.join(role, fmt, ws.send_bytes, ws.send_json, close, limit, open_=False)
            await ws.send_json({
                "type": "hello", "session_id": session_id, "model": rec.model, "role": role, "player": player.pid,
                "fps": room.fps, "max_fps": max_fps, "step": rec.step, "keys": sorted(room.space.keys),
                "mouse_axes": sorted(room.space.mouse_axes), "events_supported": room.space.events_supported,
                "max_controllers": room.max_controllers, "merge": "keys: union; mouse: mean; event: last",
                "relayed": isinstance(room, RelayRoom),  # the session ticks on another gateway replica
            })
            player.opened.set()  # frames from here on
            await room.announce(room.roster())
            await self._receive(ws, room, player)
        except LiveClosed as e:
            await close(e.code, e.reason)
        except WebSocketDisconnect:
            pass
        except Exception as e:  # noqa: BLE001 - a bug: logged by status_of, the player told
            code, msg = status_of(e)
            await close(1011, msg)
        finally:
            if room is not None and player is not None:
                room.leave(player)
                if room.players:
                    await room.announce(room.roster())
            await close(1000, "bye")

    async def _receive(self, ws: WebSocket, room: LiveRoom, player) -> None:
        notice_t = 0.0
        while True:
            m = await ws.receive()
            if m["type"] == "websocket.disconnect":
                return
            text = m.get("text")
            if text is None:
                raise LiveClosed(4400, "binary messages are not accepted; send JSON text")
            if not player.limit.take():  # a flood: this client's messages are dropped, no one else's
                self.live.messages_dropped.inc(reason="rate")
                now = time.monotonic()
                if now - notice_t > 1.0:
                    notice_t = now
                    await ws.send_json({"type": "notice", "reason": "rate limited: messages dropped "
                                        f"(at most {self.config.live_client_msgs_per_s}/s)"})
                continue
            if len(text) > MAX_MESSAGE_BYTES:
                raise LiveClosed(4400, f"message exceeds {MAX_MESSAGE_BYTES} bytes")
            try:
                raw = json.loads(text)
                kind, fields = parse_message(raw, room.space)
            except json.JSONDecodeError:
                raise LiveClosed(4400, "malformed message: not JSON") from None
            except InvalidArgument as e:
                raise LiveClosed(4400, f"malformed message: {e}") from None
            if kind == "ping":
                await ws.send_json({"type": "pong", "t": fields["t"]})
            elif player.role != CONTROLLER:
                self.live.messages_dropped.inc(reason="spectator")
                await ws.send_json({"type": "notice", "reason": "spectators watch; join as a controller to play"})
            else:
                room.receive(player, kind, fields, raw)


def build(args: dict[str, Any]):
    """Serve application builder: ``import_path: worldserve.web.gateway:build``."""
    args = dict(args or {})
    sessions_app = args.pop("sessions_app", "sessions")
    dynamics_app = args.pop("dynamics_app", "dynamics")
    return WebGateway.bind(args, sessions_app, dynamics_app)


__all__ = ["WebGateway", "build", "app", "HTTP_STATUS"]
