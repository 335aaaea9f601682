"""Live play's Redis: the web gateway's tokens, the lease that picks the replica ticking a live
session, and the session's two pub/sub channels (owner -> relays, relays -> owner).

The web package never holds a Redis client; it calls these. Keys and messages are the ones the
gateway has always used (tokens minted by an older replica keep working during a rolling update):

- ``ws:webtoken:<sha256(token) hex>`` -> the tenant, expiring with the token;
- ``ws:live:{<tenant>:<session>}`` -> ``"<replica> <fps>"``, the lease (``SET NX PX``, renewed by
  ``PEXPIRE``, deleted by its holder when its room closes);
- ``ws:live:{<tenant>:<session>}:out`` and ``...:in``: the channels (one hash slot with the lease).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from worldserve.state.store import SessionStore

log = logging.getLogger("worldserve.web")

TOKEN_KEY_PREFIX = "ws:webtoken:"


def _text(v: Any) -> str:
    return (v.decode() if isinstance(v, bytes) else v) or ""


class LiveState:
    """Tokens, live leases and live channels over the store's Redis client."""

    def __init__(self, store: SessionStore) -> None:
        self.r = store.r  # a worldserve.state.store.SessionStore's client (one pool per replica)

    # -- tokens ----------------------------------------------------------------------------------
    @staticmethod
    def token_key(token: str) -> str:
        return TOKEN_KEY_PREFIX + hashlib.sha256(token.encode()).hexdigest()

    async def mint_token(self, token: str, tenant: str, ttl_s: int) -> None:
        """Remember ``token`` as ``tenant``'s for ``ttl_s`` seconds (only its hash is stored)."""
        await self.r.set(self.token_key(token), tenant, ex=ttl_s)

    async def token_tenant(self, token: str) -> str | None:
        """The tenant of a live token, None when unknown or expired."""
        tenant = await self.r.get(self.token_key(token))
        return None if tenant is None else _text(tenant)

    # -- names -----------------------------------------------------------------------------------
    @staticmethod
    def names(key: tuple[str, str]) -> tuple[str, str, str]:
        """A live session's (tenant, session id) -> its lease key and its two channels: owner ->
        relays, relays -> owner."""
        base = f"ws:live:{{{key[0]}:{key[1]}}}"  # one hash slot in a Redis Cluster
        return base, base + ":out", base + ":in"

    # -- the lease -------------------------------------------------------------------------------
    async def take_lease(self, key: str, owner: str, fps: float, ttl_s: float) -> tuple[bool, float]:
        """Take (or, held by ``owner`` already, renew) the lease ``key``: (``owner`` holds it?,
        the fps of the room that holds it)."""
        mine = f"{owner} {fps}"
        if await self.r.set(key, mine, nx=True, px=int(ttl_s * 1000)):
            return True, fps
        held_by, _, held_fps = _text(await self.r.get(key)).partition(" ")
        if held_by == owner:
            await self.r.pexpire(key, int(ttl_s * 1000))
            return True, float(held_fps or fps)
        return False, float(held_fps or fps)

    async def renew_lease(self, key: str, owner: str, fps: float, ttl_s: float) -> tuple[bool, float]:
        """The holder's periodic renewal (the same round trips as :meth:`take_lease`: a lease
        that expired meanwhile is taken again when free)."""
        return await self.take_lease(key, owner, fps, ttl_s)

    async def lease(self, key: str) -> tuple[str, float] | None:
        """Who holds the lease ``key`` and at what fps (None: nobody)."""
        held = _text(await self.r.get(key))
        if not held:
            return None
        owner, _, fps = held.partition(" ")
        return owner, float(fps or 0.0)

    async def release_lease(self, key: str, owner: str) -> bool:
        """Delete the lease if ``owner`` holds it (True when it did)."""
        if _text(await self.r.get(key)).partition(" ")[0] == owner:
            await self.r.delete(key)
            return True
        return False

    # -- channels --------------------------------------------------------------------------------
    async def publish(self, channel: str, data: bytes | str) -> int:
        """Send ``data`` on ``channel``; returns how many subscribers received it."""
        n: int = await self.r.publish(channel, data)
        return n

    async def subscribe(self, channel: str, handle: Callable[[bytes], Awaitable[Any]], ready: asyncio.Event) -> None:
        """Feed every message of ``channel`` to ``handle`` until cancelled (``ready`` is set once
        subscribed). A message ``handle`` fails on is logged and skipped."""
        ps = self.r.pubsub()
        try:
            await ps.subscribe(channel)
            ready.set()
            while True:
                m = await ps.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if m is not None and m.get("type") == "message":
                    try:
                        await handle(m["data"])
                    except Exception:  # one bad message never stops the room
                        log.exception("live message on %s not handled", channel)
        except asyncio.CancelledError:
            pass
        finally:
            try:
                await ps.unsubscribe(channel)
                await ps.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # redis-py (before 8.2) leaves PubSub.aclose untyped
            except Exception:  # the connection is gone already
                pass


__all__ = ["TOKEN_KEY_PREFIX", "LiveState"]
