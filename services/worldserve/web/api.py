"""The web gateway's HTTP API: live tokens, models, and sessions (create, get, fork) as JSON.

Serve-free: :class:`HttpApi` answers with plain dicts and raises worldserve errors; it reaches the
sessions and dynamics applications through the deployment handles it is given (anything with
``.method.remote(...)``) and Redis only through :class:`~worldserve.state.live.LiveState` and the
session store. The ingress (worldserve.web.gateway) routes to it through :func:`http`, the one
place where an HTTP request's credential becomes a tenant and an error becomes
``{"code", "message"}`` with its HTTP status (:data:`HTTP_STATUS`).
"""

from __future__ import annotations

import base64
import binascii
import functools
import inspect
import json
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict

import grpc
from fastapi.responses import JSONResponse
from starlette.requests import Request

from worldserve.common.errors import InvalidArgument, Unauthenticated, status_of

TOKEN_PREFIX = "wst_"
FORK_BODY_BYTES = 4096
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.INTERNAL: 500,
}
"""The one table from a status code (worldserve.common.errors.status_of) to an HTTP status."""

KEY_OR_TOKEN, KEY_ONLY, PUBLIC = "key or token", "key", "public"
"""What :func:`http` accepts in the ``Authorization`` header: an API key or a live token; an API
key alone (minting a token); nothing (no credential is read)."""


