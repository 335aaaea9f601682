"""WorldModel: autoencoder + causal latent-frame transformer + few-step action-guided sampler.

The serving engine depends on exactly this surface (it knows nothing of gRPC or Redis):

    model = WorldModel.from_pretrained(path)           # or WorldModel.random(config, seed)
    z0 = model.encode(first_frame)                     # (1, H, W, 3) uint8 -> (1, C, h, w)
    cache = model.prefill(z0, model.null_action()[None], first_step=0)
    z1 = model.step([cache], model.action_vector(["left"])[None], seeds=[seed], steps=[1])
    frame = model.decode(z1)                           # (1, H, W, 3) uint8

One ``step`` makes one new frame per session for a batch of sessions whose caches have different
lengths: linear layers run batched over all sessions (and over the cond/uncond CFG branches), and
attention runs ragged through ``attention_varlen``. Each new frame:

1. starts from Gaussian noise seeded by (session seed, absolute step), independent of the batch;
2. takes ``sample_steps`` Euler steps of the rectified flow; each step runs the conditional branch
   (real action) and the unconditional one (learned null action) as one batch and mixes them with
   ``v = v_uncond + g * (v_cond - v_uncond)``; the new frame's tokens attend to the cached past
   frames and to themselves;
3. is *committed*: one more pass over the clean latent (t = 0, real action) computes its keys and
   values, which are appended to the session's cache (window: ``context_frames - 1`` past frames).

Event conditioning (``model.events_supported``): ``prefill(..., events=[...])`` and
``step(..., events=[...])`` take the event text in force for each frame ("" or None = none); a
small byte-level text encoder (``events.py``) embeds it and adds it to the frame's conditioning.
"""

from __future__ import annotations

import json
import math
import numbers
import operator
import os
import threading
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .attention import attention, attention_varlen
from .autoencoder import Autoencoder, ResBlock
from .config import WorldModelConfig
from .events import EventEncoder, normalize_event
from .kv_cache import KVCache
from .sampler import cfg_combine, euler_step, initial_noise, time_grid
from .transformer import DynamicsTransformer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


class _Workspace:
    """Packed K/V buffers reused across ``step`` calls.

    On CPU a fresh multi-MB tensor is mmapped and page-faulted in on every call: packing a batch of
    32 caches into new buffers measured ~25x slower than copying into reused ones. The buffers grow
    to the largest batch seen; ``WorldModel.clear_workspace()`` frees them.
    """

    def __init__(self) -> None:
        self._bufs: dict[str, torch.Tensor] = {}
        self.lock = threading.Lock()  # one step/prefill at a time uses the buffers

    def __reduce__(self):  # deepcopy/pickle of the model get a fresh, empty workspace
        return (_Workspace, ())

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        n = math.prod(shape)
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < n or buf.dtype != dtype or buf.device != device:
            buf = self._bufs[name] = torch.empty(n, dtype=dtype, device=device)
        return buf[:n].view(shape)


