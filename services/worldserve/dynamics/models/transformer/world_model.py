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
keys/values each, for every layer) of a page pool the model preallocates. The model's methods live
in three modules by job: the page pool and the session states in :mod:`.state_pool`
(``StatePoolMixin``); ``prefill`` and the batched ``step`` in :mod:`.inference` (``InferenceMixin``,
whose docstring walks through one step); construction, persistence, actions, events, the
autoencoder, the interface's facts and the training loss here.

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
import operator
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from worldserve.common.caption import EVENTS
from worldserve.common.pretrained import CONFIG_FILE, WEIGHTS_FILE, read_folder, write_folder
from worldserve.dynamics.attention.backend import attention, decode_kernel_name, resolve_backend
from worldserve.dynamics.interface import ActionSpace, ModelInfo, Runtime
from worldserve.dynamics.layers.actions import check_actions, check_events
from worldserve.dynamics.layers.events import EventEncoder
from worldserve.dynamics.layers.rowwise import rowwise

from .autoencoder import Autoencoder, ResBlock
from .config import WorldModelConfig
from .inference import InferenceMixin
from .kv_cache import PagePool
from .state_pool import DEFAULT_POOL_BYTES, StatePoolMixin
from .transformer import DynamicsTransformer

__all__ = ["CONFIG_FILE", "DEFAULT_POOL_BYTES", "WEIGHTS_FILE", "WorldModel"]

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


class WorldModel(StatePoolMixin, InferenceMixin, nn.Module):
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

    def _event_embed(self, events: list[str] | None, *, alone: bool = False) -> torch.Tensor | float:
        """(n, C) event embeddings, or 0.0 when there are none (adding it is a no-op). ``alone``
        (serving): each distinct text encoded by itself, bitwise independent of the batch."""
        if events is None:
            return 0.0
        return self.event_encoder(events, alone=alone).to(self.dtype)

    # --- autoencoder ------------------------------------------------------------------------------

    # Tensors handed back to the caller (latents, frames) are always on the CPU, latents in
    # float32: the engine stores and encodes them there, whatever device and dtype the model runs
    # in. Inputs may be on any device. On a float32 CPU model these conversions are no-ops.

    # On CPU each frame is encoded / decoded alone: a batched convolution rounds differently with
    # the batch size, and a session's latents and frames must not depend on who shares its batch
    # (see ``InferenceMixin._per_row``); alone is no slower there (measured: 16 one-frame decodes
    # took less time than one 16-frame decode).

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, C, h, w) float32 CPU latents. Deterministic, and bitwise
        independent of the other frames of the batch on CPU."""
        ae = self.autoencoder
        ae.check_frames(frames)
        return (rowwise(ae.encode, frames) if self._per_row else ae.encode(frames)).float().cpu()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) latents -> (N, H, W, 3) uint8 CPU frames (bitwise independent of the other
        latents of the batch on CPU)."""
        ae = self.autoencoder
        ae.check_latents(latents)
        return (rowwise(ae.decode, latents) if self._per_row else ae.decode(latents)).cpu()

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
            events=(c.events or tuple(EVENTS)) if self.events_supported else (),
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
