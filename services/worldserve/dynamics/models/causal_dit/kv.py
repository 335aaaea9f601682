"""Per-session rolling KV caches of a causal DiT, in pages of one preallocated pool.

One page holds one LATENT FRAME: its keys and values in every layer, ``(frame_tokens, heads,
head_dim)`` each (:class:`~worldserve.dynamics.layers.kv_pages.PagePool`, shared with the
transformer kind). A session's state (:class:`DiTState`) holds a fixed set of
``sink_frames + window_frames + chunk_frames`` pages for its whole life:

- the cached frames, ascending by absolute frame index: the sink (the first ``sink_frames``
  frames) and the window (the last ``window_frames`` frames before the next chunk);
- spare pages, where the chunk being made writes its keys/values on its commit pass.

The attention kernels read a session's pages through a block table row: its cached frames' pages
in ascending frame order, then the spare pages of the new chunk (``attention_decode`` writes the
new rows right after the cached ones). After a commit the new frames join the cache and the frames
the next chunk no longer sees are evicted: their pages become spares. Nothing is copied.

Keys carry RoPE of their absolute frame index, so cached keys stay valid as the window slides; the
order of the cached frames does not change what attention computes, but it does change the float
rounding of its sums, so the order is a function of the frame indices alone (ascending): a state
rebuilt from resume data reads its pages in the same order as the state it replaces, bit for bit.

States give their pages back when released, or when dropped (a ``weakref.finalize``, as in the
transformer kind): a session evicted by the engine never leaks pool memory.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from worldserve.dynamics.interface import StateMemoryFull
from worldserve.dynamics.layers.kv_pages import PagePool, check_idle, check_pool_budget, release_pages

from .options import CausalDiTOptions

# Default byte budget of the page pool when ``configure_state_pool`` was not called.
DEFAULT_POOL_BYTES = {"cuda": 8 << 30, "cpu": 1 << 30}


@dataclass(eq=False)
class DiTState:
    """One session's state: opaque to the engine, owned by the model that made it.

    ``frames`` / ``frame_pages``: the cached latent frames (ascending) and their pages; ``spare``:
    the state's other pages (at least ``chunk_frames``). ``next_frame`` is the first frame of the
    next chunk, ``last_step`` the newest step. Beside the pages the state keeps what the next
    chunks need: the action of each recent latent frame (the action module's history), the
    session's text context (None for a model without text), and the VAE's decode cache (advanced
    by ``decode_step``; ``decoded_step`` is the newest step it has decoded)."""

    pages: tuple[int, ...]
    page_nbytes: int
    pool_id: int
    frames: list[int] = field(default_factory=list)
    frame_pages: list[int] = field(default_factory=list)
    spare: list[int] = field(default_factory=list)
    next_frame: int = 0
    last_step: int = -1
    frame_actions: dict[int, torch.Tensor] = field(default_factory=dict)  # frame -> (A,) its step's action
    text: torch.Tensor | None = None  # (text_len, dim) the network's text context, on the model device
    vae: Any = None  # the VAE's DecodeCache
    decoded_step: int = -1
    released: bool = False
    _finalizer: weakref.finalize | None = field(default=None, repr=False)

    @property
    def nbytes(self) -> int:
        """Bytes the state holds: its pages (spares included), the text context, the decode cache."""
        if self.released:
            return 0
        n = len(self.pages) * self.page_nbytes
        if self.text is not None:
            n += self.text.numel() * self.text.element_size()
        if self.vae is not None:
            n += int(self.vae.nbytes)
        return n

    def block_row(self, n_new: int) -> list[int]:
        """Logical page order for attention: the cached frames' pages, then ``n_new`` spares."""
        if n_new > len(self.spare):
            raise RuntimeError(f"a chunk of {n_new} frames needs {n_new} spare pages, the state has {len(self.spare)}")
        return self.frame_pages + self.spare[:n_new]

    def add(self, frames: Sequence[int], next_frame: int, options: CausalDiTOptions, action_lookback: int = 0) -> None:
        """The keys/values of ``frames`` (ascending, after every cached frame) were written into
        the first spares: cache them, then evict what the chunk at ``next_frame`` will not see."""
        n = len(frames)
        if self.frames and frames and frames[0] <= self.frames[-1]:
            raise RuntimeError(f"frames {list(frames)} do not follow the cached frames {self.frames}")
        self.frames += list(frames)
        self.frame_pages += self.spare[:n]
        del self.spare[:n]
        self.next_frame = next_frame
        self.evict(options, action_lookback)

    def evict(self, options: CausalDiTOptions, action_lookback: int = 0) -> None:
        """Drop the cached frames the chunk at ``next_frame`` does not see (their pages become
        spares) and the actions of frames more than ``action_lookback`` frames before it (the
        action module reads no further back; frame 0's is kept)."""
        keep = set(options.visible_before(self.next_frame))
        self.spare += [p for f, p in zip(self.frames, self.frame_pages) if f not in keep]
        kept = [(f, p) for f, p in zip(self.frames, self.frame_pages) if f in keep]
        self.frames = [f for f, _ in kept]
        self.frame_pages = [p for _, p in kept]
        oldest = self.next_frame - action_lookback
        for f in [f for f in self.frame_actions if 0 < f < oldest]:
            del self.frame_actions[f]

    def page_of(self, frame: int) -> int:
        return self.frame_pages[self.frames.index(frame)]

    def _release(self) -> None:
        if not self.released:
            self.released = True
            self.text = None
            self.vae = None
            if self._finalizer is not None:
                self._finalizer()


class FramePool:
    """The model's page pool under a byte budget, and the states in it.

    ``configure(max_bytes)`` (re)makes the pool with whole pages; without it the pool is made at the
    first ``new_state`` with ``DEFAULT_POOL_BYTES`` of the device. Thread-safe."""

    def __init__(self, n_layers: int, heads: int, frame_tokens: int, head_dim: int, pages_per_state: int):
        self.shape = (n_layers, heads, frame_tokens, head_dim)
        self.pages_per_state = pages_per_state
        self.pool: PagePool | None = None
        self.max_bytes: int | None = None
        self.lock = threading.RLock()

    def page_nbytes(self, dtype: torch.dtype) -> int:
        """Bytes of one page: one latent frame's keys and values in every layer."""
        L, H, F, D = self.shape
        return 2 * L * H * F * D * torch.empty(0, dtype=dtype).element_size()

    def configure(self, max_bytes: int, device: torch.device, dtype: torch.dtype) -> None:
        max_bytes = check_pool_budget(max_bytes, self.page_nbytes(dtype), self.pages_per_state)
        with self.lock:
            check_idle(self.pool)
            self.pool = None
            self.max_bytes = max_bytes
            self.pool = self._make(device, dtype)

    def _make(self, device: torch.device, dtype: torch.dtype) -> PagePool:
        budget = self.max_bytes if self.max_bytes is not None else DEFAULT_POOL_BYTES.get(device.type, 1 << 30)
        n_pages = max(budget // self.page_nbytes(dtype), self.pages_per_state)
        L, H, F, D = self.shape
        return PagePool(L, H, F, D, n_pages, device, dtype)

    def ensure(self, device: torch.device, dtype: torch.dtype) -> PagePool:
        with self.lock:
            pool = self.pool
            if pool is not None and (pool.device != device or pool.dtype != dtype):
                if pool.used_pages:
                    raise RuntimeError(
                        f"the model moved to {dtype} on {device} while its states live in a {pool.dtype} pool on "
                        f"{pool.device}; release them first"
                    )
                pool = None
            if pool is None:
                self.pool = pool = self._make(device, dtype)
            return pool

    def new_state(self, device: torch.device, dtype: torch.dtype) -> DiTState:
        """A fresh, empty state holding ``pages_per_state`` pages. Raises :class:`StateMemoryFull`."""
        pool = self.ensure(device, dtype)
        n = self.pages_per_state
        pages = pool.alloc(n)
        if pages is None:
            raise StateMemoryFull(
                f"KV page pool full: a session needs {n} pages of {pool.page_nbytes} B, {pool.free_pages} of "
                f"{pool.n_pages} are free ({pool.nbytes} B pool); release states or configure_state_pool larger"
            )
        st = DiTState(pages=tuple(pages), page_nbytes=pool.page_nbytes, pool_id=pool.id, spare=list(pages))
        st._finalizer = weakref.finalize(st, release_pages, weakref.ref(pool), tuple(pages))
        return st

    def stats(self, dtype: torch.dtype) -> dict[str, int]:
        """Pages total / free, bytes per page, sessions that still fit (0s before the pool exists)."""
        pool = self.pool
        if pool is None:
            return dict(pages=0, free_pages=0, page_bytes=self.page_nbytes(dtype), bytes=0, free_sessions=0)
        return dict(
            pages=pool.n_pages,
            free_pages=pool.free_pages,
            page_bytes=pool.page_nbytes,
            bytes=pool.nbytes,
            free_sessions=pool.free_pages // self.pages_per_state,
        )

    def check(self, states: list[DiTState]) -> PagePool:
        """The pool, after checking that every state is live and one of its own."""
        pool = self.pool
        for i, st in enumerate(states):
            if not isinstance(st, DiTState):
                raise ValueError(f"states[{i}] is a {type(st).__name__}, not a causal DiT state")
            if st.released:
                raise ValueError(f"states[{i}] was released")
            if pool is None or st.pool_id != pool.id:
                raise ValueError(f"states[{i}] belongs to another model's (or an older) state pool")
        assert pool is not None
        return pool
