"""The trajectory archive: a session's steps in chunks in an object store, with a manifest.

Redis holds a session's hot state (its record, the latents of its context window and the tail of
steps not yet archived); everything older lives here, written by the archiver
(:mod:`worldserve.state.archiver`). Through obstore: a local folder (``file:///path``, the
embedded default) or any S3-compatible store (``s3://bucket/prefix`` with ``archive_options``:
``endpoint``, ``region``, ``access_key_id``, ``secret_access_key``, ``allow_http``; or the usual
``AWS_*`` environment variables).

Layout under ``<prefix>sessions/<tenant>/<session>/``:

- ``chunks/<first step>-<last step>.wsc``: one chunk of consecutive steps. A JSON header line
  (``{"v": 1, "first": a, "last": b, "entries": [{"step", "action", "frame": [offset, length],
  "latent": [offset, length] | null}]}``) then the frames' and latents' bytes (a latent as Redis
  held it: :func:`worldserve.common.codec.pack_array`, maybe packed against the frame beside it).
  A chunk's name is fixed by its steps, so writing it again after a crash writes the same object;
  a manifest entry may name only the last steps of its object (a fork archived the first ones).
- ``manifest.json``: ``{"v": 1, "chunks": [{"first", "last", "key", "sha256", "bytes"}]}``, in step
  order. A chunk whose bytes do not match their sha256, or that is missing, is a DATA_LOSS error
  naming its steps: never a silent gap. On S3 the manifest is replaced by a conditional PUT
  (``If-Match`` its ETag, ``If-None-Match: *`` for the first): a writer that read an older manifest
  (an archiver whose lease ran out while the store was away, a stale request delivered late) is
  refused and reads again, so a listed chunk is never dropped and never listed twice. A local
  folder has one writer per session at a time (the archiver's lease).

Every S3 call is bounded (``timeout_s``, ``connect_timeout_s``) and retried with exponential
backoff for at most ``retry_timeout_s`` (archive_options; 10, 2 and 15 s by default): an archiver
whose store is away gives up on the pass within about that and retries the session itself, with
its own backoff (:mod:`worldserve.state.archiver`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from worldserve.common.errors import Conflict, DataLoss

if TYPE_CHECKING:
    from obstore import ObjectMeta  # a TypedDict of obstore's stubs only
    from obstore.store import ObjectStore

__all__ = ["Archive", "ArchivedStep", "ChunkRef", "DataLoss", "decode_chunk", "encode_chunk"]

CHUNK_VERSION = 1


@dataclass(frozen=True)
class ArchivedStep:
    step: int
    action: dict[str, Any] | None  # the action as JSON; None for step 0
    frame: bytes  # PNG
    latent: bytes | None  # packed array, when archived with latents


@dataclass(frozen=True)
class ChunkRef:
    first: int
    last: int
    key: str
    sha256: str
    bytes: int

    def as_dict(self) -> dict[str, int | str]:
        return {"first": self.first, "last": self.last, "key": self.key, "sha256": self.sha256, "bytes": self.bytes}


def encode_chunk(entries: Sequence[ArchivedStep]) -> bytes:
    """Consecutive steps -> one chunk's bytes."""
    if not entries:
        raise ValueError("a chunk holds at least one step")
    body = bytearray()
    index = []
    for i, e in enumerate(entries):
        if e.step != entries[0].step + i:
            raise ValueError(f"chunk steps must be consecutive: {entries[0].step} .. got {e.step} at {i}")
        frame = [len(body), len(e.frame)]
        body += e.frame
        latent = None
        if e.latent is not None:
            latent = [len(body), len(e.latent)]
            body += e.latent
        index.append({"step": e.step, "action": e.action, "frame": frame, "latent": latent})
    header = {"v": CHUNK_VERSION, "first": entries[0].step, "last": entries[-1].step, "entries": index}
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + bytes(body)


