"""State cache: each session's model state (its KV cache), kept in replica memory under a byte
budget.

Redis holds the truth; this is only a cache. An entry is used only when it is at the step Redis
holds for the session (otherwise it is stale: another replica stepped the session, or the
session was forked or restored), and a miss costs a prefill from the latent window in Redis, with
the model's resume data of those steps: the rebuilt state is bitwise the evicted one.

Entries leave by:
- ``budget``: least recently used first, whenever the held bytes exceed the budget or the model
  runs out of state memory (``StateMemoryFull``). Entries of sessions in the running batch are
  pinned and never evicted.
- ``deleted``: DeleteSession (the sessions app publishes deletions; every replica evicts), and a
  session found gone in Redis. A deleted session cannot come back: states computed for it while
  it was being deleted (a fork/delete race) are refused for ``TOMBSTONE_S``.
- ``stale``: the entry is not at the session's step in Redis.
Every eviction releases the state's memory through the model (``release_state``), deferred to
the model thread (``drain_releases``, called by the runner before each batch): a state evicted
while the running batch still uses it (a session deleted mid-step) is released only after it.
The cache is shared by the event loop and the model thread, under one lock.
"""

from __future__ import annotations

import collections
import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

from worldserve.dynamics.interface import DynamicsModelProtocol

Key = tuple[str, str]  # (tenant, session id)
TOMBSTONE_S = 60.0
MAX_TOMBSTONES = 4096


@dataclass
class Entry:
    state: Any
    nbytes: int
    event: str  # the world event in force after the state's last frame ("" = none)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _locked(fn: Callable[Concatenate[StateCache, _P], _R]) -> Callable[Concatenate[StateCache, _P], _R]:
    @functools.wraps(fn)
    def wrapper(self: StateCache, /, *a: _P.args, **kw: _P.kwargs) -> _R:
        with self._lock:
            return fn(self, *a, **kw)

    return wrapper


class StateCache:
    def __init__(
        self,
        model: DynamicsModelProtocol,
        budget_bytes: int,
        on_evict: Callable[[str], None] | None = None,
        on_change: Callable[[int, int], None] | None = None,
    ):
        self.model = model
        self.budget_bytes = budget_bytes
        self._entries: collections.OrderedDict[Key, Entry] = collections.OrderedDict()
        self._bytes = 0
        self._pinned: collections.Counter[Key] = collections.Counter()
        self._tombstones: dict[Key, float] = {}
        self._released: list[Any] = []  # states to release on the model thread
        self._lock = threading.RLock()
        self._on_evict = on_evict or (lambda reason: None)  # metrics: evictions by reason
        self._on_change = on_change or (lambda n, b: None)  # metrics: sessions, bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: Key) -> bool:
        return key in self._entries

    @property
    def nbytes(self) -> int:
        return self._bytes

    @_locked
    def get(self, key: Key, step: int) -> Entry | None:
        """The entry if it is at ``step`` (marked recently used); a stale one is evicted."""
        e = self._entries.get(key)
        if e is None:
            return None
        if self.model.state_step(e.state) != step:
            self.evict(key, "stale")
            return None
        self._entries.move_to_end(key)
        return e

    @_locked
    def put(self, key: Key, state: Any, event: str, *, since: float | None = None) -> bool:
        """Keep ``state`` (the session's new state). Refused (the state is released) when the
        session was deleted after ``since`` (a ``time.monotonic()`` taken before its record was
        read). Evicts least recently used entries beyond the budget."""
        if since is not None and self._tombstones.get(key, -1.0) >= since:
            self._released.append(state)
            self._on_evict("deleted")
            return False
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.nbytes
            if old.state is not state:
                self._released.append(old.state)
        e = Entry(state, int(self.model.state_nbytes(state)), event)
        self._entries[key] = e
        self._bytes += e.nbytes
        self.shrink_to(self.budget_bytes)
        self._changed()
        return True

    @_locked
    def take(self, key: Key) -> Entry | None:
        """Remove and return the entry without releasing its state (the caller now owns it)."""
        e = self._entries.pop(key, None)
        if e is not None:
            self._bytes -= e.nbytes
            self._changed()
        return e

    @_locked
    def evict(self, key: Key, reason: str) -> bool:
        e = self._entries.pop(key, None)
        if reason == "deleted":
            now = time.monotonic()
            self._tombstones[key] = now
            if len(self._tombstones) > MAX_TOMBSTONES:  # bounded: forget the old ones, then the oldest
                live = sorted(((t, k) for k, t in self._tombstones.items() if now - t < TOMBSTONE_S), reverse=True)
                self._tombstones = {k: t for t, k in live[: MAX_TOMBSTONES // 2]}
        if e is None:
            return False
        self._bytes -= e.nbytes
        self._released.append(e.state)
        self._on_evict(reason)
        self._changed()
        return True

    @_locked
    def pin(self, key: Key) -> None:
        self._pinned[key] += 1

    @_locked
    def unpin(self, key: Key) -> None:
        self._pinned[key] -= 1
        if self._pinned[key] <= 0:
            del self._pinned[key]

    @_locked
    def evict_lru(self) -> bool:
        """Evict the least recently used unpinned entry (to free model state memory)."""
        for key in self._entries:
            if key not in self._pinned:
                return self.evict(key, "budget")
        return False

    @_locked
    def shrink_to(self, budget_bytes: int) -> None:
        while self._bytes > budget_bytes and self.evict_lru():
            pass

    @_locked
    def clear(self) -> None:
        for key in list(self._entries):
            self.evict(key, "budget")

    @_locked
    def discard(self, state: Any) -> None:
        """Release a state that never entered the cache (its step failed)."""
        self._released.append(state)

    def drain_releases(self) -> int:
        """Release evicted states' memory (model thread only); returns how many."""
        with self._lock:
            todo, self._released = self._released, []
        for state in todo:
            self.model.release_state(state)
        return len(todo)

    def _changed(self) -> None:
        self._on_change(len(self._entries), self._bytes)
