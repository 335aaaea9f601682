"""World state in Redis. Redis holds the truth of a session's hot state; replica memory is only a
cache, and the trajectory archive (worldserve.state.archive) holds its older steps.

Keys (``<t>`` tenant, ``<sid>`` session id; the ``{<sid>}`` hash tag keeps a session's two keys in
one Redis Cluster slot so its Lua scripts stay legal there):

- ``ws:<t>:{<sid>}`` hash: the record (model, prompt, seed, step, parent_id, fork_step, created_at,
  updated_at, ttl_s, width, height, version, text_tokens; ``understood_spec`` (JSON),
  ``understood_caption``, ``understood_source``: how the prompt was understood, absent in older
  records; ``archived``: the last step in the archive,
  ``trimmed``: the last step Redis dropped).
- ``ws:<t>:{<sid>}:log`` hash: ``a:<n>`` action (JSON), ``z:<n>`` latent (packed array,
  :func:`worldserve.common.codec.pack_array`: a header + the most compact exact encoding, maybe
  zstd, maybe packed against the step's frame; never pickle) and ``f:<n>`` encoded frame (PNG) of
  the steps after ``trimmed`` (older code dropped a frame once archived: its latents do not need it); ``k:<n>`` the model's resume data of step n (what an
  exact prefill needs beyond the latents, e.g. a KV page; safetensors, zstd-compressed where that is smaller) for the last context window; ``r:<request id>`` -> n and ``q:<n>`` -> request id
  for exactly-once retries; ``t`` the session's text embedding (safetensors, optional: read with
  the window at every prefill, copied on fork, never trimmed). The model's context is the rolling
  window of its last latents.
- ``ws:<t>:index`` sorted set: session ids by creation time (for ListSessions, and the tenant's
  live-session count of the ``max_sessions`` quota: a create reserves its id here first, in one
  script that checks the count, then writes the record).
- ``ws:archive:due`` sorted set: sessions with a full chunk to archive (the archiver's queue).

Every append is one Lua script: a compare-and-set on the step counter, so two racing Steps on one
session never both land. With an archive, the archiver writes each full chunk of steps, then one
script moves ``archived`` (compare-and-set) and drops the steps older than the hot window: per
session, Redis holds the window and the unarchived tail, whatever the step count. Both session
keys expire by the session's TTL, refreshed on every use. With an archive a fork copies only the
parent's context window (its older unarchived steps are archived first) and shares its archived
chunks by reference; without one it copies every step Redis holds.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis

from worldserve.common.errors import Conflict, DataLoss, InvalidArgument, NotFound, Unavailable
from worldserve.state import scripts
from worldserve.state.records import (
    ARCHIVE_DUE,
    DELETIONS_CHANNEL,
    REQUEST_ID_RE,
    SCHEMA_VERSION,
    SESSION_ID_RE,
    AlreadyApplied,
    LogEntry,
    SessionRecord,
    SessionsFull,
    action_to_dict,
    check_request_id,
    check_session_id,
    index_key,
    log_key,
    new_session_id,
    raw_values,
    record_key,
    scored_rows,
)
from worldserve.state.steplog import StepLog

if TYPE_CHECKING:
    from redis.asyncio.client import Pipeline
    from redis.asyncio.cluster import ClusterPipeline, RedisCluster
    from redis.typing import EncodableT, FieldT

    from worldserve.common.config import Config
    from worldserve.state.archive import Archive

__all__ = [  # with the records, keys and checks of worldserve.state.records, re-exported
    "ARCHIVE_DUE",
    "CLUSTER_SCHEME",
    "DELETIONS_CHANNEL",
    "INDEX_GRACE_S",
    "REQUEST_ID_RE",
    "SCHEMA_VERSION",
    "SENTINEL_SCHEME",
    "SESSION_ID_RE",
    "AlreadyApplied",
    "LogEntry",
    "Observe",
    "SessionRecord",
    "SessionStore",
    "SessionsFull",
    "action_to_dict",
    "check_request_id",
    "check_session_id",
    "new_session_id",
]

CLUSTER_SCHEME = "redis+cluster://"  # redis_url of a Redis Cluster: redis+cluster://[:password@]host:port
SENTINEL_SCHEME = "redis+sentinel://"
"""redis_url of a primary with replicas under Redis Sentinel:
``redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]`` (the Sentinels'
addresses; the password is the Redis servers', the Sentinels are asked without one)."""


_REPLICA_REPLIES = (
    "READONLY You can't write against a read only replica",
    "WAIT cannot be used with replica instances",
)
"""What a replica answers a primary's client: a write, or a WAIT (alone, or wrapped in a script's or
a pipeline's error)."""


def _primary_connection_class() -> type:
    """redis-py's Sentinel-managed connection, which closes itself on a demoted primary's READONLY
    reply (so the next try asks the Sentinels again) -- also when a replica's reply comes as a plain
    ``ResponseError`` that redis-py passes through (a READONLY wrapped in a script's error, a WAIT
    refused: ``_REPLICA_REPLIES``): the connection would otherwise stay on the replica for good."""
    from redis.asyncio.sentinel import SentinelManagedConnection
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import ResponseError

    class PrimaryConnection(SentinelManagedConnection):
        async def read_response(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return await super().read_response(*args, **kwargs)
            except ResponseError as e:
                if any(r in str(e) for r in _REPLICA_REPLIES) and self.connection_pool.is_master:
                    await self.disconnect()
                    raise RedisConnectionError("the primary this connection knew is now a replica") from e
                raise

    return PrimaryConnection


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int, str | None, str | None]:
    """``(sentinels, service name, db, username, password)`` of a ``redis+sentinel://`` URL;
    InvalidArgument naming what is wrong."""
    from urllib.parse import unquote

    rest = url.removeprefix(SENTINEL_SCHEME)
    auth, _, rest = rest.rpartition("@") if "@" in rest.split("/", 1)[0] else ("", "", rest)
    hosts, _, path = rest.partition("/")
    parts = [x for x in path.split("/") if x]
    usage = f"{SENTINEL_SCHEME}[:password@]host:port[,host:port]/service_name[/db]"
    if not hosts or not 1 <= len(parts) <= 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise InvalidArgument(f"redis_url {_redacted(url)!r}: expected {usage}")
    sentinels = []
    for h in hosts.split(","):
        host, _, port = h.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidArgument(f"redis_url {_redacted(url)!r}: sentinel {h!r} is not host:port ({usage})")
        sentinels.append((host.strip("[]"), int(port)))
    user, _, password = auth.partition(":") if auth else ("", "", "")
    return (
        sentinels,
        unquote(parts[0]),
        int(parts[1]) if len(parts) == 2 else 0,
        unquote(user) or None,
        unquote(password) or None,
    )


def _redacted(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}***@{rest.rpartition('@')[2]}" if "@" in rest else url


FLUSH_CHUNK_STEPS = 256
"""Most steps in one chunk a fork archives of its parent before copying the window."""

INDEX_GRACE_S = 60.0
"""An index entry without a record is dropped only when older than this: a younger one is a
create in progress (reserved, record not yet written)."""

Observe = Callable[[str, float], None]
"""``observe(op, seconds)``: a Redis operation's latency (for the service's histogram)."""


class SessionStore(StepLog):
    """Async access to sessions; knows nothing of gRPC. Errors are worldserve errors."""

    def __init__(
        self,
        r: aioredis.Redis | RedisCluster,
        *,
        default_ttl_s: int = 24 * 3600,
        observe: Observe | None = None,
        archive: Archive | None = None,
        max_tail: int = 0,
        wait_replicas: int = 0,
        wait_timeout_s: float = 1.0,
        hot_window: int = 32,
        rid_keep: int = 4096,
    ):
        self.r = r
        self.default_ttl_s = default_ttl_s
        self._observe = observe  # callable(op, seconds) for the Redis latency histogram
        self.archive = archive  # worldserve.state.archive.Archive, or None: everything stays in Redis
        self.max_tail = max_tail if archive is not None else 0  # most unarchived steps (0: no bound)
        # replicas an append (and a create) waits for before it is acknowledged (Redis WAIT; 0: none)
        self.wait_replicas = wait_replicas
        self.wait_timeout_s = wait_timeout_s
        self.hot_window = max(1, hot_window)  # steps a fork copies (the archiver's hot window)
        self.rid_keep = rid_keep  # steps whose request ids a fork's flush keeps (the archiver's)
        self._trim = r.register_script(scripts.TRIM)
        self._claim = r.register_script(scripts.CLAIM)
        self._append = r.register_script(scripts.APPEND)
        self._recorded = r.register_script(scripts.RECORDED)
        self._reserve = r.register_script(scripts.RESERVE)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout_s: float = 5.0,
        default_ttl_s: int = 24 * 3600,
        observe: Observe | None = None,
        archive: Archive | None = None,
        max_tail: int = 0,
        wait_replicas: int = 0,
        wait_timeout_s: float = 1.0,
        hot_window: int = 32,
        rid_keep: int = 4096,
    ) -> SessionStore:
        """The store on ``url``: ``redis://`` (``rediss://``), ``redis+sentinel://`` or
        ``redis+cluster://`` (see :class:`~worldserve.common.config.Config`'s ``redis_url``)."""
        from redis.asyncio.retry import Retry
        from redis.backoff import ExponentialBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        # A pooled connection broken by a Redis restart fails its next command before sending it:
        # that command is retried on a fresh connection (not timeouts: a stalled Redis must answer
        # UNAVAILABLE within redis_timeout_s, and a command that timed out may have run).
        retry = Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=3, supported_errors=(RedisConnectionError,))
        r: aioredis.Redis | RedisCluster
        if url.startswith(SENTINEL_SCHEME):  # a primary + replicas: the Sentinels name the primary
            from redis.asyncio.sentinel import Sentinel

            sentinels, service, db, username, password = parse_sentinel_url(url)
            # Each new connection asks the Sentinels for the primary: after a failover, the retry
            # of a command that failed on the dead primary's connection reaches the promoted one
            # (a demoted primary's READONLY also closes the connection and asks again).
            sentinel = Sentinel(  # type: ignore[no-untyped-call, unused-ignore]  # redis-py (before 8.2) leaves its __init__ untyped
                sentinels, sentinel_kwargs={"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
            )
            r = sentinel.master_for(
                service,
                connection_class=_primary_connection_class(),
                db=db,
                username=username,
                password=password,
                health_check_interval=30,
                retry=retry,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
            )
        elif url.startswith(CLUSTER_SCHEME):  # a Redis Cluster: any node's address
            from redis.asyncio.cluster import RedisCluster

            if wait_replicas:  # WAIT names no key: a cluster client cannot send it to a session's node
                raise InvalidArgument("redis_wait_replicas > 0 is not supported with a redis+cluster:// redis_url")

            node = url.removeprefix(CLUSTER_SCHEME).split("/", 1)[0]
            r = RedisCluster.from_url(
                f"redis://{node}", socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=retry
            )
        else:
            r = aioredis.Redis.from_url(
                url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, health_check_interval=30, retry=retry
            )
        return cls(
            r,
            default_ttl_s=default_ttl_s,
            observe=observe,
            archive=archive,
            max_tail=max_tail,
            wait_replicas=wait_replicas,
            wait_timeout_s=wait_timeout_s,
            hot_window=hot_window,
            rid_keep=rid_keep,
        )

    @classmethod
    def from_config(cls, config: Config, observe: Observe | None = None) -> SessionStore:
        """The store a service uses: ``config``'s Redis, timeouts, TTL and archive."""
        archive = None
        if config.archive_url:
            from worldserve.state.archive import Archive

            archive = Archive.from_url(config.archive_url, config.archive_options)
        return cls.from_url(
            config.redis_url,
            timeout_s=config.redis_timeout_s,
            default_ttl_s=config.session_ttl_s,
            observe=observe,
            archive=archive,
            max_tail=config.archive_max_tail_steps,
            wait_replicas=config.redis_wait_replicas,
            wait_timeout_s=config.redis_wait_timeout_s,
            hot_window=config.hot_window_steps,
            rid_keep=config.archive_rid_keep_steps,
        )

    async def close(self) -> None:
        await self.r.aclose()

    # -- keys -------------------------------------------------------------------------------------
    _rec = staticmethod(record_key)
    _log = staticmethod(log_key)
    _index = staticmethod(index_key)

    def _timed(self, op: str, t0: float) -> None:
        if self._observe is not None:
            self._observe(op, time.perf_counter() - t0)

    def _wait(self, p: Pipeline | ClusterPipeline) -> bool:
        """Queue a Redis WAIT for ``wait_replicas`` on pipeline ``p`` (its last command: the
        connection's writes so far, and every write acknowledged before them, reach that many
        replicas); False: none configured, nothing queued."""
        if not self.wait_replicas:
            return False
        p.execute_command("WAIT", self.wait_replicas, max(1, round(self.wait_timeout_s * 1000)))
        return True

    def _check_replicated(self, acked: int, what: str) -> None:
        """Unavailable when fewer replicas than ``wait_replicas`` confirmed ``what`` (it is on the
        primary: a retry with the same request id is answered from it, once)."""
        if acked < self.wait_replicas:
            raise Unavailable(
                f"{what} reached {acked} of {self.wait_replicas} Redis replicas within "
                f"redis_wait_timeout_s={self.wait_timeout_s}; not acknowledged, retry"
            )

    # -- operations -------------------------------------------------------------------------------
    async def create(
        self,
        tenant: str,
        *,
        model: str,
        prompt: str,
        seed: int,
        width: int,
        height: int,
        first_frame: bytes,
        first_latent: bytes | None = None,
        ttl_s: int | None = None,
        session_id: str | None = None,
        text: bytes | None = None,
        text_tokens: int = 0,
        understood: Mapping[str, Any] | None = None,
    ) -> SessionRecord:
        """A new session at step 0; ``text``: its text embedding (checked by the caller,
        ``text_tokens`` tokens long), kept in the log as ``t``; ``understood``: how its prompt was
        understood, ``{"spec": dict, "caption": str, "source": str}`` (kept in the record)."""
        t0 = time.perf_counter()
        now = time.time()
        rec = SessionRecord(
            session_id=session_id or new_session_id(),
            tenant=tenant,
            model=model,
            prompt=prompt,
            seed=int(seed),
            step=0,
            parent_id="",
            fork_step=0,
            created_at=now,
            updated_at=now,
            ttl_s=int(ttl_s or self.default_ttl_s),
            width=width,
            height=height,
            text_tokens=int(text_tokens) if text else 0,
            understood_spec=json.dumps(understood["spec"], separators=(",", ":")) if understood else "",
            understood_caption=understood["caption"] if understood else "",
            understood_source=understood["source"] if understood else "",
        )
        log: dict[FieldT, EncodableT] = {"f:0": first_frame}
        if first_latent is not None:
            log["z:0"] = first_latent
        if text:
            log["t"] = text
        async with self.r.pipeline(transaction=True) as p:  # one slot: the session's two keys
            p.hset(self._log(tenant, rec.session_id), mapping=log)
            p.hset(self._rec(tenant, rec.session_id), mapping=rec.fields())
            p.expire(self._log(tenant, rec.session_id), rec.ttl_s)
            p.expire(self._rec(tenant, rec.session_id), rec.ttl_s)
            await p.execute()
        async with self.r.pipeline(transaction=False) as p:  # another slot: its own command
            p.zadd(self._index(tenant), {rec.session_id: now})
            if self._wait(p):  # the record is older than the index entry: both replicated
                self._check_replicated(int((await p.execute())[-1]), f"session {rec.session_id!r}")
            else:
                await p.execute()
        self._timed("create", t0)
        return rec

    async def reserve(self, tenant: str, max_sessions: int = 0) -> tuple[str, int]:
        """Reserve a new session id in the tenant's index; the record follows (``create`` or
        ``fork`` with ``session_id``), or ``release`` on failure. With ``max_sessions`` > 0 the
        index must hold fewer: when full, entries of expired or deleted sessions are pruned and
        the reservation tried once more; then :class:`SessionsFull`. Returns the id and the
        tenant's session count with it."""
        sid = new_session_id()
        t0 = time.perf_counter()
        try:
            n = await self._reserve(keys=[self._index(tenant)], args=[sid, repr(time.time()), max_sessions])
            if n:
                return sid, int(n)
            live, soonest = await self._prune(tenant)
            n = await self._reserve(keys=[self._index(tenant)], args=[sid, repr(time.time()), max_sessions])
            if n:
                return sid, int(n)
            raise SessionsFull(live, soonest)
        finally:
            self._timed("reserve", t0)

    async def release(self, tenant: str, sid: str) -> None:
        """Drop a reservation whose create failed (best effort: a left-over one is pruned later)."""
        try:
            await self.r.zrem(self._index(tenant), sid)
        except Exception:
            pass

    async def _prune(self, tenant: str) -> tuple[int, float | None]:
        """Drop index entries whose session is gone (older than ``INDEX_GRACE_S``); returns the live
        count and the seconds until the soonest live session expires (None: unknown)."""
        rows = scored_rows(await self.r.zrange(self._index(tenant), 0, -1, withscores=True))
        async with self.r.pipeline(transaction=False) as p:
            for m, _ in rows:
                p.pttl(self._rec(tenant, m.decode()))
            ttls = await p.execute()
        now = time.time()
        gone = [m for (m, sc), t in zip(rows, ttls) if t == -2 and sc < now - INDEX_GRACE_S]
        if gone:
            await self.r.zrem(self._index(tenant), *gone)
        live = [t for t in ttls if t != -2]
        soonest = min((t for t in live if t > 0), default=None)
        return len(rows) - len(gone), (None if soonest is None else soonest / 1000.0)

    async def models_of(self, tenant: str, sids: Sequence[str]) -> list[str | None]:
        """The model each session is bound to (None: no such session), in one round trip.
        ``sids`` must be valid session ids."""
        if not sids:
            return []
        t0 = time.perf_counter()
        async with self.r.pipeline(transaction=False) as p:
            for sid in sids:
                p.hget(self._rec(tenant, sid), "model")
            vals = await p.execute()
        self._timed("models_of", t0)
        return [None if v is None else v.decode() for v in vals]

    async def get_for_step(
        self, tenant: str, sid: str, request_id: str, rate: tuple[str, list[str | int]] | None = None
    ) -> tuple[SessionRecord, int | None, tuple[int, int] | None]:
        """The record (touched), for a non-empty ``request_id`` the step it already landed as (None:
        not yet), and with ``rate`` (the tenant's GCRA key and its ARGV,
        :mod:`worldserve.state.quotas`) the quota's answer ``(ok, µs to wait)``: one round trip.
        The quota is charged first, whatever the record says (as a charge before the read)."""
        check_session_id(sid)
        t0 = time.perf_counter()
        async with self.r.pipeline(transaction=False) as p:
            if rate is not None:
                from worldserve.state.quotas import GCRA

                p.eval(GCRA, 1, rate[0], *rate[1])  # EVAL, not a Script: a pipeline's scripts cost a SCRIPT EXISTS
            p.hgetall(self._rec(tenant, sid))
            p.ttl(self._rec(tenant, sid))
            if request_id:
                p.hget(self._log(tenant, sid), f"r:{request_id}")
            res = await p.execute()
        charged = None
        if rate is not None:
            ok, wait_us = res.pop(0)
            charged = (int(ok), int(wait_us))
        rec = await self._record(tenant, sid, res[0], res[1], t0)
        return rec, (int(res[-1]) if request_id and res[-1] is not None else None), charged

    async def get(self, tenant: str, sid: str, *, touch: bool = True) -> SessionRecord:
        check_session_id(sid)
        t0 = time.perf_counter()
        async with self.r.pipeline(transaction=False) as p:
            p.hgetall(self._rec(tenant, sid))
            if touch:
                p.ttl(self._rec(tenant, sid))
            res = await p.execute()
        return await self._record(tenant, sid, res[0], res[1] if touch else None, t0)

    async def _record(self, tenant: str, sid: str, h: dict[bytes, bytes], ttl: int | None, t0: float) -> SessionRecord:
        """The record from its hash; NotFound when empty. With ``ttl`` (its remaining TTL) the TTL
        is refreshed on use, skipping the write while it is still nearly full."""
        if not h:
            self._timed("get", t0)
            raise NotFound(f"session {sid!r} not found")
        rec = SessionRecord.from_redis(tenant, sid, h)
        if ttl is not None and ttl < 0.9 * rec.ttl_s:
            async with self.r.pipeline(transaction=False) as p:
                p.expire(self._rec(tenant, sid), rec.ttl_s)
                p.expire(self._log(tenant, sid), rec.ttl_s)
                await p.execute()
        self._timed("get", t0)
        return rec

    async def list(self, tenant: str, *, page_size: int = 100, page_token: str = "") -> tuple[list[SessionRecord], str]:
        if not (0 <= page_size <= 1000):
            raise InvalidArgument(f"page_size={page_size} is out of range [1, 1000]")
        page_size = page_size or 100
        max_score: str = "+inf"
        after_sid = None
        if page_token:
            bad = InvalidArgument(f"invalid page_token {page_token[:80]!r}: pass the next_page_token of a ListSessions")
            try:
                score_s, after_sid = base64.urlsafe_b64decode(page_token.encode()).decode().split("|", 1)
                score = float(score_s)
                check_session_id(after_sid)
            except Exception:
                raise bad from None
            if not math.isfinite(score):
                raise bad
            max_score = repr(score)
        t0 = time.perf_counter()
        out: list[SessionRecord] = []
        scores: list[float] = []
        offset = 0
        while len(out) <= page_size:  # one more than a page tells whether a next page exists
            rows = scored_rows(
                await self.r.zrevrangebyscore(
                    self._index(tenant), max_score, "-inf", start=offset, num=page_size + 8, withscores=True
                )
            )
            if not rows:
                break
            offset += len(rows)
            if after_sid is not None:  # ties on the token's score come in descending id order
                rows = [(m, s) for m, s in rows if not (repr(s) == max_score and m.decode() >= after_sid)]
            async with self.r.pipeline(transaction=False) as p:
                for m, _ in rows:
                    p.hgetall(self._rec(tenant, m.decode()))
                hs = await p.execute()
            gone = []
            for (m, sc), h in zip(rows, hs):
                if not h:
                    if sc < time.time() - INDEX_GRACE_S:  # expired by TTL: drop from the index lazily
                        gone.append(m.decode())
                elif len(out) <= page_size:
                    out.append(SessionRecord.from_redis(tenant, m.decode(), h))
                    scores.append(sc)
            if gone:
                await self.r.zrem(self._index(tenant), *gone)
        self._timed("list", t0)
        token = ""
        if len(out) > page_size:
            out = out[:page_size]
            token = base64.urlsafe_b64encode(f"{scores[page_size - 1]!r}|{out[-1].session_id}".encode()).decode()
        return out, token

    async def delete(self, tenant: str, sid: str) -> bool:
        check_session_id(sid)
        t0 = time.perf_counter()
        async with self.r.pipeline(transaction=True) as p:  # one slot: the session's two keys
            p.delete(self._rec(tenant, sid))
            p.delete(self._log(tenant, sid))
            n: int  # keys deleted
            n, _ = await p.execute()
        await self.r.zrem(self._index(tenant), sid)
        self._timed("delete", t0)
        if n > 0:  # every dynamics replica drops the session's cached model state
            await self.r.publish(DELETIONS_CHANNEL, f"{tenant}\n{sid}")
            if self.archive is not None:
                await self.archive.delete_session(tenant, sid)
        return n > 0

    async def deletions(self) -> AsyncIterator[tuple[str, str]]:
        """(tenant, session id) of every session deleted from now on, cluster-wide, while subscribed
        (pub/sub: a replica that is away misses deletions; its cache bound and the step check
        against Redis cover that)."""
        pubsub = self.r.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(DELETIONS_CHANNEL)
            while True:
                msg = await pubsub.get_message(timeout=1.0)
                if msg is None or msg.get("type") != "message":
                    continue
                tenant, _, sid = msg["data"].decode().partition("\n")
                yield tenant, sid
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # redis-py (before 8.2) leaves PubSub.aclose untyped

    async def fork(
        self, tenant: str, sid: str, *, step: int | None = None, seed: int | None = None, session_id: str | None = None
    ) -> SessionRecord:
        """A child session at ``step`` (default: the parent's current step); ``session_id``: its
        id reserved by ``reserve`` (default: a new one).

        With an archive the fork is copy-on-write: the child copies the parent's context window
        (``hot_window`` steps: actions, latents, frames, resume data)
        and points at the parent's archive for everything before it, by reference. Parent steps
        before the window that are not archived yet are archived first (one chunk, as the
        archiver would: the parent's Redis is trimmed after it), so the cost is the window, not
        the unarchived tail or the history, and the child keeps its history when the parent is
        trimmed, deleted or expires (the archive keeps a deleted session's chunks while a child
        reads them). Without an archive the child copies every step Redis holds. The parent and
        the child live in different Redis Cluster slots: the copy goes through this client,
        checked against a trim that may run meanwhile."""
        parent = await self.get(tenant, sid, touch=False)
        if step is not None and step > parent.step:
            raise InvalidArgument(f"fork step {step} is beyond the session's current step {parent.step}")
        at = parent.step if step is None else step
        child_id = session_id or new_session_id()
        t0 = time.perf_counter()
        if self.archive is not None:
            # up to the window's start only: the trim that follows keeps the window (it drops
            # steps up to what was archived, and the fork step may be older than the current one)
            need = at - self.hot_window
            parent = await self._flush_before(tenant, sid, parent, need, upto=need)
        for _ in range(8):
            first = max(0, parent.trimmed + 1)
            if self.archive is not None:  # the window; the archive has every step before it
                first = max(first, at - self.hot_window + 1)
            names = [f"{k}:{n}" for n in range(first, at + 1) for k in ("a", "z", "k", "f")]
            names += ["t"] if parent.text_tokens else []
            vals = raw_values(await self.r.hmget(self._log(tenant, sid), names)) if names else []
            entries: dict[FieldT, EncodableT] = {k: v for k, v in zip(names, vals) if v is not None}
            fresh = await self.get(tenant, sid, touch=True)  # NotFound if deleted meanwhile; refreshes its TTL
            if fresh.trimmed == parent.trimmed and fresh.archived == parent.archived:
                break
            parent = fresh  # an archiver trimmed meanwhile: read again
        else:
            raise Conflict(f"session {sid!r} was being archived; the fork was not made, retry")
        missing = [n for n in range(max(first, parent.archived + 1), at + 1) if f"f:{n}" not in entries]
        if missing:
            raise DataLoss(f"session {sid!r}: steps {missing[0]}-{missing[-1]} are missing from Redis")
        if parent.text_tokens and "t" not in entries:
            raise DataLoss(f"session {sid!r}: its text embedding is missing from Redis")
        now = time.time()
        fields: dict[FieldT, EncodableT] = {
            "model": parent.model,
            "prompt": parent.prompt,
            "seed": str(parent.seed if seed is None else int(seed)),
            "step": str(at),
            "parent_id": sid,
            "fork_step": str(at),
            "created_at": str(now),
            "updated_at": str(now),
            "ttl_s": str(parent.ttl_s),
            "width": str(parent.width),
            "height": str(parent.height),
            "version": str(SCHEMA_VERSION),
            "text_tokens": str(parent.text_tokens),
            "understood_spec": parent.understood_spec,
            "understood_caption": parent.understood_caption,
            "understood_source": parent.understood_source,
        }
        if self.archive is not None:  # the child's archived history: the parent's chunks, shared
            upto = min(at, parent.archived)
            await self.archive.share(tenant, sid, child_id, upto)
            fields["archived"] = str(upto)
            fields["trimmed"] = str(min(max(parent.trimmed, first - 1), at))
        async with self.r.pipeline(transaction=True) as p:  # one slot: the child's two keys
            if entries:
                p.hset(self._log(tenant, child_id), mapping=entries)
            p.hset(self._rec(tenant, child_id), mapping=fields)
            p.expire(self._rec(tenant, child_id), parent.ttl_s)
            p.expire(self._log(tenant, child_id), parent.ttl_s)
            await p.execute()
        await self.r.zadd(self._index(tenant), {child_id: now})
        self._timed("fork", t0)
        return await self.get(tenant, child_id, touch=False)

    async def _flush_before(self, tenant: str, sid: str, rec: SessionRecord, need: int, *, upto: int) -> SessionRecord:
        """The session's record once its archive holds every step up to ``need``: when it does
        not yet, its steps after ``archived`` up to ``upto`` (>= ``need``) are archived now in chunks of
        at most ``FLUSH_CHUNK_STEPS``, as the archiver would (then ``archived`` moves on by compare-and-set and Redis is
        trimmed). An archiver at work on the same session meanwhile is waited out: the first to
        list a step in the manifest wins, the other's chunk is listed for its new steps only."""
        assert self.archive is not None
        attempt = 0
        while attempt < 20:
            if rec.archived >= need:
                return rec
            first = rec.archived + 1
            last = min(upto, first + FLUSH_CHUNK_STEPS - 1)  # a long tail (an archive that was away): in parts
            entries = await self.log_entries(tenant, sid, first, last)
            missing = [first + i for i, e in enumerate(entries) if e is None]
            if missing:
                fresh = await self.get(tenant, sid, touch=False)  # NotFound when deleted meanwhile
                if fresh.archived != rec.archived:  # archived and trimmed meanwhile: look again
                    attempt += 1
                    rec = fresh
                    continue
                raise DataLoss(f"session {sid!r}: steps {missing[0]}-{missing[-1]} are missing from Redis")
            try:
                await self.archive.write_chunk(tenant, sid, [e for e in entries if e is not None])
            except (DataLoss, Conflict):  # another writer listed steps meanwhile: its trim follows
                attempt += 1
                fresh = await self.get(tenant, sid, touch=False)
                if fresh.archived == rec.archived:
                    await asyncio.sleep(0.01 * (attempt + 1))
                rec = fresh
                continue
            got = await self.trim(
                tenant, sid, expected=rec.archived, archived=last, window=self.hot_window, rid_keep=self.rid_keep
            )
            if got == -1:
                raise NotFound(f"session {sid!r} not found")
            if got == -2:  # another archiver moved it first
                attempt += 1
            rec = await self.get(tenant, sid, touch=False)
        raise Conflict(f"session {sid!r} was being archived; the fork was not made, retry")
