"""Serving a :class:`~.world_model.WorldModel`: ``prefill`` a session's state, ``step`` a batch of sessions.

Per-session state is a :class:`~.kv_cache.PagedState`: ``context_frames`` pages (one frame of
keys/values each, for every layer) of a page pool the model preallocates. One ``step`` makes one
new frame per session for a batch of sessions whose windows have different lengths: linear layers
run batched over all sessions (and over the cond/uncond CFG branches), and attention runs through
``attention_decode`` against the pool with a block table (one row per session; both CFG copies of
a session share its row), with QK RMSNorm + RoPE fused into the attention call. On CUDA in
fp16/bf16 that is the Triton paged decode kernel (prologue fused on load, the new frame's K/V
written into the session's spare page in the same launch); on CPU the torch SDPA reference runs
the same code path. Nothing is repacked per step. Each new frame:

1. starts from Gaussian noise seeded by (session seed, absolute step), independent of the batch
   (and so is everything else a session's frame depends on, bitwise on CPU: its action and event
   vectors are computed one session at a time, its attention runs over its own pages, and its
   tokens go through the batched layers as ``frame_tokens`` rows of their own; see ``_per_row``);
2. takes ``sample_steps`` Euler steps of the rectified flow (the sampler state is float32 whatever
   the model dtype); each step runs the conditional branch (real action) and the unconditional one
   (learned null action) as one batch and mixes them with ``v = v_uncond + g * (v_cond - v_uncond)``;
   the new frame's tokens attend to the cached past frames and to themselves (``write_kv=False``);
3. is *committed*: one more pass over the clean latent (t = 0, real action) computes its keys and
   values and writes them into the session's spare page (``write_kv=True``); once the window
   (``context_frames - 1`` past frames) is full the oldest page becomes the spare.
"""

from __future__ import annotations

import math
import numbers
import operator
import threading
from collections.abc import Mapping, Sequence

import torch

from worldserve.dynamics.attention.backend import attention_decode, attention_varlen, last_decode

from .autoencoder import Autoencoder
from .config import WorldModelConfig
from .kv_cache import PagedState
from .sampler import cfg_combine, euler_step, initial_noise, time_grid
from .transformer import DynamicsTransformer


