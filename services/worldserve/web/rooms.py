"""This gateway replica's live rooms: which replica ticks a live session, the room that ticks it
here or the relay that plays it from here, and the stepper that steps it.

A live session ticks on one gateway replica, the one holding its lease
(:meth:`~worldserve.state.live.LiveState.take_lease`, renewed every third of :data:`LEASE_S`); a
player that reaches another replica plays through a :class:`~worldserve.web.relay.RelayRoom`
there: the owner publishes each tick's frame on the session's ``out`` channel, the relay fans it
out to its players and forwards their messages on the ``in`` channel. Serve-free: the steps go
through a :class:`~worldserve.dynamics.front.StepFront` (``front``: an async getter, the gateway
builds it on first use) and the model's action space comes from ``model_info``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np

from worldserve.common.codec import RAW
from worldserve.dynamics.engine.types import Priority, StepRequest
from worldserve.dynamics.interface import ActionSpace
from worldserve.web.live import LiveRoom
from worldserve.web.live_metrics import LiveMetrics
from worldserve.web.live_protocol import LiveClosed, event_max_bytes
from worldserve.web.relay import RelayRoom

log = logging.getLogger("worldserve.web")

STEP_OVERHEAD_S = 0.02  # a live step's cost beyond the model's (Redis, handle hops), before one is measured
LEASE_S = 15.0  # a live session's lease on its gateway replica, renewed every third of it
SUBSCRIBE_TIMEOUT_S = 10.0  # a room whose channel is not subscribed by then is given up (1013)


class Rooms:
    """The live sessions played from this replica: ``rooms[(tenant, session_id)]``, each a
    :class:`LiveRoom` (ticking here) or a :class:`RelayRoom` (ticking on another replica).

    ``state``: a :class:`~worldserve.state.live.LiveState`; ``front``: ``async () -> StepFront``;
    ``model_info``: ``async (model) -> info dict`` (its keys, mouse axes, events);
    ``enforcer`` / ``quotas``: the step-rate quota (a QuotaEnforcer, tenant -> Quotas).
    """

    def __init__(
        self,
        *,
        config,
        state,
        front: Callable[[], Awaitable[Any]],
        model_info: Callable[[str], Awaitable[dict]],
        enforcer,
        quotas: Callable[[str], Any],
        metrics: LiveMetrics,
        replica: str | None = None,
        lease_s: float = LEASE_S,
    ) -> None:
        self.config, self.state = config, state
        self.front, self._model_info = front, model_info
        self.enforcer, self.quotas = enforcer, quotas
        self.live = metrics
        self.replica = replica or secrets.token_hex(8)
        self.lease_s = lease_s
        self.rooms: dict[tuple[str, str], LiveRoom | RelayRoom] = {}  # live sessions played from here
        self._listeners: dict[tuple[str, str], asyncio.Future] = {}  # their pub/sub listeners
        self._background: set[asyncio.Future] = set()  # lease renewals and releases
        self._controls: dict[str, tuple[ActionSpace, int]] = {}  # model -> what its controllers may send

    def _spawn(self, aw: Awaitable[Any]) -> asyncio.Future:
        f = asyncio.ensure_future(aw)
        self._background.add(f)
        f.add_done_callback(self._background.discard)
        return f

    # -- models ----------------------------------------------------------------------------------
    async def controls(self, model: str) -> tuple[ActionSpace, int]:
        """What a controller of ``model`` may send: its action space, and the longest event text it
        takes (0: none). From the model's info, fetched once."""
        controls = self._controls.get(model)
        if controls is None:
            info = await self._model_info(model)
            controls = self._controls[model] = (ActionSpace.from_info(info), event_max_bytes(info))
        return controls

    async def max_fps(self, model: str) -> float:
        """The live fps bound: the config's, and what the model's measured step time allows (steps
        measured through the front; before the first, the model's own seconds per step plus the hops)."""
        bound = float(self.config.live_max_fps)
        try:
            front = await self.front()
            s = front.measured_step_s(model)
            if s is None:
                model_s = await front.replica_step_seconds(model)
                s = model_s + STEP_OVERHEAD_S if model_s else None
        except Exception as e:  # no estimate: the config's bound alone
            log.warning("no step time from model %r: %s", model, e)
            s = None
        if s:
            bound = min(bound, max(1.0, 1.0 / s))
        return bound

    def stepper(self, tenant: str, session_id: str):
        """The room's step: the tenant's step rate charged, one interactive step through the front."""

        async def step(keys, mouse, event, deadline, tick):
            front = await self.front()
            await self.enforcer.charge_steps(tenant, self.quotas(tenant), 1)
            req = StepRequest(
                tenant=tenant,
                session_id=session_id,
                keys=keys,
                mouse=mouse,
                event=event,
                fmt=RAW,
                priority=Priority.INTERACTIVE,
                deadline=deadline,
            )
            out, _, _ = await front.step(req)  # the front measures it (max_fps); maps a free-text event
            f = out.frame
            return out.step, np.frombuffer(f.data, dtype=np.uint8).reshape(f.height, f.width, 3), out.event

        return step

    # -- rooms -----------------------------------------------------------------------------------
    async def open(self, tenant: str, session_id: str, model: str, fps: float) -> LiveRoom | RelayRoom:
        """This replica's room for a live session: the ticking one when it takes the lease, else a
        relay of the replica that holds it (frames and players' messages through Redis pub/sub)."""
        key = (tenant, session_id)
        room = self.rooms.get(key)
        if room is not None and room.closed is None:
            return room
        space, event_bytes = await self.controls(model)
        lease, out_ch, in_ch = self.state.names(key)
        ours, room_fps = await self.state.take_lease(lease, self.replica, fps, self.lease_s)
        room = self.rooms.get(key)  # again: another player may have opened it during the awaits
        if room is not None and room.closed is None:
            return room
        state = self.state
        common = dict(
            session_id=session_id,
            model=model,
            fps=room_fps,
            max_controllers=self.config.live_max_controllers,
            space=space,
            event_max_bytes=event_bytes,
            metrics=self.live,
            on_empty=lambda rm: self.room_closed(key, rm),
        )
        stale = self._listeners.pop(key, None)  # a closed room's listener (its players still leaving)
        if stale is not None:
            stale.cancel()
        ready = asyncio.Event()
        if ours:
            room = LiveRoom(step=self.stepper(tenant, session_id), publish=lambda d: state.publish(out_ch, d), **common)
            listener = state.subscribe(in_ch, lambda d: room.from_relay(json.loads(d)), ready)
        else:
            room = RelayRoom(replica=self.replica, send=lambda m: state.publish(in_ch, json.dumps(m)), **common)
            listener = state.subscribe(out_ch, room.on_owner, ready)
        self.rooms[key] = room
        self._listeners[key] = asyncio.ensure_future(listener)
        if ours:
            self._spawn(self._keep_lease(key, room))
        try:
            await asyncio.wait_for(ready.wait(), timeout=SUBSCRIBE_TIMEOUT_S)
        except asyncio.TimeoutError:
            self.room_closed(key, room)
            raise LiveClosed(1013, "live session unavailable (Redis pub/sub did not answer); try again") from None
        return room

    async def _keep_lease(self, key: tuple[str, str], room: LiveRoom) -> None:
        lease = self.state.names(key)[0]
        while self.rooms.get(key) is room:
            await asyncio.sleep(self.lease_s / 3)
            try:
                await self.state.renew_lease(lease, self.replica, room.fps, self.lease_s)
            except Exception as e:  # Redis away: the next renewal tries again
                log.warning("live lease of %s not renewed: %s", key[1], e)

    def room_closed(self, key: tuple[str, str], room) -> None:
        """A room emptied (its ``on_empty``): forgotten, its listener stopped, its lease released."""
        if self.rooms.get(key) is room:
            del self.rooms[key]
            task = self._listeners.pop(key, None)
            if task is not None:
                task.cancel()
            if isinstance(room, LiveRoom):
                self._spawn(self._release(key))

    async def _release(self, key: tuple[str, str]) -> None:
        try:
            await self.state.release_lease(self.state.names(key)[0], self.replica)
        except Exception as e:  # it expires on its own within LEASE_S
            log.warning("live lease of %s not released: %s", key[1], e)


__all__ = ["LEASE_S", "STEP_OVERHEAD_S", "Rooms"]
