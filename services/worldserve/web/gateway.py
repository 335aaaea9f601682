"""The web gateway: a Serve application on Serve's HTTP proxy (FastAPI), for browsers.

- ``GET /``: the play page (``static/``: nothing is loaded from outside the cluster);
- ``POST /v1/tokens``: a short-lived token for the API key in the ``Authorization`` header (the
  page's WebSocket carries the token, never the key; a key is never put in a URL, nor logged);
- ``GET /v1/models``, ``POST /v1/sessions``, ``GET /v1/sessions/{id}``, ``POST /v1/sessions/{id}/fork``:
  JSON over the sessions and dynamics applications' deployment handles;
- ``WS /v1/sessions/{id}/play?role=controller|spectator&fps=N&format=jpeg|png|raw``: a live
  player; authenticated by ``Authorization: Bearer <key or token>`` or by the subprotocol
  ``worldserve.token.<token>`` beside ``worldserve``.

This module is the ingress alone: it wires the parts and its routes delegate to them.

- worldserve.web.api: the HTTP routes' work, and :func:`~worldserve.web.api.http`, the one place
  an HTTP request's credential becomes a tenant and an error its HTTP status;
- worldserve.web.play: the WebSocket protocol of a live player;
- worldserve.web.rooms: the live rooms of this replica: leases, relays, the stepper;
- worldserve.web.live / worldserve.web.relay: a room ticking here / a relay of one ticking elsewhere
  (worldserve.web.live_protocol: their messages and frames; live_players: their players here;
  live_metrics: their metrics);
- worldserve.state.live: their Redis (tokens, leases, channels).

Live steps go through one :class:`~worldserve.dynamics.front.StepFront` (built on first use from
the dynamics application's served models) to the session's model deployment
(``DynamicsModel-<name>``), with the session as the routing key (session affinity). A live
session ticks on one gateway replica, the one holding its Redis lease; a player that reaches
another replica plays through a relay there, so the gateway scales out like any other deployment.

No ``from __future__ import annotations`` here: FastAPI reads the handlers' parameter types
(``Request``, ``WebSocket``) at run time, and under ``serve.ingress`` string annotations were
seen to turn ``request`` into a query parameter (422). Module helpers sit above the class: the
replica gets the class by value and only the names defined before it.
"""

import asyncio
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from ray import serve

from worldserve.common.servicer import ServiceBase
from worldserve.common.serving import DeploymentOptions
from worldserve.dynamics.front import StepFront, model_deployment_name
from worldserve.state.live import LiveState
from worldserve.state.quotas import QuotaEnforcer
from worldserve.text.client import TextClient
from worldserve.web.api import HTTP_STATUS, KEY_ONLY, HttpApi, http
from worldserve.web.live_metrics import LiveMetrics
from worldserve.web.play import LivePlay
from worldserve.web.rooms import Rooms

STATIC = Path(__file__).parent / "static"

app = FastAPI(title="worldserve web gateway", docs_url=None, redoc_url=None, openapi_url=None)
app.mount("/static", StaticFiles(directory=STATIC), name="static")


@serve.deployment(
    name="WebGateway",
    max_ongoing_requests=1024,  # every open WebSocket is an ongoing request
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 256},
    ray_actor_options={"num_cpus": 0.25},
)
@serve.ingress(app)
class WebGateway(ServiceBase):
    service = "web"

    def __init__(
        self, config: dict[str, Any] | None = None, sessions_app: str = "sessions", dynamics_app: str = "dynamics"
    ):
        from worldserve.state.store import SessionStore

        super().__init__(config)
        self.wire(
            SessionStore.from_config(self.config),
            sessions=serve.get_deployment_handle("SessionService", app_name=sessions_app),
            dynamics=serve.get_deployment_handle("DynamicsService", app_name=dynamics_app),
            model_handle=lambda model: serve.get_deployment_handle(model_deployment_name(model), app_name=dynamics_app),
            parse_event=TextClient(self.config).parse_event,
        )

    def wire(self, store, *, sessions, dynamics, model_handle, parse_event=None) -> None:
        """The parts, over the store and the handles (Serve's in ``__init__``; the unit tests' own);
        ``parse_event``: the text app's (free-text events in live play; None: not deployed)."""
        self.store, self.sessions, self.dynamics = store, sessions, dynamics
        self._model_handle = model_handle
        self._parse_event = parse_event
        self._front: StepFront | None = None
        self._front_lock = asyncio.Lock()
        self.enforcer = QuotaEnforcer(store, self.metrics)
        state = LiveState(store)
        self.api = HttpApi(
            config=self.config,
            store=store,
            live=state,
            sessions=sessions,
            dynamics=dynamics,
            authenticate=self.tenant_of,
            metrics=self.metrics,
        )
        self.live = LiveMetrics(self.metrics)
        self.rooms = Rooms(
            config=self.config,
            state=state,
            front=self.front,
            model_info=lambda model: dynamics.model_info.remote(model),
            enforcer=self.enforcer,
            quotas=self.quotas,
            metrics=self.live,
        )
        self.players = LivePlay(
            config=self.config, store=store, rooms=self.rooms, tenant=self.api.tenant, metrics=self.live
        )

    async def front(self) -> StepFront:
        """The step front of the dynamics application's served models (asked once, on first use)."""
        if self._front is None:
            async with self._front_lock:
                if self._front is None:
                    infos, default = await self.dynamics.list_models.remote()
                    self._front = StepFront(
                        self.store,
                        self._model_handle,
                        served=[i["name"] for i in infos],
                        default_model=default,
                        parse_event=self._parse_event,
                    )
        return self._front

    # -- HTTP --------------------------------------------------------------------------------------
    @app.get("/")
    async def index(self) -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.post("/v1/tokens")
    @http("web.MintToken", auth=KEY_ONLY)
    async def mint_token(self, tenant: str):
        """A live token for the key in the Authorization header (a token cannot mint another)."""
        return await self.api.mint_token(tenant)

    @app.get("/v1/models")
    @http("web.ListModels")
    async def models(self):
        return await self.api.models()

    @app.post("/v1/sessions")
    @http("web.CreateSession")
    async def create(self, request: Request, tenant: str):
        """JSON ``{"prompt": str, "seed": int, "model": str}`` or ``{"image": base64 PNG/JPEG, ...}``."""
        return await self.api.create(tenant, request)

    @app.get("/v1/sessions/{session_id}")
    @http("web.GetSession")
    async def get(self, session_id: str, tenant: str):
        return await self.api.get(tenant, session_id)

    @app.post("/v1/sessions/{session_id}/fork")
    @http("web.ForkSession")
    async def fork(self, session_id: str, request: Request, tenant: str):
        """JSON ``{"step": int}`` (optional: the session's current step)."""
        return await self.api.fork(tenant, session_id, request)

    # -- live play ---------------------------------------------------------------------------------
    @app.websocket("/v1/sessions/{session_id}/play")
    async def play(self, ws: WebSocket, session_id: str):
        await self.players.play(ws, session_id)


def build(args: dict[str, Any]):
    """Serve application builder: ``import_path: worldserve.web.gateway:build``."""
    args = dict(args or {})
    options = DeploymentOptions(args)
    sessions_app = args.pop("sessions_app", "sessions")
    dynamics_app = args.pop("dynamics_app", "dynamics")
    app = options.apply(WebGateway).bind(args, sessions_app, dynamics_app)
    options.check()
    return app


__all__ = ["HTTP_STATUS", "WebGateway", "app", "build"]
