"""Per-session KV state in a preallocated page pool.

The model owns one pool of pages per loaded model (:class:`~worldserve.dynamics.layers.kv_pages.PagePool`,
which the model kinds share): for every layer a key and a value tensor of shape ``(P, H, F, D)``
(views of one allocation), one page per frame of ``F = frame_tokens`` tokens. A session's state (:class:`PagedState`) is a list of
``context_frames`` page ids: its valid frames, oldest first, then a spare page. ``prefill`` takes
them from the free list (or raises :class:`~worldserve.dynamics.interface.StateMemoryFull`), every
``step`` writes the new frame's keys/values straight into the spare page (the decode kernel does it
in the attention launch), and once the window is full the oldest page becomes the spare: the page
list rotates, nothing is copied. Nothing is repacked per step: the decode kernel reads each
session's pages through a block table.

The cache is *streaming*: each frame's keys and values are computed once, by the commit pass right
after the frame is sampled, while it attended to the (at most ``context_frames - 1``) frames before
it, and are never recomputed. Keys carry RoPE of their absolute frame index, and RoPE makes scores
depend only on frame offsets, so cached keys stay valid as the window slides (and their order in
the page list does not matter for attention over the whole window).

Consequence for rebuilding a state from a stored latent window (``WorldModel.prefill``): while the
session is young (every stored frame saw its full history, i.e. the window starts at step 0) the
rebuilt state equals the streamed one up to float rounding. Once older frames have slid out, the
oldest frames of the window originally attended to frames that are gone, so a re-prefill is a close
approximation, not bitwise equal (and even a young window's one-pass prefill differs from the
commits in float rounding). So the model hands the engine each new frame's page
(``WorldModel.resume_data``), stored with the step in Redis, and ``prefill(..., resume=...)``
writes those pages back as they were, oldest first: the rebuilt state is bitwise the streamed one.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

from worldserve.dynamics.layers.kv_pages import PagePool, release_pages

__all__ = ["PagePool", "PagedState", "new_state"]


@dataclass(eq=False)
class PagedState:
    """One session's KV state: opaque to the engine, owned by the model that made it.

    ``pages`` holds ``context_frames`` page ids of the model's pool: ``pages[:n_frames]`` are the
    cached frames, oldest first (steps ``first_step .. last_step``), the rest are spare; the next
    committed frame goes to ``pages[n_frames]``. The set of pages never changes while the state
    lives (only their order, when the window slides); ``WorldModel.release_state`` returns them
    (and so does garbage collection of a dropped state)."""

    pages: list[int]
    frame_tokens: int
    page_nbytes: int
    pool_id: int
    n_frames: int = 0
    last_step: int = -1
    released: bool = False
    _finalizer: weakref.finalize | None = field(default=None, repr=False)

    @property
    def first_step(self) -> int:
        """Absolute step of the oldest cached frame (``last_step + 1`` when empty)."""
        return self.last_step - self.n_frames + 1

    @property
    def n_tokens(self) -> int:
        return self.n_frames * self.frame_tokens

    @property
    def nbytes(self) -> int:
        """Bytes of pool memory the state holds (all its pages, spare included); 0 once released."""
        return 0 if self.released else len(self.pages) * self.page_nbytes

    def _release(self) -> None:
        if not self.released:
            self.released = True
            if self._finalizer is not None:
                self._finalizer()

    def _advance(self, step: int) -> None:
        """The frame at ``step`` was written into ``pages[n_frames]``: make it valid; once the
        window is full, the oldest page becomes the spare (rotate the list; no copy)."""
        if self.n_frames < len(self.pages) - 1:
            self.n_frames += 1
        else:
            self.pages = self.pages[1:] + self.pages[:1]
        self.last_step = step


def new_state(pool: PagePool, n_pages: int, frame_tokens: int) -> PagedState | None:
    """A fresh state holding ``n_pages`` pages of ``pool``, or None when the pool is full."""
    pages = pool.alloc(n_pages)
    if pages is None:
        return None
    st = PagedState(pages=pages, frame_tokens=frame_tokens, page_nbytes=pool.page_nbytes, pool_id=pool.id)
    st._finalizer = weakref.finalize(st, release_pages, weakref.ref(pool), tuple(pages))
    return st
