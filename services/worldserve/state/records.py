"""The session store's typed records, names and checks: what a session's Redis keys hold
(:class:`SessionRecord`, :class:`LogEntry`), the keys themselves (the layout:
:mod:`worldserve.state.store`), session and request id checks, and the store's own exceptions."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast

from worldserve.common.errors import InvalidArgument

if TYPE_CHECKING:
    from redis.typing import EncodableT, FieldT

DELETIONS_CHANNEL = "ws:deleted"  # pub/sub: "<tenant>\n<sid>" of every deleted session
SESSION_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
SCHEMA_VERSION = 1

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
"""A client's idempotency key of a step (a Rollout's action i is recorded as "<id>/<i>")."""

ARCHIVE_DUE = "ws:archive:due"  # sorted set: "<tenant>\n<sid>" of sessions with a full chunk to archive


def record_key(t: str, sid: str) -> str:
    """The session's record (hash)."""
    return f"ws:{t}:{{{sid}}}"


def log_key(t: str, sid: str) -> str:
    """The session's step log (hash), in the record's Redis Cluster slot."""
    return f"ws:{t}:{{{sid}}}:log"


def index_key(t: str) -> str:
    """The tenant's session index (sorted set)."""
    return f"ws:{t}:index"


class SessionsFull(Exception):
    """The tenant's index holds ``max_sessions`` live sessions; ``soonest_s``: seconds until the
    soonest of them expires (None: unknown)."""

    def __init__(self, live: int, soonest_s: float | None):
        super().__init__(f"{live} live sessions")
        self.live = live
        self.soonest_s = soonest_s


class AlreadyApplied(Exception):
    """A step's request id had already landed (a retry raced its original): nothing was written."""

    def __init__(self, step: int):
        super().__init__(f"already applied as step {step}")
        self.step = step


def check_request_id(rid: str) -> str:
    if rid and not REQUEST_ID_RE.match(rid):
        raise InvalidArgument(f"request_id {rid[:80]!r} must be 1-64 of A-Z a-z 0-9 . _ : -")
    return rid


@dataclass(frozen=True)
class SessionRecord:
    session_id: str
    tenant: str
    model: str
    prompt: str
    seed: int
    step: int
    parent_id: str
    fork_step: int
    created_at: float
    updated_at: float
    ttl_s: int
    width: int
    height: int
    version: int = SCHEMA_VERSION
    archived: int = -1
    """The last step in the archive (-1: none); steps after it are only in Redis."""
    trimmed: int = -1
    """The last step whose action, latent and frame Redis dropped (archived before)."""
    text_tokens: int = 0
    """Tokens of the session's text embedding (the log's ``t``); 0: none."""
    understood_spec: str = ""
    """How the prompt was understood: the world spec as JSON (``worldserve.common.caption.spec_to_dict``);
    "" for uploaded images and records written before it existed."""
    understood_caption: str = ""
    """The understood spec as a caption (what the image model was given)."""
    understood_source: str = ""
    """Who read the prompt: "grammar" (it was a caption) or "text" (the text app)."""

    @classmethod
    def from_redis(cls, tenant: str, sid: str, h: dict[bytes, bytes]) -> SessionRecord:
        g = {k.decode(): v.decode() for k, v in h.items()}
        return cls(
            session_id=sid,
            tenant=tenant,
            model=g.get("model", ""),
            prompt=g.get("prompt", ""),
            seed=int(g.get("seed", 0)),
            step=int(g.get("step", 0)),
            parent_id=g.get("parent_id", ""),
            fork_step=int(g.get("fork_step", 0)),
            created_at=float(g.get("created_at", 0)),
            updated_at=float(g.get("updated_at", 0)),
            ttl_s=int(g.get("ttl_s", 0)),
            width=int(g.get("width", 0)),
            height=int(g.get("height", 0)),
            version=int(g.get("version", SCHEMA_VERSION)),
            archived=int(g.get("archived", -1)),
            trimmed=int(g.get("trimmed", -1)),
            text_tokens=int(g.get("text_tokens", 0)),
            understood_spec=g.get("understood_spec", ""),
            understood_caption=g.get("understood_caption", ""),
            understood_source=g.get("understood_source", ""),
        )

    @property
    def understood(self) -> dict[str, Any] | None:
        """``{"spec": dict, "caption": str, "source": str}``, or None (not recorded)."""
        if not self.understood_source:
            return None
        return {
            "spec": json.loads(self.understood_spec),
            "caption": self.understood_caption,
            "source": self.understood_source,
        }

    def fields(self) -> dict[FieldT, EncodableT]:
        d = asdict(self)
        d.pop("session_id")
        d.pop("tenant")
        return {k: str(v) for k, v in d.items()}


@dataclass(frozen=True)
class LogEntry:
    step: int
    action: dict[str, Any] | None  # the action as JSON; None for step 0
    latent: bytes | None  # packed array; None until the dynamics service encoded it
    frame: bytes | None  # PNG
    resume: bytes | None = None  # the model's resume data of this step, packed (window reads only)
    text: bytes | None = None  # step 0 of an export: the session's text embedding (safetensors), if any


# This store's client never decodes responses (bytes out). redis-py types its answers for both kinds
# of client (bytes | str), and a sorted-set range for both shapes (with or without scores): these
# narrow an answer to what this client gets.
def raw_values(vals: object) -> list[bytes | None]:
    return cast("list[bytes | None]", vals)


def scored_rows(rows: object) -> list[tuple[bytes, float]]:
    return cast("list[tuple[bytes, float]]", rows)


def check_session_id(sid: str) -> str:
    if not SESSION_ID_RE.match(sid or ""):
        raise InvalidArgument(f"invalid session_id {sid[:80]!r}: 1-64 of A-Z a-z 0-9 _ -")
    return sid


def new_session_id() -> str:
    return "s_" + secrets.token_urlsafe(12).replace("-", "x").replace("_", "y")


def action_to_dict(keys: Sequence[str], mouse: dict[str, float]) -> dict[str, Any]:
    return {"keys": sorted(keys), "mouse": {k: float(v) for k, v in sorted(mouse.items())}}
