"""WorldModel: autoencoder + causal latent-frame transformer + few-step action-guided sampler.

It implements the declared model interface (:class:`worldserve.dynamics.interface.DynamicsModelProtocol`);
the serving engine depends on exactly that surface (it knows nothing of gRPC or Redis):

    model = WorldModel.load(path, device="cuda", dtype=torch.bfloat16)   # or WorldModel.random(config, seed)
    model.configure_state_pool(4 << 30)                # bytes of KV pages (optional; default 1 GiB CUDA / 2 GiB CPU)
    z0 = model.encode(first_frame)                     # (1, H, W, 3) uint8 -> (1, C, h, w) float32 CPU
    state = model.prefill(z0, model.null_action()[None], first_step=0)   # may raise StateMemoryFull
    z1 = model.step([state], model.action_vector(["left"])[None], seeds=[seed], steps=[1])
    frame = model.decode(z1)                           # (1, H, W, 3) uint8
    model.release_state(state)                         # pages back to the pool (idempotent)

Per-session state is a :class:`~.kv_cache.PagedState`: ``context_frames`` pages (one frame of
keys/values each, for every layer) of a page pool the model preallocates. One ``step`` makes one
new frame per session for a batch of sessions whose windows have different lengths: linear layers
run batched over all sessions (and over the cond/uncond CFG branches), and attention runs through
``attention_decode`` against the pool with a block table (one row per session; both CFG copies of
a session share its row), with QK RMSNorm + RoPE fused into the attention call. On CUDA in
fp16/bf16 that is the Triton paged decode kernel (prologue fused on load, the new frame's K/V
written into the session's spare page in the same launch); on CPU the torch SDPA reference runs
the same code path. Nothing is repacked per step. Each new frame:

1. starts from Gaussian noise seeded by (session seed, absolute step), independent of the batch;
2. takes ``sample_steps`` Euler steps of the rectified flow (the sampler state is float32 whatever
   the model dtype); each step runs the conditional branch (real action) and the unconditional one
   (learned null action) as one batch and mixes them with ``v = v_uncond + g * (v_cond - v_uncond)``;
   the new frame's tokens attend to the cached past frames and to themselves (``write_kv=False``);
3. is *committed*: one more pass over the clean latent (t = 0, real action) computes its keys and
   values and writes them into the session's spare page (``write_kv=True``); once the window
   (``context_frames - 1`` past frames) is full the oldest page becomes the spare.

Event conditioning (``model.events_supported``): ``prefill(..., events=[...])`` and
``step(..., events=[...])`` take the event text in force for each frame ("" or None = none); a
small byte-level text encoder (``events.py``) embeds it and adds it to the frame's conditioning.

Dtypes: ``from_pretrained``/``load`` put the transformer in the requested dtype (bf16 on CUDA is
the served setting) and keep the autoencoder and the event encoder in float32 (they are small,
and bf16 convs visibly band decoded frames). Latents and frames handed back are float32 / uint8
on the CPU.
"""

from __future__ import annotations

import math
import numbers
import operator
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from worldserve.common.pretrained import CONFIG_FILE, WEIGHTS_FILE, read_folder, write_folder  # noqa: F401 (re-exported)
from worldserve.dynamics.attention.backend import (
    attention,
    attention_decode,
    attention_varlen,
    decode_kernel_name,
    last_decode,
    resolve_backend,
)
from worldserve.dynamics.interface import ActionSpace, ModelInfo, Runtime, StateMemoryFull
from worldserve.dynamics.layers.actions import check_actions, check_events
from worldserve.dynamics.layers.events import EventEncoder

from .autoencoder import Autoencoder, ResBlock
from .config import WorldModelConfig
from .kv_cache import PagedState, PagePool, new_state
from .sampler import cfg_combine, euler_step, initial_noise, time_grid
from .transformer import DynamicsTransformer

# Default byte budget of the KV page pool when ``configure_state_pool`` was not called.
DEFAULT_POOL_BYTES = {"cuda": 1 << 30, "cpu": 2 << 30}

_DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}


def _as_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """A torch dtype from a dtype, a name ("bf16", "float32", ...) or None/"auto" (bf16 on CUDA,
    float32 elsewhere)."""
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPE_NAMES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPE_NAMES)} or 'auto'")
        return _DTYPE_NAMES[dtype.lower()]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    return dtype


class WorldModel(nn.Module):
    """Genie-style interactive world model; see the module docstring for the serving loop."""

    def __init__(self, config: WorldModelConfig | None = None):
        super().__init__()
        self.config = config if config is not None else WorldModelConfig()
        if not isinstance(self.config, WorldModelConfig):
            raise ValueError(f"config must be a WorldModelConfig, got {type(self.config).__name__}")
        self.autoencoder = Autoencoder(self.config)
        self.transformer = DynamicsTransformer(self.config)
        # built under a forked RNG: the other modules' random init does not depend on whether the
        # event encoder exists (the same seed gives the same autoencoder and transformer either way)
        self.event_encoder = None
        if self.config.event_dim:
            with torch.random.fork_rng(devices=[]):
                self.event_encoder = EventEncoder(
                    event_dim=self.config.event_dim,
                    event_max_bytes=self.config.event_max_bytes,
                    layers=self.config.event_layers,
                    dim=self.config.dim,
                )
        self._pool: PagePool | None = None
        self._pool_bytes: int | None = None  # None: DEFAULT_POOL_BYTES of the device
        self._lock = threading.RLock()  # one prefill / step / pool change at a time
        self.last_step_attention: tuple[str, str] | None = None
        """(backend, kernel) the last ``step`` ran attention with, e.g. ("triton", "flash_decode_paged")."""
        self.eval()

    def __getstate__(self):  # deepcopy/pickle: a copy gets its own (empty, lazily made) pool
        state = self.__dict__.copy()
        state["_pool"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._lock = threading.RLock()

    # --- construction and persistence -------------------------------------------------------------

    @classmethod
    def random(cls, config: WorldModelConfig | None = None, seed: int = 0) -> WorldModel:
        """Randomly initialised model; the same (config, seed) always gives the same weights.
        Leaves the global torch RNG untouched."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(operator.index(seed))
            model = cls(config)
            model._init_weights()
        return model

    def _init_weights(self) -> None:
        """nanoGPT-style init of the blocks (N(0, 0.02), residual projections scaled down by depth);
        the small conditioning MLPs keep torch's fan-in init. The autoencoder gets He init so that
        even an untrained model maps latents to frames with visible contrast (torch's default
        shrinks the signal ~1.7x per conv: every random frame would be flat grey)."""
        for mod in self.autoencoder.modules():
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
                nn.init.zeros_(mod.bias)
            if isinstance(mod, ResBlock):
                mod.conv2.weight.data.mul_(0.3)  # keep residual branches small
        for out, gain in ((self.autoencoder.encoder.out, 0.5), (self.autoencoder.decoder.out, 0.15)):
            nn.init.kaiming_normal_(out.weight, nonlinearity="linear")
            out.weight.data.mul_(gain)  # latents ~unit scale; frames mostly inside [0, 255]
        std = 0.02
        for block in self.transformer.blocks:
            for lin in (block.qkv, block.mlp.fc):
                nn.init.normal_(lin.weight, std=std)
            for lin in (block.attn_proj, block.mlp.proj):  # write into the residual stream
                nn.init.normal_(lin.weight, std=std / math.sqrt(2 * self.config.n_layers))
            nn.init.zeros_(block.mlp.fc.bias)
            nn.init.zeros_(block.mlp.proj.bias)
        tr = self.transformer
        for p in (tr.spatial_pos, tr.first_frame, tr.null_action):
            nn.init.normal_(p, std=std)
        nn.init.normal_(tr.head.weight, std=std)
        nn.init.zeros_(tr.head.bias)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> WorldModel:
        """Load a directory written by ``save_pretrained`` (config.json + model.safetensors)."""
        return cls._read(path).to_serving(device, dtype)

    @classmethod
    def _read(cls, path: str | Path, overrides: Mapping[str, Any] | None = None) -> WorldModel:
        """A save_pretrained folder's model on the CPU, its config fields replaced by ``overrides``."""
        data, state = read_folder(path)
        if isinstance(data, dict):
            data = {
                "event_dim": 0,  # saved before event conditioning existed
                "spatial_rope": False,  # saved before spatial RoPE existed
                **data,
                **(overrides or {}),
            }
        model = cls(WorldModelConfig.from_dict(data))
        model.load_state_dict(state, strict=True)
        return model

    @classmethod
    def load(
        cls,
        path: str | Path | None = None,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str | None = None,
        overrides: Mapping[str, Any] | None = None,
    ) -> WorldModel:
        """Load a ``save_pretrained`` folder, or (``path=None``) a random model (seed 0) of the default
        config, for serving. ``dtype``: a torch dtype, a name ("bf16", "float32", ...) or None/"auto"
        (bf16 on CUDA, float32 on CPU). ``overrides``: config fields replacing the saved ones (e.g.
        ``sample_steps``, ``guidance``; fields that change weight shapes fail to load)."""
        overrides = dict(overrides or {})
        dev = torch.device(device)
        if path is None:
            model = cls.random(WorldModelConfig.from_dict(overrides), seed=0)
        else:
            model = cls._read(path, overrides)
        return model.to_serving(dev, _as_dtype(dtype, dev))

    def to_serving(self, device: torch.device | str = "cpu", dtype: torch.dtype | str = torch.float32) -> WorldModel:
        """Move to ``device`` with the transformer in ``dtype`` (float32, bfloat16 or float16); the
        autoencoder and the event encoder stay float32. Drops an unused state pool (a pool with
        live states makes this an error). Returns self, in eval mode."""
        dev = torch.device(device)
        dt = _as_dtype(dtype, dev)
        with self._lock:
            if self._pool is not None and self._pool.used_pages:
                raise RuntimeError("cannot move a model with live session states; release them first")
            self._pool = None
            self.to(device=dev)
            self.transformer.to(dtype=dt)
            self.autoencoder.float()
            if self.event_encoder is not None:
                self.event_encoder.float()
        return self.eval()

    def save_pretrained(self, path: str | Path) -> None:
        """Write config.json and model.safetensors (never pickle) into directory ``path``."""
        write_folder(path, self.config.to_dict(), self.state_dict())

    @property
    def device(self) -> torch.device:
        return self.transformer.head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.head.weight.dtype

    # --- actions ----------------------------------------------------------------------------------

    @property
    def action_dim(self) -> int:
        """Length of an action vector: len(keys) + len(mouse_axes)."""
        return self.config.action_dim

    @property
    def action_space(self) -> ActionSpace:
        """What a player may send: the config's keys and mouse axes."""
        c = self.config
        return ActionSpace(
            keys=tuple(c.keys), mouse_axes=tuple(c.mouse_axes), discrete_actions=2 ** len(c.keys), latent_actions=0
        )

    def action_vector(self, keys: Sequence[str], mouse: Mapping[str, float] | None = None) -> torch.Tensor:
        """(A,) float32 on CPU: multi-hot of the held ``keys``, then the mouse axes (missing = 0)."""
        return self.action_space.vector(keys, mouse)

    def null_action(self) -> torch.Tensor:
        """(A,) zeros: no key held, mouse at rest (the no-op action)."""
        return torch.zeros(self.config.action_dim, dtype=torch.float32)

    def _check_actions(self, actions: torch.Tensor, n: int) -> torch.Tensor:
        """Validate an (n, A) action batch; returns it on the model's device and dtype."""
        check_actions(actions, n, len(self.config.keys), self.config.action_dim)
        return actions.to(device=self.device, dtype=self.dtype)

    # --- events -----------------------------------------------------------------------------------

    @property
    def events_supported(self) -> bool:
        """True when the model conditions frames on event text (``config.event_dim > 0``)."""
        return self.event_encoder is not None

    def _check_events(self, events: Sequence[str] | None, n: int) -> list[str] | None:
        """Validate n event texts ("" = none); returns them normalized, or None when all are empty."""
        out = check_events(events, n, self.config.event_max_bytes)
        if out is None or not any(out):
            return None
        if not self.events_supported:
            raise ValueError(
                f"this model has no event conditioning (event_dim=0); got events {sorted(set(out) - {''})!r}"
            )
        return out

    def _event_embed(self, events: list[str] | None) -> torch.Tensor | float:
        """(n, C) event embeddings, or 0.0 when there are none (adding it is a no-op)."""
        if events is None:
            return 0.0
        return self.event_encoder(events).to(self.dtype)

    # --- autoencoder ------------------------------------------------------------------------------

    # Tensors handed back to the caller (latents, frames) are always on the CPU, latents in
    # float32: the engine stores and encodes them there, whatever device and dtype the model runs
    # in. Inputs may be on any device. On a float32 CPU model these conversions are no-ops.

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, C, h, w) float32 CPU latents. Deterministic."""
        return self.autoencoder.encode(frames).float().cpu()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) latents -> (N, H, W, 3) uint8 CPU frames."""
        return self.autoencoder.decode(latents).cpu()

    # --- attention over a full sequence (prefill, training) ---------------------------------------

    def _attend_sequence(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # (B, T, H, D) -> (B, H, T, D) for the attention API and back
        out = attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            frame_tokens=self.config.frame_tokens,
            mask="frame_causal",
        )
        return out.transpose(1, 2)

    # --- the interface: info, runtime -------------------------------------------------------------

    @property
    def info(self) -> ModelInfo:
        """Static facts for GetModelInfo and request validation."""
        c = self.config
        return ModelInfo(
            frame_width=c.frame_width,
            frame_height=c.frame_height,
            action_space=self.action_space,
            context_frames=c.context_frames,
            sample_steps=c.sample_steps,
            default_guidance=float(c.guidance),
            events_supported=self.events_supported,
            event_max_bytes=c.event_max_bytes if self.events_supported else 0,
            parameters=sum(p.numel() for p in self.parameters()),
            extra={
                "latent_shape": (c.latent_channels, c.latent_height, c.latent_width),
                "frame_tokens": c.frame_tokens,
                "page_bytes": self.page_nbytes,
            },
        )

    @property
    def runtime(self) -> Runtime:
        """Device, dtype and the attention backend / decode kernel the served ``step`` resolves to
        under the current backend setting (``WORLDSERVE_ATTENTION`` / ``use_backend``)."""
        backend = resolve_backend(device=self.device, dtype=self.dtype, head_dim=self.config.head_dim)
        return Runtime(
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            attention_backend=backend,
            decode_kernel=decode_kernel_name(backend, paged=True),
        )

    # --- the state pool ---------------------------------------------------------------------------

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
        max_bytes = operator.index(max_bytes)
        n_pages = max_bytes // self.page_nbytes
        if n_pages < self.config.context_frames:
            raise ValueError(
                f"max_bytes={max_bytes} holds {n_pages} pages of {self.page_nbytes} B; one session "
                f"needs {self.config.context_frames}"
            )
        with self._lock:
            if self._pool is not None and self._pool.used_pages:
                raise RuntimeError(
                    f"the state pool has {self._pool.used_pages} pages in use; release every state "
                    f"before configure_state_pool"
                )
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

    # --- inference --------------------------------------------------------------------------------

    @torch.no_grad()
    def prefill(
        self, latents: torch.Tensor, actions: torch.Tensor, first_step: int, events: Sequence[str] | None = None
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
        """
        return self.prefill_many([latents], [actions], [first_step], None if events is None else [events])[0]

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
            ev = self._event_embed(ev_texts) if ev_texts is not None else None  # (T, C) or None
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
        toks, coss, sins, n0s = [], [], [], []
        for lat, act, fs, ev, T in items:
            n0 = min(T, C)
            steps = torch.arange(fs, fs + n0, device=dev)  # (n0,)
            cond = tr.action_embed(act[:n0], steps) + tr.time_embed(torch.zeros(n0, device=dev))  # (n0, C)
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
        tr, n = self.transformer, len(states)
        step_t = torch.tensor(list(steps), device=self.device)
        if tables is None:
            bt, lens, max_len = self._block_table(states)
            cos, sin = tr.rope(step_t[:, None], dtype=torch.float32)  # (N, F, D/2)
            gather = None
        else:
            bt, lens, max_len, cos, sin, gather = tables
        cond = tr.action_embed(actions, step_t) + tr.time_embed(torch.zeros(n, device=self.device)) + ev  # (N, C)
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
        the rest of the batch beyond float rounding. ``events[i]`` (optional) is the event text in
        force for session i's new frame ("" = none; None = none for all); guidance applies to the
        action only, both CFG branches see the event.

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
        drop = torch.arange(groups * n, device=dev) >= n  # (G*N,) second copy = unconditional
        act = tr.action_embed(actions.repeat(groups, 1), step_t.repeat(groups), drop)  # (G*N, C)
        ev = self._event_embed(events)  # (N, C) or 0
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

    # --- training ---------------------------------------------------------------------------------

    def forward(
        self,
        latents: torch.Tensor,  # (B, T, C, h, w) clean latents of consecutive frames
        actions: torch.Tensor,  # (B, T, A) the action that produced each frame
        first_step: int = 0,
        generator: torch.Generator | None = None,
        events: Sequence[Sequence[str]] | None = None,
        t: torch.Tensor | None = None,
        first_steps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Rectified-flow training loss (scalar), teacher-forced in the Diffusion Forcing style:
        every frame gets its own flow time t ~ U(0, 1) and attends frame-causally to the noisy past;
        with probability ``cfg_dropout_p`` a frame's action becomes the null action.
        Inference conditions on clean past frames, which is the t -> 0 end of this distribution.

        Optional: ``events`` (B x T texts, the event in force per frame); ``t`` (B, T) flow times
        instead of U(0, 1) (a training schedule may put more frames near clean); ``first_steps``
        (B,) absolute step of each clip's first frame (overrides ``first_step``)."""
        cfg, tr = self.config, self.transformer
        B, T = latents.shape[:2]
        if T > cfg.context_frames:
            raise ValueError(f"clips may be at most context_frames={cfg.context_frames} long, got {T}")
        dev, dt = self.device, self.dtype
        if t is None:
            t = torch.rand(B, T, generator=generator)
        t = t.to(dev, dt)  # (B, T)
        noise = torch.randn(latents.shape, generator=generator).to(dev, dt)  # (B, T, C, h, w)
        drop = (torch.rand(B, T, generator=generator) < cfg.cfg_dropout_p).to(dev)  # (B, T)
        x0 = latents.to(dev, dt)
        xt = (1 - t)[..., None, None, None] * x0 + t[..., None, None, None] * noise
        if first_steps is None:
            steps = torch.arange(first_step, first_step + T, device=dev).expand(B, T)  # (B, T)
        else:
            steps = first_steps.to(dev).long()[:, None] + torch.arange(T, device=dev)  # (B, T)
        cond = tr.action_embed(actions.reshape(B * T, -1).to(dev), steps.reshape(-1), drop.reshape(-1))
        cond = cond + tr.time_embed(t.reshape(-1))
        if events is not None:
            if len(events) != B or any(len(row) != T for row in events):
                raise ValueError(f"events must be {B} rows of {T} texts")
            flat = self._check_events([e for row in events for e in row], B * T)
            cond = cond + self._event_embed(flat)
        cond = cond.view(B, T, cfg.dim)  # (B, T, C)
        cos, sin = tr.rope(steps)  # (B, T*F, D/2)
        out, _ = tr(tr.embed(xt, cond), cos, sin, self._attend_sequence)
        return F.mse_loss(tr.unembed(out), noise - x0)