def decode_chunk(data: bytes, what: str = "chunk") -> list[ArchivedStep]:
    try:
        nl = data.index(b"\n")
        header = json.loads(data[:nl])
        body = memoryview(data)[nl + 1 :]
        out = []
        for e in header["entries"]:
            fo, fl = e["frame"]
            lat = None
            if e["latent"] is not None:
                lo, ll = e["latent"]
                lat = bytes(body[lo : lo + ll])
            out.append(ArchivedStep(int(e["step"]), e["action"], bytes(body[fo : fo + fl]), lat))
        return out
    except (ValueError, KeyError, TypeError) as e:
        raise DataLoss(f"{what} does not parse ({type(e).__name__})") from None


S3_TIMEOUTS_S = {"timeout_s": 10.0, "connect_timeout_s": 2.0, "retry_timeout_s": 15.0}
"""Defaults of the S3 call bounds (archive_options of the same names override them)."""


def make_store(url: str, options: Mapping[str, Any] | None = None) -> tuple[ObjectStore, str]:
    """An obstore store for ``file:///path`` or ``s3://bucket[/prefix]`` (the prefix is applied
    by :class:`Archive`)."""
    from datetime import timedelta

    from obstore.store import LocalStore, S3Store

    opts = dict(options or {})
    for key, env in (
        ("endpoint", "AWS_ENDPOINT_URL"),
        ("endpoint", "AWS_ENDPOINT"),
        ("region", "AWS_REGION"),
        ("access_key_id", "AWS_ACCESS_KEY_ID"),
        ("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
        ("session_token", "AWS_SESSION_TOKEN"),
    ):
        if not opts.get(key) and os.environ.get(env):  # the usual AWS_* variables, where options are silent
            opts[key] = os.environ[env]
    if "allow_http" not in opts and os.environ.get("AWS_ALLOW_HTTP", "").lower() in ("1", "true", "yes"):
        opts["allow_http"] = True
    if url.startswith("file://"):
        return LocalStore(url.removeprefix("file://"), mkdir=True), ""
    if url.startswith("s3://"):
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        kw: dict[str, Any] = {}
        for k in ("endpoint", "region", "access_key_id", "secret_access_key", "session_token"):
            if opts.get(k):
                kw[k] = opts[k]
        bound = {k: float(opts.get(k, v)) for k, v in S3_TIMEOUTS_S.items()}
        kw["client_options"] = {
            "timeout": timedelta(seconds=bound["timeout_s"]),
            "connect_timeout": timedelta(seconds=bound["connect_timeout_s"]),
            "allow_http": bool(opts.get("allow_http")),
        }
        kw["retry_config"] = {
            "max_retries": 10,
            "retry_timeout": timedelta(seconds=bound["retry_timeout_s"]),
            "backoff": {"init_backoff": timedelta(seconds=0.1), "max_backoff": timedelta(seconds=4), "base": 2.0},
        }
        if opts.get("endpoint"):
            kw["virtual_hosted_style_request"] = False
        return S3Store(bucket, **kw), (prefix.rstrip("/") + "/" if prefix else "")
    raise ValueError(f"archive_url {url!r}: expected file:///path or s3://bucket[/prefix]")


class Archive:
    """A session's archived chunks and manifest in an object store (async; obstore)."""

    def __init__(self, store: ObjectStore, prefix: str = ""):
        from obstore.store import LocalStore

        self.store = store
        self.prefix = prefix
        self.conditional = not isinstance(store, LocalStore)  # S3: the manifest by conditional PUT

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, Any] | None = None) -> Archive:
        store, prefix = make_store(url, options)
        return cls(store, prefix)

    @staticmethod
    def _rel(tenant: str, sid: str) -> str:
        return f"sessions/{tenant}/{sid}/"

    def _base(self, tenant: str, sid: str) -> str:
        return self.prefix + self._rel(tenant, sid)

    async def _get(self, path: str) -> bytes | None:
        import obstore

        try:
            r = await obstore.get_async(self.store, path)
            return bytes(await r.bytes_async())
        except FileNotFoundError:
            return None

    async def manifest(self, tenant: str, sid: str) -> list[ChunkRef]:
        return (await self._manifest(tenant, sid))[0]

    async def _manifest(self, tenant: str, sid: str) -> tuple[list[ChunkRef], str | None]:
        """The manifest's chunks and its ETag (None: no manifest yet)."""
        import obstore

        try:
            r = await obstore.get_async(self.store, self._base(tenant, sid) + "manifest.json")
            raw, etag = bytes(await r.bytes_async()), r.meta["e_tag"] or ""
        except FileNotFoundError:
            return [], None
        try:
            data = json.loads(raw)
            return [
                ChunkRef(int(c["first"]), int(c["last"]), c["key"], c["sha256"], int(c["bytes"]))
                for c in data["chunks"]
            ], etag
        except (ValueError, KeyError, TypeError) as e:
            raise DataLoss(f"session {sid!r}: the archive's manifest does not parse ({type(e).__name__})") from None

    async def write_chunk(self, tenant: str, sid: str, entries: Sequence[ArchivedStep]) -> ChunkRef:
        """Write a chunk, then list it in the manifest (once: a rewrite after a crash is the same
        object and the same manifest entry; on S3 a manifest that changed since it was read is
        read again, never overwritten)."""
        import obstore
        from obstore.exceptions import AlreadyExistsError, PreconditionError

        data = encode_chunk(entries)
        first, last = entries[0].step, entries[-1].step
        key = f"{self._rel(tenant, sid)}chunks/{first:012d}-{last:012d}.wsc"
        ref = ChunkRef(first, last, key, hashlib.sha256(data).hexdigest(), len(data))
        await obstore.put_async(self.store, self.prefix + key, data)
        for _ in range(8):  # each refusal means another writer moved the manifest: read it again
            chunks, etag = await self._manifest(tenant, sid)
            if any(c.first == first and c.last == last for c in chunks):
                return ref
            prev = chunks[-1].last if chunks else first - 1
            if last <= prev:  # another writer (a fork's flush, an archiver) listed these steps first
                return ref
            if first > prev + 1:
                raise DataLoss(f"session {sid!r}: chunk {first}-{last} does not follow the archive's last step {prev}")
            # a chunk that overlaps the last one listed (a fork archived part of it first) is listed
            # for its new steps only: a reader takes the steps its entry names from the object
            listed = ChunkRef(prev + 1, last, key, ref.sha256, ref.bytes)
            mode: Any = "overwrite"  # a local folder: one writer at a time (the lease)
            if self.conditional:  # S3: only over the manifest just read (or none)
                mode = "create" if etag is None else {"e_tag": etag}
            try:
                await self._put_manifest(tenant, sid, [*chunks, listed], mode)
                return listed
            except (PreconditionError, AlreadyExistsError):
                continue
        raise Conflict(f"session {sid!r}: the archive's manifest kept changing while chunk {first}-{last} was listed")

    async def write_manifest(self, tenant: str, sid: str, chunks: Sequence[ChunkRef]) -> None:
        """Write a new session's manifest (a fork's: nothing else writes it yet)."""
        await self._put_manifest(tenant, sid, chunks, "overwrite")

    async def _put_manifest(self, tenant: str, sid: str, chunks: Sequence[ChunkRef], mode: Any) -> None:
        import obstore

        manifest = {"v": CHUNK_VERSION, "chunks": [c.as_dict() for c in chunks]}
        await obstore.put_async(
            self.store, self._base(tenant, sid) + "manifest.json", json.dumps(manifest).encode(), mode=mode
        )

    async def steps(self, tenant: str, sid: str, first: int, last: int) -> AsyncIterator[ArchivedStep]:
        """Steps ``first`` .. ``last`` (they must be archived), one chunk object in memory at a time
        (the manifest read once, each object once); DATA_LOSS for a missing or corrupt chunk,
        naming its steps."""
        covered = first
        for c in await self.manifest(tenant, sid):
            if c.last < first or c.first > last:
                continue
            if c.first > covered:
                break
            raw = await self._get(self.prefix + c.key)
            what = f"session {sid!r}: archived steps {c.first}-{c.last}"
            if raw is None:
                raise DataLoss(f"{what} are missing from the archive")
            if hashlib.sha256(raw).hexdigest() != c.sha256:
                raise DataLoss(f"{what} are corrupt in the archive (checksum mismatch)")
            lo, hi = max(first, c.first), min(last, c.last)  # a fork's last chunk may be listed in part
            for e in decode_chunk(raw, what):
                if lo <= e.step <= hi:
                    yield e
            covered = c.last + 1
        if covered <= last:
            raise DataLoss(f"session {sid!r}: archived steps {covered}-{last} are missing from the archive")

    async def read(self, tenant: str, sid: str, first: int, last: int) -> list[ArchivedStep]:
        """``steps`` as a list."""
        return [e async for e in self.steps(tenant, sid, first, last)]

    async def sessions(self) -> list[tuple[str, str, float]]:
        """(tenant, session, seconds since its folder last changed) of every session folder."""
        import time

        import obstore

        out = []
        top = await obstore.list_with_delimiter_async(self.store, f"{self.prefix}sessions/")
        for tp in top["common_prefixes"]:
            tenant = tp.rstrip("/").rsplit("/", 1)[1]
            sub = await obstore.list_with_delimiter_async(self.store, tp.rstrip("/") + "/")
            for sp in sub["common_prefixes"]:
                sid = sp.rstrip("/").rsplit("/", 1)[1]
                newest = max(
                    (m["last_modified"].timestamp() for m in await self._list_meta(sp.rstrip("/") + "/")),
                    default=time.time(),
                )
                out.append((tenant, sid, time.time() - newest))
        return out

    async def _list_meta(self, path: str) -> list[ObjectMeta]:
        import obstore

        return [m async for page in obstore.list(self.store, path) for m in page]

    # -- forks and deletes: chunks shared by reference ---------------------------------------------
    async def share(self, tenant: str, parent: str, child: str, upto: int) -> None:
        """The child's archived history is the parent's up to step ``upto``: its manifest lists the
        parent's chunks (the last one only up to ``upto``), no object is copied, and each chunk's
        owner records the child (``children/<child>``), so a delete keeps what a child still reads."""
        import obstore

        refs = [
            ChunkRef(c.first, min(c.last, upto), c.key, c.sha256, c.bytes)
            for c in await self.manifest(tenant, parent)
            if c.first <= upto
        ]
        for owner in sorted({self._owner(c.key) for c in refs}):
            await obstore.put_async(self.store, f"{self.prefix}{owner}children/{child}", b"")
        await self.write_manifest(tenant, child, refs)

    @staticmethod
    def _owner(key: str) -> str:
        """``sessions/<tenant>/<sid>/`` of a chunk key."""
        return key[: key.index("chunks/")]

    async def _list(self, path: str) -> list[str]:
        import obstore

        return [m["path"] async for page in obstore.list(self.store, path) for m in page]

    async def delete_session(self, tenant: str, sid: str) -> int:
        """Delete a session's archive: every object of it, unless forks still read its chunks (then
        it is marked deleted and goes when the last of them does). Returns the objects deleted."""
        import obstore

        rel = self._rel(tenant, sid)
        if await self._list(f"{self.prefix}{rel}children/"):
            await obstore.put_async(self.store, f"{self.prefix}{rel}deleted", b"")
            return 0
        return await self._purge(rel)

    async def _purge(self, rel: str) -> int:
        """Delete a session folder (``sessions/<t>/<sid>/``), release its references to the chunks
        of others, and purge those others when they were deleted and this was their last reader."""
        import obstore

        raw = await self._get(f"{self.prefix}{rel}manifest.json")
        owners: set[str] = set()
        if raw is not None:
            try:
                owners = {self._owner(c["key"]) for c in json.loads(raw)["chunks"]} - {rel}
            except (ValueError, KeyError, TypeError):
                owners = set()
        paths = await self._list(self.prefix + rel)
        if paths:
            await obstore.delete_async(self.store, paths)
        n = len(paths)
        sid = rel.rstrip("/").rsplit("/", 1)[1]
        for owner in sorted(owners):
            with contextlib.suppress(FileNotFoundError):
                await obstore.delete_async(self.store, f"{self.prefix}{owner}children/{sid}")
            deleted = await self._get(f"{self.prefix}{owner}deleted") is not None
            if deleted and not await self._list(f"{self.prefix}{owner}children/"):
                n += await self._purge(owner)
        return n
