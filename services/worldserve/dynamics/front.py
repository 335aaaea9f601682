"""The one entry point for stepping a session, used by the gRPC ingress and the web gateway alike.

Protocol-free: typed requests in (:class:`~worldserve.dynamics.engine.types.StepRequest`),
:class:`~worldserve.dynamics.engine.types.StepOutput` out, worldserve errors for every refusal.
For each step it finds the session's model (remembered: a session's model never changes), checks
that model is served, and hands the step to that model's deployment through a handle carrying the
session id, so the consistent-hash router keeps a session on one replica of its model. The step
rate quota travels with the request (``StepRequest.rate``) and is charged by the model replica in
the same Redis round trip that reads the session, so a warm step costs the front no Redis at all.

World events: for a model that declares its events (``ModelInfo.events``), an ``event`` that is
not one of them word for word is free text, mapped to one by the text app
(:class:`~worldserve.common.understanding.EventResolver`, its answers cached per front); the
model gets the declared event, the step log records both (``event``, ``event_text``).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

from worldserve.common.errors import FailedPrecondition, InvalidArgument
from worldserve.common.understanding import EventResolver, ParseEvent
from worldserve.dynamics.engine.types import StepOutput, StepRequest
from worldserve.state.store import SessionStore
from worldserve.text.spec import MAX_TEXT_CHARS

MODEL_DEPLOYMENT_PREFIX = "DynamicsModel-"
INFO_TTL_S = 30.0  # how long the front trusts a model's reported info (its runtime may change)
ROUTE_CACHE_SESSIONS = 100_000  # session -> model entries the front remembers


def model_deployment_name(model: str) -> str:
    """The Serve deployment that runs ``model`` (:class:`~worldserve.dynamics.service.ModelServer`)."""
    return MODEL_DEPLOYMENT_PREFIX + model


class StepFront:
    """Routes steps to the deployments of the served models.

    ``handles``: model name -> the DeploymentHandle of its ``DynamicsModel-<name>`` deployment
    (``ModelServer``), or a callable that returns it (the web gateway looks handles up lazily).
    ``served``: the names of the served models; ``default_model`` the default's.
    """

    def __init__(
        self,
        store: SessionStore,
        handles: Mapping[str, Any] | Callable[[str], Any],
        served: list[str],
        default_model: str,
        *,
        on_routed: Callable[[str], None] | None = None,
        parse_event: ParseEvent | None = None,
    ):
        """``parse_event``: the text app's (``TextClient.parse_event``; None: not deployed, free-text
        events answer FAILED_PRECONDITION, declared events still work)."""
        self.store = store
        self.events = EventResolver(parse_event, max_chars=MAX_TEXT_CHARS)
        self._handles = handles
        self._handle_cache: dict[str, Any] = dict(handles) if isinstance(handles, Mapping) else {}
        self.served = list(served)
        self.default_model = default_model
        self._on_routed = on_routed
        self._routes: collections.OrderedDict[tuple[str, str], str] = collections.OrderedDict()
        self._infos: dict[str, tuple[float, dict]] = {}
        self._step_s: dict[str, float] = {}  # model -> measured seconds per step through the front (EMA)

    # -- models -----------------------------------------------------------------------------------
    def served_names(self) -> str:
        return ", ".join(repr(m) for m in self.served)

    def handle(self, model: str) -> Any:
        """The deployment handle of a served model; INVALID_ARGUMENT naming the served ones."""
        h = self._handle_cache.get(model)
        if h is None:
            if model not in self.served or isinstance(self._handles, Mapping):
                raise InvalidArgument(f"unknown model {model!r}; this cluster serves {self.served_names()}")
            h = self._handle_cache[model] = self._handles(model)
        return h

    async def model_info(self, model: str = "") -> dict:
        """A served model's info and runtime as plain data (``service.model_info_dict``), cached."""
        model = model or self.default_model
        h = self.handle(model)
        hit = self._infos.get(model)
        if hit is None or time.monotonic() - hit[0] > INFO_TTL_S:
            hit = (time.monotonic(), await h.info.remote())
            self._infos[model] = hit
        return hit[1]

    async def list_models(self) -> list[dict]:
        return list(await asyncio.gather(*(self.model_info(m) for m in self.served)))

    def measured_step_s(self, model: str) -> float | None:
        """Seconds per step of ``model`` as measured through this front (a moving average of its
        recent steps, handle hops included); None before its first step here."""
        return self._step_s.get(model)

    async def replica_step_seconds(self, model: str) -> float:
        """The model replica's own model seconds per step, without the hops (0.0: no step yet)."""
        return float(await self.handle(model).step_seconds.remote())

    # -- routes -----------------------------------------------------------------------------------
    def _remember(self, key: tuple[str, str], model: str) -> None:
        self._routes[key] = model
        if len(self._routes) > ROUTE_CACHE_SESSIONS:
            self._routes.popitem(last=False)

    def known(self, tenant: str, session_id: str) -> bool:
        return (tenant, session_id) in self._routes

    async def prefetch(self, tenant: str, session_ids: list[str]) -> None:
        """Learn the models of many sessions in one Redis round trip (a StepBatch); unknown
        sessions are left out (their steps then answer NOT_FOUND on their own)."""
        missing = [sid for sid in dict.fromkeys(session_ids) if (tenant, sid) not in self._routes]
        for sid, model in zip(missing, await self.store.models_of(tenant, missing)):
            if model is not None:
                self._remember((tenant, sid), model)

    async def model_of(self, tenant: str, session_id: str) -> str:
        """The served model a session is bound to; NOT_FOUND, or FAILED_PRECONDITION when its
        model is not served here."""
        key = (tenant, session_id)
        model = self._routes.get(key)
        if model is None:
            model = (await self.store.get(tenant, session_id, touch=False)).model
            self._remember(key, model)
        else:
            self._routes.move_to_end(key)
        if model not in self.served:
            raise FailedPrecondition(
                f"session {session_id!r} is bound to model {model!r}, which this cluster does "
                f"not serve ({self.served_names()})"
            )
        return model

    # -- events -----------------------------------------------------------------------------------
    async def declared_events(self, model: str) -> list[str]:
        """The events ``model`` declares (empty: none; any event text is passed through)."""
        return list((await self.model_info(model)).get("events") or ())

    async def resolve_event(self, model: str, event: str | None) -> tuple[str | None, str]:
        """(the event the model gets, the free text it was given as or "")."""
        if not event:
            return event, ""
        return await self.events.resolve(event, await self.declared_events(model))

    # -- the step ---------------------------------------------------------------------------------
    async def step(self, req: StepRequest) -> tuple[StepOutput, str, str]:
        """One step of ``req.session_id`` on its model's deployment: (output, model, replica). A
        free-text event is mapped to one of the model's declared events first."""
        model = await self.model_of(req.tenant, req.session_id)
        if req.event:
            event, text = await self.resolve_event(model, req.event)
            if (event, text) != (req.event, req.event_text):  # the declared event as the model spells it
                req = dataclasses.replace(req, event=event, event_text=text)
        if self._on_routed is not None:
            self._on_routed(model)
        t0 = time.perf_counter()
        out, replica = await self.handle(model).options(session_id=req.session_id).step.remote(req)
        dt = time.perf_counter() - t0
        prev = self._step_s.get(model)
        self._step_s[model] = dt if prev is None else 0.9 * prev + 0.1 * dt
        return out, model, replica

    async def check_actions(
        self, tenant: str, session_id: str, actions: list[tuple[tuple[str, ...], dict, str | None]]
    ) -> None:
        """Validate a Rollout's actions against the session's model before its first step (free-text
        events are mapped first: the answers are cached for the steps)."""
        model = await self.model_of(tenant, session_id)
        resolved = []
        for i, (keys, mouse, event) in enumerate(actions):
            try:
                resolved.append((keys, mouse, (await self.resolve_event(model, event))[0]))
            except InvalidArgument as e:
                raise InvalidArgument(f"actions[{i}]: {e}") from None
        await self.handle(model).check_actions.remote(resolved)
