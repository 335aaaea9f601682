"""The KV page pool of a :class:`~.world_model.WorldModel` and the per-session states in it.

The model preallocates one :class:`~.kv_cache.PagePool` (``configure_state_pool``, or lazily at the
first ``prefill`` with ``DEFAULT_POOL_BYTES`` of the device); each session's state is a
:class:`~.kv_cache.PagedState` of ``context_frames`` pages of it (see ``kv_cache`` for how the pages
rotate). This module holds the pool's management and the state methods of the model interface
(``state_nbytes``, ``release_state``, ``state_step``, ``clone_state``), mixed into ``WorldModel``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch

from worldserve.dynamics.interface import StateMemoryFull
from worldserve.dynamics.layers.kv_pages import check_idle, check_pool_budget

from .config import WorldModelConfig
from .kv_cache import PagedState, PagePool, new_state

# Default byte budget of the KV page pool when ``configure_state_pool`` was not called.
DEFAULT_POOL_BYTES = {"cuda": 1 << 30, "cpu": 2 << 30}


class StatePoolMixin:
    """The state pool part of :class:`~.world_model.WorldModel`, which provides ``config``, ``device``,
    ``dtype`` and the pool attributes below (set in its ``__init__``)."""

    config: WorldModelConfig
    _pool: PagePool | None
    _pool_bytes: int | None  # None: DEFAULT_POOL_BYTES of the device
    _lock: threading.RLock

    @property
    def page_nbytes(self) -> int:
        """Bytes of one page: one frame's keys and values in every layer, in the model dtype."""
        c = self.config
        return (
            2 * c.n_layers * c.n_heads * c.frame_tokens * c.head_dim * torch.empty(0, dtype=self.dtype).element_size()
        )

    def configure_state_pool(self, max_bytes: int) -> None:
        """Preallocate the KV page pool with at most ``max_bytes`` of pages (rounded down to whole
        pages; at least one session's ``context_frames`` pages). Call before any ``prefill`` (or
        after every state was released): it replaces the pool. Without a call the pool is made at
        the first ``prefill`` with ``DEFAULT_POOL_BYTES`` of the device."""
        max_bytes = check_pool_budget(max_bytes, self.page_nbytes, self.config.context_frames)
        with self._lock:
            check_idle(self._pool)
            self._pool = None  # free the old one first
            self._pool_bytes = max_bytes
            self._pool = self._make_pool()

    def state_pool_stats(self) -> dict[str, int]:
        """Pages total / free, bytes per page, sessions that still fit (0s before the pool exists)."""
        pool, C = self._pool, self.config.context_frames
        if pool is None:
            return dict(pages=0, free_pages=0, page_bytes=self.page_nbytes, bytes=0, free_sessions=0)
        return dict(
            pages=pool.n_pages,
            free_pages=pool.free_pages,
            page_bytes=pool.page_nbytes,
            bytes=pool.nbytes,
            free_sessions=pool.free_pages // C,
        )

    def _make_pool(self) -> PagePool:
        c = self.config
        budget = (
            self._pool_bytes
            if self._pool_bytes is not None
            else DEFAULT_POOL_BYTES.get(self.device.type, DEFAULT_POOL_BYTES["cuda"])
        )
        n_pages = max(budget // self.page_nbytes, c.context_frames)
        return PagePool(c.n_layers, c.n_heads, c.frame_tokens, c.head_dim, n_pages, self.device, self.dtype)

    def _ensure_pool(self) -> PagePool:
        pool = self._pool
        if pool is not None and (pool.device != self.device or pool.dtype != self.dtype):
            if pool.used_pages:
                raise RuntimeError(
                    f"the model moved to {self.dtype} on {self.device} while its states live in a "
                    f"{pool.dtype} pool on {pool.device}; release them first"
                )
            self._pool = pool = None
        if pool is None:
            self._pool = pool = self._make_pool()
        return pool

    def _new_state(self) -> PagedState:
        pool = self._ensure_pool()
        C = self.config.context_frames
        st = new_state(pool, C, self.config.frame_tokens)
        if st is None:
            raise StateMemoryFull(
                f"KV page pool full: a session needs {C} pages of {pool.page_nbytes} B, {pool.free_pages} of "
                f"{pool.n_pages} are free ({pool.nbytes} B pool); release states or configure_state_pool larger"
            )
        return st

    def state_nbytes(self, state: PagedState) -> int:
        """Bytes of pool memory the state holds (its pages, the spare included); 0 once released."""
        return state.nbytes

    def release_state(self, state: PagedState) -> None:
        """Return the state's pages to the pool (idempotent). The state must not be used afterwards."""
        if not isinstance(state, PagedState):
            raise ValueError(f"expected a PagedState, got {type(state).__name__}")
        state._release()

    def state_step(self, state: PagedState) -> int:
        """Absolute step of the newest frame the state holds."""
        return state.last_step

    @torch.no_grad()
    def resume_data(self, state: PagedState) -> dict[str, torch.Tensor]:
        """The newest frame's keys and values, ``{"kv": (n_layers, 2, F, H, D)}`` in the model's
        dtype, on the CPU: what an exact resume needs beyond the latents. A frame's keys/values are
        computed once, by the commit pass right after it was sampled, against the frames before it
        (whose own keys/values go back to step 0), so the latent window alone cannot rebuild them
        bitwise; ``prefill(..., resume=...)`` writes these pages back as they were."""
        with self._lock:
            self._check_states([state], None)
            page = state.pages[state.n_frames - 1]
            return {"kv": self._pool.kv[:, :, page].cpu().clone()}

    @torch.no_grad()
    def clone_state(self, state: PagedState) -> PagedState:
        """A copy of ``state`` in new pages (fork a session without re-prefilling). May raise
        :class:`StateMemoryFull`."""
        with self._lock:
            self._check_states([state], None)
            new = self._new_state()
            n = state.n_frames
            if n:
                pool = self._pool
                src = torch.tensor(state.pages[:n], device=pool.device)
                dst = torch.tensor(new.pages[:n], device=pool.device)
                pool.kv[:, :, dst] = pool.kv[:, :, src]
            new.n_frames, new.last_step = n, state.last_step
            return new

    @torch.no_grad()
    def state_kv(self, state: PagedState, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of the state's cached keys and values of ``layer``, each (H, n_frames * F, D), oldest
        frame first (for tests and debugging)."""
        self._check_states([state], None)
        pool = self._pool
        idx = torch.tensor(state.pages[: state.n_frames], device=pool.device, dtype=torch.long)
        k = pool.kv[layer, 0].index_select(0, idx).flatten(0, 1).transpose(0, 1)  # (H, n*F, D)
        v = pool.kv[layer, 1].index_select(0, idx).flatten(0, 1).transpose(0, 1)
        return k.contiguous(), v.contiguous()

    def _check_states(self, states: Sequence[PagedState], steps: Sequence[int] | None) -> None:
        pool = self._pool
        seen: set[int] = set()
        for i, st in enumerate(states):
            if not isinstance(st, PagedState):
                raise ValueError(
                    f"states[{i}] must be a PagedState made by this model's prefill, got {type(st).__name__}"
                )
            if id(st) in seen:
                raise ValueError(f"states[{i}] appears twice in one batch; a session may step once per batch")
            seen.add(id(st))
            if st.released:
                raise ValueError(f"states[{i}] was released")
            if pool is None or st.pool_id != pool.id:
                raise ValueError(
                    f"states[{i}] does not belong to this model's state pool (another model, or the "
                    f"pool was reconfigured)"
                )
            if pool.device != self.device or pool.dtype != self.dtype:
                raise ValueError(
                    f"states[{i}] is {pool.dtype} on {pool.device}; the model is {self.dtype} on {self.device}"
                )
            if st.n_frames < 1:
                raise ValueError(f"states[{i}] is empty; prefill it with at least the first frame")
            if steps is not None and steps[i] != st.last_step + 1:
                raise ValueError(
                    f"steps[{i}] = {steps[i]} but the state's last step is {st.last_step}; expected {st.last_step + 1}"
                )