class _RaggedBatch:
    """``groups`` copies of N sessions' caches, packed for ``attention_varlen``, each followed by
    ``frame_tokens`` free rows where the new frame's keys/values are written on every pass.

    Sequence b = g * N + i is copy g (0 = conditional, 1 = unconditional) of session i, so the
    conditional sequences come first and the commit pass can use a prefix of the same buffers.
    The cache part is copied once per ``step`` call, not once per sampler pass.
    """

    def __init__(self, caches: Sequence[KVCache], groups: int, frame_tokens: int, workspace: _Workspace):
        n_layers, dev, dt = caches[0].n_layers, caches[0].device, caches[0].dtype
        H, D = caches[0].k[0].shape[0], caches[0].k[0].shape[2]
        self.F = frame_tokens
        seqs = [c for _ in range(groups) for c in caches]
        past = [c.n_tokens for c in seqs]
        cu_k = [0]
        for p in past:
            cu_k.append(cu_k[-1] + p + frame_tokens)
        self.cu_k_list = cu_k
        self.cu_k = torch.tensor(cu_k, dtype=torch.int32, device=dev)  # (S + 1,)
        self.cu_q = torch.arange(0, len(seqs) + 1, dtype=torch.int32, device=dev) * frame_tokens  # (S + 1,)
        # rows of the packed buffers that hold each sequence's new frame, in sequence order: (S * F,)
        self.new_rows = torch.cat(
            [torch.arange(cu_k[b] + past[b], cu_k[b + 1], device=dev) for b in range(len(seqs))]
        )
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        for layer in range(n_layers):
            for kind, out in (("k", self.k), ("v", self.v)):
                buf = workspace.get(f"{kind}{layer}", (cu_k[-1], H, D), dt, dev)  # (total_k, H, D)
                for b, c in enumerate(seqs):
                    src = c.k[layer] if kind == "k" else c.v[layer]  # (H, past, D)
                    buf[cu_k[b] : cu_k[b] + past[b]].copy_(src.transpose(0, 1))
                out.append(buf)

    def attend(
        self,
        layer: int,
        q: torch.Tensor,  # (S, F, H, D); S may be a prefix of the sequences (commit pass)
        k: torch.Tensor,  # (S, F, H, D)
        v: torch.Tensor,  # (S, F, H, D)
    ) -> torch.Tensor:  # (S, F, H, D)
        S, F_, H, D = q.shape
        rows = self.new_rows[: S * F_]
        kb, vb = self.k[layer], self.v[layer]
        kb.index_copy_(0, rows, k.reshape(S * F_, H, D))
        vb.index_copy_(0, rows, v.reshape(S * F_, H, D))
        end = self.cu_k_list[S]
        # The queries are exactly the last frame of each sequence, so the frame-causal mask lets
        # them see every key: "full" is the same attention without building or applying a mask.
        out = attention_varlen(
            q.reshape(S * F_, H, D), kb[:end], vb[:end], self.cu_q[: S + 1], self.cu_k[: S + 1],
            frame_tokens=self.F, mask="full",
        )  # (S * F, H, D)
        return out.view(S, F_, H, D)