class InferenceMixin:
    """The serving passes of :class:`~.world_model.WorldModel` (which provides ``config``, ``device``,
    ``dtype``, the networks, the action/event checks and the state pool of
    :class:`~.state_pool.StatePoolMixin`)."""

    config: WorldModelConfig
    autoencoder: Autoencoder
    transformer: DynamicsTransformer
    _lock: threading.RLock
    last_step_attention: tuple[str, str] | None

    @property
    def _per_row(self) -> bool:
        """Whether the served passes compute per-session vectors (the action embedding) one session
        at a time: on CPU, where that makes a session's frames bitwise independent of its batch
        (:mod:`worldserve.dynamics.layers.rowwise`; the per-token layers multiply ``frame_tokens``
        rows per session, which the tests find batch-independent). Not on CUDA, whose batched
        matrix products choose their kernels by batch size anyway."""
        return self.transformer.head.weight.device.type == "cpu"  # the model's device

    @torch.no_grad()
    def prefill(
        self,
        latents: torch.Tensor,
        actions: torch.Tensor,
        first_step: int,
        events: Sequence[str] | None = None,
        resume: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
    ) -> PagedState:
        """Build a session's state from consecutive frames.

        ``latents`` (T, C, h, w) are frames at absolute steps ``first_step .. first_step + T - 1``;
        ``actions`` (T, A) are the actions that produced them (the row of step 0 is ignored: frame 0
        gets the learned first-frame embedding). The first ``context_frames`` frames run as one
        frame-causal pass (``attention``: the flash prefill kernel on CUDA) whose keys/values are
        written into the state's pages; later ones are committed one by one against the sliding
        window, exactly as streaming would. Keeps the last ``context_frames - 1`` frames. See
        ``kv_cache`` for when this equals the streamed state. ``events`` (T,) optional: the event
        text in force for each frame ("" or None = none), exactly as it was passed to ``step`` when
        the frame was made. Raises :class:`StateMemoryFull` when the page pool is full.

        ``resume`` (T,) optional: ``resume_data`` of each frame's state (None where there is none).
        When every kept frame has it (step 0 may lack it: it is computed as its first prefill did)
        and it matches this model's dtype and page shape, the pages are written back as they were:
        the state is bitwise the streamed one (the exact resume). Otherwise the window is
        recomputed as above (close, not bitwise, once the session is older than its window).
        """
        if resume is not None:
            state = self._resume(latents, actions, first_step, events, resume)
            if state is not None:
                return state
        return self.prefill_many([latents], [actions], [first_step], None if events is None else [events])[0]

    def _resume(
        self,
        latents: torch.Tensor,
        actions: torch.Tensor,
        first_step: int,
        events: Sequence[str] | None,
        resume: Sequence[Mapping[str, torch.Tensor] | None],
    ) -> PagedState | None:
        """The exact resume of ``prefill`` from stored pages, or None when they do not cover the window."""
        self.autoencoder.check_latents(latents)
        T, keep = latents.shape[0], min(latents.shape[0], self.config.context_frames - 1)
        if T < 1:
            raise ValueError("prefill needs at least one frame, got 0")
        self._check_actions(actions, T)
        self._check_events(events, T)
        if len(resume) != T:
            raise ValueError(f"got {T} latents and {len(resume)} resume entries; they must match")
        fs = operator.index(first_step)
        start = T - keep  # index of the oldest kept frame
        page_shape = (self.config.n_layers, 2, self.config.frame_tokens, self.config.n_heads, self.config.head_dim)
        pages: list[torch.Tensor | None] = []
        for i in range(start, T):
            kv = None if resume[i] is None else resume[i].get("kv")  # type: ignore[union-attr]
            ok = kv is not None and tuple(kv.shape) == page_shape and kv.dtype == self.dtype
            if not ok and not (fs + i == 0):  # step 0 is computed below, exactly as its first prefill
                return None
            pages.append(kv if ok else None)
        with self._lock:
            if pages[0] is None:  # the window starts at step 0: frame 0 as the session's first prefill made it
                ev0 = None if events is None else list(events[start : start + 1])
                state = self.prefill_many([latents[start : start + 1]], [actions[start : start + 1]], [0], [ev0])[0]
            else:
                state = self._new_state()
            try:
                pool = self._pool
                for j, kv in enumerate(pages):
                    if kv is not None:
                        pool.kv[:, :, state.pages[j]] = kv.to(pool.device)
                state.n_frames, state.last_step = keep, fs + T - 1
            except BaseException:
                state._release()
                raise
            return state

    @torch.no_grad()
    def prefill_many(
        self,
        latents: Sequence[torch.Tensor],
        actions: Sequence[torch.Tensor],
        first_steps: Sequence[int],
        events: Sequence[Sequence[str] | None] | None = None,
    ) -> list[PagedState]:
        """``prefill`` of several sessions in one batched pass (their windows packed ragged through
        ``attention_varlen``). Each session's result equals its own ``prefill`` up to float rounding.
        All or nothing: on an error (``StateMemoryFull`` included) no state is kept."""
        n = len(latents)
        if n == 0:
            return []
        if len(actions) != n or len(first_steps) != n or (events is not None and len(events) != n):
            raise ValueError(
                f"got {n} latents, {len(actions)} actions, {len(first_steps)} first_steps"
                + ("" if events is None else f", {len(events)} events")
                + "; they must match"
            )
        cfg, dev = self.config, self.device
        C = cfg.context_frames
        items = []
        for i in range(n):
            lat = latents[i]
            self.autoencoder.check_latents(lat)
            T = lat.shape[0]
            if T < 1:
                raise ValueError("prefill needs at least one frame, got 0")
            fs = operator.index(first_steps[i])
            if fs < 0:
                raise ValueError(f"first_step must be >= 0, got {fs!r}")
            act = self._check_actions(actions[i], T)
            ev_texts = self._check_events(None if events is None else events[i], T)
            ev = self._event_embed(ev_texts, alone=True) if ev_texts is not None else None  # (T, C) or None
            items.append((lat.to(device=dev, dtype=self.dtype), act, fs, ev, T))
        with self._lock:
            states: list[PagedState] = []
            try:
                for _ in range(n):
                    states.append(self._new_state())
                self._prefill_windows(states, items)
                for j in range(1, max(T for *_, T in items)):  # beyond the window: stream the rest
                    idx = [i for i, it in enumerate(items) if C <= j < it[4]]
                    if not idx:
                        continue
                    ev = [items[i][3] for i in idx]
                    evt = (
                        torch.stack(
                            [e[j] if e is not None else torch.zeros(cfg.dim, device=dev, dtype=self.dtype) for e in ev]
                        )
                        if any(e is not None for e in ev)
                        else 0.0
                    )
                    self._commit(
                        [states[i] for i in idx],
                        torch.cat([items[i][0][j : j + 1] for i in idx]),
                        torch.cat([items[i][1][j : j + 1] for i in idx]),
                        [items[i][2] + j for i in idx],
                        evt,
                    )
            except BaseException:
                for st in states:
                    st._release()
                raise
            return states

    def _prefill_windows(self, states: list[PagedState], items: list) -> None:
        """One frame-causal pass over the first ``min(T, context_frames)`` frames of every session
        (packed ragged when there are several), keys/values written into the sessions' pages."""
        cfg, tr, dev = self.config, self.transformer, self.device
        C, F_ = cfg.context_frames, cfg.frame_tokens
        t0 = tr.time_embed(torch.zeros(1, device=dev))  # (1, C): t = 0 for every frame, as a commit adds it
        toks, coss, sins, n0s = [], [], [], []
        for lat, act, fs, ev, T in items:
            n0 = min(T, C)
            steps = torch.arange(fs, fs + n0, device=dev)  # (n0,)
            cond = tr.action_embed(act[:n0], steps, per_row=self._per_row) + t0  # (n0, C)
            if ev is not None:
                cond = cond + ev[:n0]
            toks.append(tr.embed(lat[None, :n0], cond[None]))  # (1, n0*F, C)
            cos, sin = tr.rope(steps[None])  # (1, n0*F, D/2)
            coss.append(cos)
            sins.append(sin)
            n0s.append(n0)
        if len(items) == 1:
            _, kvs = tr(toks[0], coss[0], sins[0], self._attend_sequence, need_output=False)
        else:
            cu = [0]
            for n0 in n0s:
                cu.append(cu[-1] + n0 * F_)
            cu_t = torch.tensor(cu, dtype=torch.int32, device=dev)
            max_len = max(n0s) * F_

            def attend(layer, q, k, v):  # (1, total, H, D) packed
                out = attention_varlen(
                    q[0],
                    k[0],
                    v[0],
                    cu_t,
                    cu_t,
                    frame_tokens=F_,
                    mask="frame_causal",
                    max_seqlen_q=max_len,
                    max_seqlen_k=max_len,
                )
                return out[None]

            _, kvs = tr(
                torch.cat(toks, dim=1), torch.cat(coss, dim=1), torch.cat(sins, dim=1), attend, need_output=False
            )
        pool = self._pool
        off = 0
        for st, n0, (_, _, fs, _, _) in zip(states, n0s, items):
            keep = min(n0, C - 1)
            pages = torch.tensor(st.pages[:keep], device=pool.device, dtype=torch.long)
            rows = slice(off + (n0 - keep) * F_, off + n0 * F_)
            for layer, (k, v) in enumerate(kvs):  # (1, total, H, D)
                # (keep*F, H, D) -> (keep, F, H, D) token-major pages
                pool.kv[layer, 0][pages] = k[0, rows].unflatten(0, (keep, F_))
                pool.kv[layer, 1][pages] = v[0, rows].unflatten(0, (keep, F_))
            st.n_frames, st.last_step = keep, fs + n0 - 1
            off += n0 * F_

    def _block_table(self, states: Sequence[PagedState]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Block table (N, context_frames) int32, cache lengths (N,) int32 (rows) and their max."""
        dev, F_ = self.device, self.config.frame_tokens
        bt = torch.tensor([st.pages for st in states], dtype=torch.int32)
        lens = torch.tensor([st.n_frames * F_ for st in states], dtype=torch.int32)
        if dev.type != "cpu":
            bt, lens = bt.to(dev, non_blocking=True), lens.to(dev, non_blocking=True)
        return bt, lens, max(st.n_frames for st in states) * F_

    def _decode_attend(
        self,
        bt: torch.Tensor,
        lens: torch.Tensor,
        max_len: int,
        cos: torch.Tensor,
        sin: torch.Tensor,
        write_kv: bool,
        gather: list[dict] | None = None,
    ):
        """The attend callback of a decode pass: raw q/k/v (B, F, H, D) of the new frames against the
        sessions' pages, QK-norm + RoPE fused, the new K/V written into the spare pages if asked.
        ``gather``: one dict per layer shared by the passes of one step (the SDPA reference then
        gathers each session's pages once per step; the pages it reads do not change in a step)."""
        pool, blocks, F_ = self._pool, self.transformer.blocks, self.config.frame_tokens

        def attend(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            blk = blocks[layer]
            out = attention_decode(
                q.transpose(1, 2),
                k.transpose(1, 2),
                v.transpose(1, 2),
                pool.k(layer),
                pool.v(layer),
                lens,
                frame_tokens=F_,
                mask="frame_causal",
                write_kv=write_kv,
                max_cache_len=max_len,
                q_norm_weight=blk.q_norm,
                k_norm_weight=blk.k_norm,
                norm_eps=blk.eps,
                rope_cos=cos,
                rope_sin=sin,
                block_table=bt,
                page_size=F_,
                gather_cache=None if gather is None else gather[layer],
            )  # (B, H, F, D)
            return out.transpose(1, 2)

        return attend

    def _commit(
        self,
        states: Sequence[PagedState],
        x: torch.Tensor,  # (N, C, h, w) clean new latents
        actions: torch.Tensor,  # (N, A)
        steps: Sequence[int],
        ev: torch.Tensor | float = 0.0,  # (N, C) event embeddings, or 0
        tables: tuple | None = None,  # (block table, lengths, max length, cos, sin, gather) when the caller has them
    ) -> None:
        """Compute the new frames' keys/values (t = 0, real action), write them into each state's
        spare page (in the attention launch of every layer) and advance the states."""
        tr = self.transformer
        step_t = torch.tensor(list(steps), device=self.device)
        if tables is None:
            bt, lens, max_len = self._block_table(states)
            cos, sin = tr.rope(step_t[:, None], dtype=torch.float32)  # (N, F, D/2)
            gather = None
        else:
            bt, lens, max_len, cos, sin, gather = tables
        # per session, bitwise whatever the batch: the action MLP row by row on CPU, t = 0 embedded once
        act = tr.action_embed(actions, step_t, per_row=self._per_row)
        cond = act + tr.time_embed(torch.zeros(1, device=self.device)) + ev  # (N, C)
        attend = self._decode_attend(bt, lens, max_len, cos, sin, write_kv=True, gather=gather)
        tr(tr.embed(x[:, None], cond[:, None]), None, None, attend, need_output=False, fused_prologue=True)
        for st, s in zip(states, steps):
            st._advance(s)

    @torch.no_grad()
    def step(
        self,
        states: list[PagedState],
        actions: torch.Tensor,
        seeds: Sequence[int],
        steps: Sequence[int],
        guidance: float | None = None,
        events: Sequence[str] | None = None,
        *,
        sample_steps: int | None = None,
    ) -> torch.Tensor:
        """One new frame per session. Returns float32 CPU latents (N, C, h, w) and writes each new
        frame's keys/values into ``states[i]``'s pages in place (sliding window; see ``kv_cache``).

        ``actions`` (N, A); ``seeds[i]`` is session i's seed; ``steps[i]`` the absolute step of its
        new frame, which must be ``state_step(states[i]) + 1``. ``guidance`` (default
        ``config.guidance``; 1 skips the unconditional branch) and ``sample_steps`` (default
        ``config.sample_steps``) apply to the whole batch. A session's result does not depend on
        the rest of the batch: bitwise on CPU (``_per_row``), up to float rounding on CUDA.
        ``events[i]`` (optional) is the event text in force for session i's new frame ("" = none;
        None = none for all); guidance applies to the action only, both CFG branches see the event.

        Calls on one model instance are serialized. ``last_step_attention`` says which attention
        backend and kernel the call ran (``("triton", "flash_decode_paged")`` on CUDA bf16).
        """
        cfg, n = self.config, len(states)
        if n == 0:
            raise ValueError("step needs at least one session, got an empty batch")
        seeds, steps = [operator.index(s) for s in seeds], [operator.index(s) for s in steps]
        if len(seeds) != n or len(steps) != n:
            raise ValueError(f"got {n} states, {len(seeds)} seeds and {len(steps)} steps; they must match")
        actions = self._check_actions(actions, n)
        events = self._check_events(events, n)
        g = cfg.guidance if guidance is None else guidance
        if isinstance(g, bool) or not isinstance(g, numbers.Real) or not (math.isfinite(g) and 0 <= g <= 100):
            raise ValueError(f"guidance must be a finite number in [0, 100], got {guidance!r}")
        n_steps = cfg.sample_steps if sample_steps is None else sample_steps
        if isinstance(n_steps, bool) or not isinstance(n_steps, numbers.Integral) or not 1 <= n_steps <= 1000:
            raise ValueError(f"sample_steps must be an int in [1, 1000], got {sample_steps!r}")
        with self._lock:
            self._check_states(states, steps)
            out = self._step(states, actions, seeds, steps, float(g), int(n_steps), events)
            self.last_step_attention = last_decode()
            return out.cpu()

    def _step(
        self,
        states: list[PagedState],
        actions: torch.Tensor,
        seeds: list[int],
        steps: list[int],
        g: float,
        n_steps: int,
        events: list[str] | None = None,
    ) -> torch.Tensor:
        cfg, tr, n, dev = self.config, self.transformer, len(states), self.device
        use_cfg = g != 1.0
        groups = 2 if use_cfg else 1
        bt, lens, max_len = self._block_table(states)  # (N, C), (N,)
        step_t = torch.tensor(steps, device=dev)  # (N,)
        cos, sin = tr.rope(step_t[:, None], dtype=torch.float32)  # (N, F, D/2) fp32 tables for the prologue
        # both CFG copies of a session attend to the same pages (sequence g * N + i = copy g of session i)
        gather: list[dict] = [{} for _ in range(cfg.n_layers)]  # SDPA reference: gather pages once per step
        attend = self._decode_attend(
            bt.repeat(groups, 1),
            lens.repeat(groups),
            max_len,
            cos.repeat(groups, 1, 1),
            sin.repeat(groups, 1, 1),
            write_kv=False,
            gather=gather,
        )
        # per session, bitwise whatever the batch (the action MLP row by row on CPU, each event
        # text alone); the second copy is the unconditional one (the learned null action)
        act = tr.action_embed(actions, step_t, per_row=self._per_row)  # (N, C)
        if use_cfg:
            act = torch.cat([act, tr.unconditional_embed(step_t)])  # (G*N, C)
        ev = self._event_embed(events, alone=True)  # (N, C) or 0
        if events is not None:
            act = act + ev.repeat(groups, 1)  # guidance is on the action only: both branches see the event

        shape = (cfg.latent_channels, cfg.latent_height, cfg.latent_width)
        x = initial_noise(seeds, steps, shape, device=dev, dtype=torch.float32)  # (N, C, h, w) sampler state: fp32
        grid = time_grid(n_steps)
        for t, t_next in zip(grid[:-1], grid[1:]):
            cond = act + tr.time_embed(torch.full((1,), t, device=dev))  # (G*N, C)
            tokens = tr.embed(x.repeat(groups, 1, 1, 1)[:, None], cond[:, None])  # (G*N, F, C)
            out, _ = tr(tokens, None, None, attend, fused_prologue=True)
            v = tr.unembed(out)[:, 0].float()  # (G*N, C, h, w)
            if use_cfg:
                v = cfg_combine(v[:n], v[n:], g)
            x = euler_step(x, v, t, t_next)

        self._commit(states, x, actions, steps, ev, tables=(bt, lens, max_len, cos, sin, gather))
        return x
