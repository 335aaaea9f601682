"""A preallocated pool of key/value pages that the dynamics model kinds share.

A :class:`PagePool` holds, for every layer, a key and a value tensor of pages (views of one
allocation) and hands out page ids from a free list; a model kind keeps a session's state as a list
of its page ids and names them to the attention kernels through a block table. How many tokens a
page holds and how pages rotate is the kind's business (the transformer kind: one frame of its
latent grid per page; the causal DiT kind: one latent frame).
"""

from __future__ import annotations

import collections
import itertools
import operator
import threading
import weakref

import torch

_pool_ids = itertools.count(1)


class PagePool:
    """Key/value pages of every layer. ``k(layer)`` / ``v(layer)`` are ``(P, H, F, D)`` views (the
    layout the attention API takes) of one token-major allocation ``kv`` of shape
    ``(n_layers, 2, P, F, H, D)``: a page is a frame's ``(F, H, D)`` keys, exactly the layout the
    transformers produce them in, so prefill writes pages without a transpose and the CPU
    reference gathers a session's pages with one copy; the decode kernel reads rows of ``D``
    contiguous elements either way. Allocated with ``torch.empty``: on CPU untouched pages cost no
    resident memory. Page ids are handed out lowest first. Thread-safe allocation and release."""

    def __init__(
        self,
        n_layers: int,
        n_heads: int,
        frame_tokens: int,
        head_dim: int,
        n_pages: int,
        device: torch.device | str,
        dtype: torch.dtype,
    ):
        if n_pages < 1:
            raise ValueError(f"a page pool needs at least one page, got {n_pages}")
        if n_pages > 2**31 - 1:
            raise ValueError(f"too many pages for int32 block tables: {n_pages}")
        self.id = next(_pool_ids)
        self.kv = torch.empty(n_layers, 2, n_pages, frame_tokens, n_heads, head_dim, device=device, dtype=dtype)
        self.n_pages = n_pages
        self.page_nbytes = 2 * n_layers * n_heads * frame_tokens * head_dim * self.kv.element_size()
        self._free = list(range(n_pages - 1, -1, -1))  # pop() -> lowest id first
        self._lock = threading.Lock()
        # Pages given back by a dropped state's finalizer. A finalizer runs wherever the garbage
        # collector runs, possibly on a thread inside ``alloc`` holding the lock: it must not take
        # the lock (that would deadlock), so it only appends here (atomic) and the next ``alloc``
        # or ``release`` moves these pages to the free list.
        self._returned: collections.deque[int] = collections.deque()

    @property
    def device(self) -> torch.device:
        return self.kv.device

    @property
    def dtype(self) -> torch.dtype:
        return self.kv.dtype

    def k(self, layer: int) -> torch.Tensor:  # (P, H, F, D) view
        return self.kv[layer, 0].transpose(1, 2)

    def v(self, layer: int) -> torch.Tensor:  # (P, H, F, D) view
        return self.kv[layer, 1].transpose(1, 2)

    @property
    def free_pages(self) -> int:
        return len(self._free) + len(self._returned)

    @property
    def used_pages(self) -> int:
        return self.n_pages - self.free_pages

    def _take_returned(self) -> None:  # under the lock
        if self._returned:
            while self._returned:
                self._free.append(self._returned.popleft())
            self._free.sort(reverse=True)

    @property
    def nbytes(self) -> int:
        return self.n_pages * self.page_nbytes

    def alloc(self, n: int) -> list[int] | None:
        """``n`` free page ids, or None when fewer are free (nothing taken then)."""
        with self._lock:
            self._take_returned()
            if len(self._free) < n:
                return None
            return [self._free.pop() for _ in range(n)]

    def release(self, pages: list[int]) -> None:
        """Give pages back; never blocks (callable from a finalizer on any thread)."""
        self._returned.extend(pages)


def check_pool_budget(max_bytes: int, page_nbytes: int, pages_per_session: int) -> int:
    """``max_bytes`` as an int, once it holds at least one session's ``pages_per_session`` pages of
    ``page_nbytes`` bytes (else a ValueError saying both): what ``configure_state_pool`` takes."""
    max_bytes = operator.index(max_bytes)
    if max_bytes // page_nbytes < pages_per_session:
        raise ValueError(
            f"max_bytes={max_bytes} holds {max_bytes // page_nbytes} pages of {page_nbytes} B; one session "
            f"needs {pages_per_session}"
        )
    return max_bytes


def check_idle(pool: PagePool | None) -> None:
    """A RuntimeError while ``pool`` has pages in use: a pool is only replaced once every state was
    released (``configure_state_pool``)."""
    if pool is not None and pool.used_pages:
        raise RuntimeError(
            f"the state pool has {pool.used_pages} pages in use; release every state before configure_state_pool"
        )


def release_pages(pool_ref: weakref.ref[PagePool], pages: tuple[int, ...]) -> None:
    """Give ``pages`` back to the pool if it still exists: the body of a state's ``weakref.finalize``
    (holding the pool weakly, so a dropped model frees its pool)."""
    pool = pool_ref()
    if pool is not None:
        pool.release(list(pages))