def bearer(value: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer <key or token>`` header (None: no header)."""
    if value is None:
        return None
    scheme, _, cred = value.partition(" ")
    if scheme.lower() != "bearer" or not cred.strip():
        raise Unauthenticated("malformed Authorization header: expected 'Bearer <key or token>'")
    return cred.strip()


async def json_body(request: Request, limit: int) -> dict:
    """The request's JSON object (``{}`` for an empty body); INVALID_ARGUMENT otherwise."""
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


def session_json(rec) -> dict:
    d = asdict(rec)
    return {
        k: d[k]
        for k in (
            "session_id",
            "model",
            "prompt",
            "seed",
            "step",
            "parent_id",
            "fork_step",
            "created_at",
            "width",
            "height",
        )
    } | {"understood": rec.understood}


class HttpApi:
    """What the HTTP routes do, and the tenant of a credential (for the WebSocket too).

    ``authenticate``: authorization metadata pairs -> the tenant of the API key in them
    (``ServiceBase.tenant_of``: the key ring, reloaded on an unknown key); ``live``: a
    :class:`~worldserve.state.live.LiveState` (the tokens); ``sessions`` / ``dynamics``: the
    ``SessionService`` and ``DynamicsService`` deployment handles.
    """

    def __init__(
        self,
        *,
        config,
        store,
        live,
        sessions,
        dynamics,
        authenticate: Callable[[Iterable[tuple[str, str]]], str],
        metrics,
    ) -> None:
        self.config, self.store, self.live = config, store, live
        self.sessions, self.dynamics = sessions, dynamics
        self._authenticate = authenticate
        self.metrics = metrics

    # -- credentials -----------------------------------------------------------------------------
    def key_tenant(self, key: str | None) -> str:
        """The tenant of an API key (UNAUTHENTICATED for none, an unknown one, or a token)."""
        if key and key.startswith(TOKEN_PREFIX):
            raise Unauthenticated("a token cannot mint a token; send the API key")
        return self._authenticate([("authorization", f"Bearer {key}")] if key else [])

    async def tenant(self, credential: str | None) -> str:
        """The tenant of an API key or of a live token (UNAUTHENTICATED otherwise)."""
        if credential and credential.startswith(TOKEN_PREFIX):
            tenant = await self.live.token_tenant(credential)
            if tenant is None:
                raise Unauthenticated("unknown or expired token; mint a new one at POST /v1/tokens")
            return tenant
        return self._authenticate([("authorization", f"Bearer {credential}")] if credential else [])

    # -- the routes' work ------------------------------------------------------------------------
    async def mint_token(self, tenant: str) -> dict:
        """A live token for ``tenant`` (authenticated by its key, never by a token)."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(24)
        ttl = self.config.live_token_ttl_s
        await self.live.mint_token(token, tenant, ttl)
        return {"token": token, "expires_in": ttl, "tenant": tenant}

    async def models(self) -> dict:
        infos, default = await self.dynamics.list_models.remote()
        return {"default_model": default, "models": infos}

    async def create(self, tenant: str, request: Request) -> dict:
        """JSON ``{"prompt": str, "seed": int, "model": str}`` or ``{"image": base64 PNG/JPEG, ...}``."""
        body = await json_body(request, self.config.max_upload_bytes * 2)
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
        return session_json(rec)

    async def get(self, tenant: str, session_id: str) -> dict:
        return session_json(await self.store.get(tenant, session_id, touch=False))

    async def fork(self, tenant: str, session_id: str, request: Request) -> dict:
        """JSON ``{"step": int}`` (optional: the session's current step)."""
        body = await json_body(request, FORK_BODY_BYTES)
        step = body.get("step")
        if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
            raise InvalidArgument("step must be an integer")
        return session_json(await self.sessions.fork_for.remote(tenant, session_id, step))


def http(rpc: str, auth: str = KEY_OR_TOKEN):
    """An HTTP route of the ingress: its tenant, timing, ``requests`` metric and errors.

    The one place an HTTP request is authenticated: unless ``auth`` is :data:`PUBLIC`, the
    ``Authorization`` header's credential is resolved by the ingress's ``self.api``
    (:class:`HttpApi`) and handed to the route as its ``tenant`` parameter (a route that does not
    name one is still authenticated). FastAPI sees the route's own parameters less ``tenant``,
    plus ``request`` when the route does not take it. Errors answer ``{"code", "message"}`` with
    the HTTP status of their gRPC code (the HTTP side of ``errors.grpc_method``).
    """
    if auth not in (KEY_OR_TOKEN, KEY_ONLY, PUBLIC):
        raise ValueError(f"auth must be one of {KEY_OR_TOKEN!r}, {KEY_ONLY!r}, {PUBLIC!r}")

    def wrap(fn):
        sig = inspect.signature(fn)
        takes_tenant, takes_request = "tenant" in sig.parameters, "request" in sig.parameters
        if takes_tenant and auth == PUBLIC:
            raise TypeError(f"{fn.__qualname__}: a public route has no tenant")
        params = [p for p in sig.parameters.values() if p.name != "tenant"]
        if not takes_request:
            params.append(inspect.Parameter("request", inspect.Parameter.KEYWORD_ONLY, annotation=Request))
        shown = sig.replace(parameters=params)

        @functools.wraps(fn)
        async def handler(self, *args, **kwargs):
            t0 = time.perf_counter()
            api = self.api
            try:
                request = shown.bind(self, *args, **kwargs).arguments["request"]
                if not takes_request:
                    kwargs.pop("request", None)
                if auth != PUBLIC:
                    cred = bearer(request.headers.get("authorization"))
                    tenant = api.key_tenant(cred) if auth == KEY_ONLY else await api.tenant(cred)
                    if takes_tenant:
                        kwargs["tenant"] = tenant
                out = await fn(self, *args, **kwargs)
                code = "OK"
            except Exception as e:  # answered with its status
                status, msg = status_of(e)
                out, code = (
                    JSONResponse({"code": status.name, "message": msg}, status_code=HTTP_STATUS.get(status, 500)),
                    status.name,
                )
            api.metrics.record_rpc(rpc, code, time.perf_counter() - t0)
            return out

        handler.__signature__ = shown  # what FastAPI (and Serve's class-based view) read, not fn's
        return handler

    return wrap


__all__ = [
    "FORK_BODY_BYTES",
    "HTTP_STATUS",
    "KEY_ONLY",
    "KEY_OR_TOKEN",
    "PUBLIC",
    "TOKEN_PREFIX",
    "HttpApi",
    "bearer",
    "http",
    "json_body",
    "session_json",
]