class WorldModel(nn.Module):
    """Genie-style interactive world model; see the module docstring for the serving loop."""

    def __init__(self, config: WorldModelConfig | None = None):
        super().__init__()
        self.config = config if config is not None else WorldModelConfig()
        if not isinstance(self.config, WorldModelConfig):
            raise ValueError(f"config must be a WorldModelConfig, got {type(self.config).__name__}")
        self.autoencoder = Autoencoder(self.config)
        self.transformer = DynamicsTransformer(self.config)
        self._key_index = {k: i for i, k in enumerate(self.config.keys)}
        self._mouse_index = {m: len(self.config.keys) + i for i, m in enumerate(self.config.mouse_axes)}
        # built under a forked RNG: the other modules' random init does not depend on whether the
        # event encoder exists (the same seed gives the same autoencoder and transformer either way)
        self.event_encoder = None
        if self.config.event_dim:
            with torch.random.fork_rng(devices=[]):
                self.event_encoder = EventEncoder(self.config)
        self._workspace = _Workspace()
        self.eval()

    def clear_workspace(self) -> None:
        """Free the packed K/V buffers ``step`` keeps between calls (they regrow on demand)."""
        self._workspace = _Workspace()

    # --- construction and persistence -------------------------------------------------------------

    @classmethod
    def random(cls, config: WorldModelConfig | None = None, seed: int = 0) -> "WorldModel":
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
    ) -> "WorldModel":
        """Load a directory written by ``save_pretrained`` (config.json + model.safetensors)."""
        path = Path(path)
        for name in (CONFIG_FILE, WEIGHTS_FILE):
            if not (path / name).is_file():
                raise FileNotFoundError(f"{str(path / name)!r} not found; expected a save_pretrained directory")
        data = json.loads((path / CONFIG_FILE).read_text())
        if isinstance(data, dict) and "event_dim" not in data:
            data = {**data, "event_dim": 0}  # saved before event conditioning existed
        if isinstance(data, dict) and "spatial_rope" not in data:
            data = {**data, "spatial_rope": False}  # saved before spatial RoPE existed
        config = WorldModelConfig.from_dict(data)
        model = cls(config)
        model.load_state_dict(load_file(path / WEIGHTS_FILE, device="cpu"), strict=True)
        return model.to(device=device, dtype=dtype).eval()

    def save_pretrained(self, path: str | Path) -> None:
        """Write config.json and model.safetensors (never pickle) into directory ``path``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()}
        tmp = path / (WEIGHTS_FILE + ".tmp")
        save_file(tensors, tmp, metadata={"format": "pt"})
        os.replace(tmp, path / WEIGHTS_FILE)
        (path / CONFIG_FILE).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")

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

    def action_vector(self, keys: Sequence[str], mouse: Mapping[str, float] | None = None) -> torch.Tensor:
        """(A,) float32 on CPU: multi-hot of the held ``keys``, then the mouse axes (missing = 0)."""
        cfg = self.config
        if isinstance(keys, (str, bytes)):
            raise ValueError(f"keys must be a sequence of key names, not the string {keys!r}")
        vec = torch.zeros(cfg.action_dim, dtype=torch.float32)
        for key in keys:
            i = self._key_index.get(key) if isinstance(key, str) else None
            if i is None:
                raise ValueError(f"unknown key {key!r}; expected one of {cfg.keys!r}")
            vec[i] = 1.0
        for axis, value in (mouse or {}).items():
            j = self._mouse_index.get(axis) if isinstance(axis, str) else None
            if j is None:
                raise ValueError(f"unknown mouse axis {axis!r}; expected one of {cfg.mouse_axes!r}")
            try:
                fv = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"mouse axis {axis!r} must be a number in [-1, 1], got {value!r}") from None
            if not (math.isfinite(fv) and -1.0 <= fv <= 1.0):
                raise ValueError(f"mouse axis {axis!r} must be a finite number in [-1, 1], got {value!r}")
            vec[j] = fv
        return vec

    def null_action(self) -> torch.Tensor:
        """(A,) zeros: no key held, mouse at rest (the no-op action)."""
        return torch.zeros(self.config.action_dim, dtype=torch.float32)

    def _check_actions(self, actions: torch.Tensor, n: int) -> torch.Tensor:
        """Validate an (n, A) action batch; returns it on the model's device and dtype."""
        a_dim = self.config.action_dim
        if not isinstance(actions, torch.Tensor) or tuple(actions.shape) != (n, a_dim):
            shape = tuple(actions.shape) if isinstance(actions, torch.Tensor) else type(actions).__name__
            raise ValueError(f"actions must be a tensor of shape ({n}, {a_dim}), got {shape}")
        a = actions.detach().to("cpu", torch.float32)
        n_keys = len(self.config.keys)
        bad = ~torch.isfinite(a)
        bad[:, :n_keys] |= (a[:, :n_keys] < 0) | (a[:, :n_keys] > 1)
        bad[:, n_keys:] |= a[:, n_keys:].abs() > 1
        if bad.any():
            r, c = (int(x) for x in bad.nonzero()[0])
            raise ValueError(
                f"actions[{r}, {c}] = {a[r, c].item()!r} out of range (keys in [0, 1], mouse in [-1, 1])"
            )
        return actions.to(device=self.device, dtype=self.dtype)

    # --- events -----------------------------------------------------------------------------------

    @property
    def events_supported(self) -> bool:
        """True when the model conditions frames on event text (``config.event_dim > 0``)."""
        return self.event_encoder is not None

    def _check_events(self, events: Sequence[str] | None, n: int) -> list[str] | None:
        """Validate n event texts ("" = none); returns them normalized, or None when all are empty."""
        if events is None:
            return None
        if isinstance(events, (str, bytes)) or not isinstance(events, Sequence):
            raise ValueError(f"events must be a sequence of {n} strings, got {events!r}")
        if len(events) != n:
            raise ValueError(f"events must hold {n} strings (one per frame), got {len(events)}")
        out = []
        for i, e in enumerate(events):
            if not isinstance(e, str):
                raise ValueError(f"events[{i}] must be a string, got {type(e).__name__}")
            e = normalize_event(e)
            if len(e.encode("utf-8")) > self.config.event_max_bytes:
                raise ValueError(
                    f"events[{i}] is {len(e.encode('utf-8'))} bytes; at most {self.config.event_max_bytes} allowed: {e[:80]!r}"
                )
            out.append(e)
        if not any(out):
            return None
        if not self.events_supported:
            raise ValueError(f"this model has no event conditioning (event_dim=0); got events {sorted(set(out) - {''})!r}")
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
        out = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                        frame_tokens=self.config.frame_tokens, mask="frame_causal")
        return out.transpose(1, 2)

    # --- inference --------------------------------------------------------------------------------

    @torch.no_grad()
    def prefill(
        self, latents: torch.Tensor, actions: torch.Tensor, first_step: int, events: Sequence[str] | None = None
    ) -> KVCache:
        """Build a session's cache from consecutive frames.

        ``latents`` (T, C, h, w) are frames at absolute steps ``first_step .. first_step + T - 1``;
        ``actions`` (T, A) are the actions that produced them (the row of step 0 is ignored: frame 0
        gets the learned first-frame embedding). The first ``context_frames`` frames run as one
        frame-causal pass; later ones are committed one by one against the sliding window, exactly
        as streaming would. Keeps the last ``context_frames - 1`` frames. See ``KVCache`` for when
        this equals the streamed cache. ``events`` (T,) optional: the event text in force for each
        frame ("" or None = none), exactly as it was passed to ``step`` when the frame was made.
        """
        cfg, tr = self.config, self.transformer
        self.autoencoder.check_latents(latents)
        T = latents.shape[0]
        if T < 1:
            raise ValueError("prefill needs at least one frame, got 0")
        first_step = operator.index(first_step)
        if first_step < 0:
            raise ValueError(f"first_step must be >= 0, got {first_step!r}")
        actions = self._check_actions(actions, T)
        events = self._check_events(events, T)
        ev = self._event_embed(events)  # (T, C) or 0
        latents = latents.to(device=self.device, dtype=self.dtype)
        cache = KVCache.empty(cfg.n_layers, cfg.n_heads, cfg.head_dim, cfg.frame_tokens,
                              max_frames=cfg.context_frames - 1, device=self.device, dtype=self.dtype)
        n0 = min(T, cfg.context_frames)
        steps = torch.arange(first_step, first_step + n0, device=self.device)  # (n0,)
        cond = tr.action_embed(actions[:n0], steps) + tr.time_embed(torch.zeros(n0, device=self.device))  # (n0, C)
        cond = cond + (ev[:n0] if events is not None else 0.0)
        tokens = tr.embed(latents[None, :n0], cond[None])  # (1, n0*F, C)
        cos, sin = tr.rope(steps[None])  # (1, n0*F, D/2)
        _, kvs = tr(tokens, cos, sin, self._attend_sequence, need_output=False)
        cache.append([k[0].transpose(0, 1) for k, _ in kvs], [v[0].transpose(0, 1) for _, v in kvs],
                     n0, first_step + n0 - 1)
        for j in range(n0, T):  # beyond the window: stream the rest
            with self._workspace.lock:
                batch = _RaggedBatch([cache], 1, cfg.frame_tokens, self._workspace)
                self._commit([cache], batch, latents[j : j + 1], actions[j : j + 1], [first_step + j],
                             ev[j : j + 1] if events is not None else 0.0)
        return cache

    def _commit(
        self,
        caches: Sequence[KVCache],
        batch: _RaggedBatch,
        x: torch.Tensor,  # (N, C, h, w) clean new latents
        actions: torch.Tensor,  # (N, A)
        steps: Sequence[int],
        ev: torch.Tensor | float = 0.0,  # (N, C) event embeddings, or 0
    ) -> None:
        """Compute the new frames' keys/values (t = 0, real action) and append them to the caches."""
        tr, n = self.transformer, len(caches)
        step_t = torch.tensor(list(steps), device=self.device)
        cond = tr.action_embed(actions, step_t) + tr.time_embed(torch.zeros(n, device=self.device)) + ev  # (N, C)
        cos, sin = tr.rope(step_t[:, None])  # (N, F, D/2)
        _, kvs = tr(tr.embed(x[:, None], cond[:, None]), cos, sin, batch.attend, need_output=False)
        for i, cache in enumerate(caches):
            cache.append([k[i].transpose(0, 1) for k, _ in kvs], [v[i].transpose(0, 1) for _, v in kvs],
                         1, steps[i])

    @torch.no_grad()
    def step(
        self,
        caches: list[KVCache],
        actions: torch.Tensor,
        seeds: Sequence[int],
        steps: Sequence[int],
        guidance: float | None = None,
        sample_steps: int | None = None,
        events: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """One new frame per session. Returns float32 CPU latents (N, C, h, w) and appends each new
        frame's keys/values to ``caches[i]`` in place (sliding window; see ``KVCache``).

        ``actions`` (N, A); ``seeds[i]`` is session i's seed; ``steps[i]`` the absolute step of its
        new frame, which must be ``caches[i].last_step + 1``. ``guidance`` (default
        ``config.guidance``; 1 skips the unconditional branch) and ``sample_steps`` (default
        ``config.sample_steps``) apply to the whole batch. A session's result does not depend on
        the rest of the batch beyond float rounding. ``events[i]`` (optional) is the event text in
        force for session i's new frame ("" = none; None = none for all); guidance applies to the
        action only, both CFG branches see the event.

        Calls on one model instance are serialized (they share reusable packing buffers).
        """
        cfg, n = self.config, len(caches)
        if n == 0:
            raise ValueError("step needs at least one session, got an empty batch")
        seeds, steps = [operator.index(s) for s in seeds], [operator.index(s) for s in steps]
        if len(seeds) != n or len(steps) != n:
            raise ValueError(f"got {n} caches, {len(seeds)} seeds and {len(steps)} steps; they must match")
        actions = self._check_actions(actions, n)
        events = self._check_events(events, n)
        g = cfg.guidance if guidance is None else guidance
        if isinstance(g, bool) or not isinstance(g, numbers.Real) or not (math.isfinite(g) and 0 <= g <= 100):
            raise ValueError(f"guidance must be a finite number in [0, 100], got {guidance!r}")
        n_steps = cfg.sample_steps if sample_steps is None else sample_steps
        if isinstance(n_steps, bool) or not isinstance(n_steps, numbers.Integral) or not 1 <= n_steps <= 1000:
            raise ValueError(f"sample_steps must be an int in [1, 1000], got {sample_steps!r}")
        self._check_caches(caches, steps)
        with self._workspace.lock:
            return self._step(caches, actions, seeds, steps, float(g), int(n_steps), events).float().cpu()

    def _step(
        self, caches: list[KVCache], actions: torch.Tensor, seeds: list[int], steps: list[int], g: float,
        n_steps: int, events: list[str] | None = None,
    ) -> torch.Tensor:
        cfg, tr, n = self.config, self.transformer, len(caches)
        for cache in caches:  # sliding window: at most context_frames - 1 past frames
            cache.trim(cfg.context_frames - 1)

        use_cfg = g != 1.0
        groups = 2 if use_cfg else 1
        batch = _RaggedBatch(caches, groups, cfg.frame_tokens, self._workspace)
        step_t = torch.tensor(steps, device=self.device)  # (N,)
        drop = torch.arange(groups * n, device=self.device) >= n  # (G*N,) second copy = unconditional
        act = tr.action_embed(actions.repeat(groups, 1), step_t.repeat(groups), drop)  # (G*N, C)
        ev = self._event_embed(events)  # (N, C) or 0
        if events is not None:
            act = act + ev.repeat(groups, 1)  # guidance is on the action only: both branches see the event
        cos, sin = tr.rope(step_t.repeat(groups)[:, None])  # (G*N, F, D/2)

        shape = (cfg.latent_channels, cfg.latent_height, cfg.latent_width)
        x = initial_noise(seeds, steps, shape, device=self.device, dtype=self.dtype)  # (N, C, h, w)
        grid = time_grid(n_steps)
        for t, t_next in zip(grid[:-1], grid[1:]):
            cond = act + tr.time_embed(torch.full((1,), t, device=self.device))  # (G*N, C)
            tokens = tr.embed(x.repeat(groups, 1, 1, 1)[:, None], cond[:, None])  # (G*N, F, C)
            out, _ = tr(tokens, cos, sin, batch.attend)
            v = tr.unembed(out)[:, 0]  # (G*N, C, h, w)
            if use_cfg:
                v = cfg_combine(v[:n], v[n:], g)
            x = euler_step(x, v, t, t_next)

        self._commit(caches, batch, x, actions, steps, ev)
        return x

    def _check_caches(self, caches: Sequence[KVCache], steps: Sequence[int]) -> None:
        cfg = self.config
        seen: set[int] = set()
        for i, (cache, s) in enumerate(zip(caches, steps)):
            if not isinstance(cache, KVCache):
                raise ValueError(f"caches[{i}] must be a KVCache, got {type(cache).__name__}")
            if id(cache) in seen:
                raise ValueError(f"caches[{i}] appears twice in one batch; a session may step once per batch")
            seen.add(id(cache))
            if cache.n_frames < 1:
                raise ValueError(f"caches[{i}] is empty; prefill it with at least the first frame")
            if (cache.n_layers, cache.frame_tokens) != (cfg.n_layers, cfg.frame_tokens) or tuple(
                cache.k[0].shape[::2]
            ) != (cfg.n_heads, cfg.head_dim):
                raise ValueError(f"caches[{i}] was not built by a model of this config")
            if cache.device != self.device or cache.dtype != self.dtype:
                raise ValueError(
                    f"caches[{i}] is {cache.dtype} on {cache.device}; the model is {self.dtype} on {self.device}"
                )
            if s != cache.last_step + 1:
                raise ValueError(f"steps[{i}] = {s} but the cache's last step is {cache.last_step}; expected {cache.last_step + 1}")

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
