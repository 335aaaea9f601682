"""CausalDiTWorldModel: a Wan2.1-lineage causal video DiT served through the model interface.

    model = CausalDiTWorldModel.load(folder, device="cuda", dtype=torch.bfloat16, options={...})
    model.configure_state_pool(32 << 30)               # bytes of KV pages (optional)
    z0 = model.encode(first_frame)                     # (1, H, W, 3) uint8 -> (1, C, 1, h, w)
    state = model.prefill(z0, model.null_action()[None], first_step=0, text=prompt_embeds)
    z = model.step([state], model.action_vector(["forward"])[None], seeds=[seed], steps=[1])
    frame = model.decode_step([state], z)              # (1, H, W, 3): the chunk's last pixel frame
    data = model.resume_data(state)                    # stored with the step (exact resume)
    model.release_state(state)

``folder`` is a published model folder: ``transformer/`` (diffusers' ``WanTransformer3DModel`` layout,
or the original Wan repository's, through ``keymap``) and ``vae/`` (``AutoencoderKLWan``). Serving
knobs come from ``options`` (:class:`~.options.CausalDiTOptions`: chunk size, sink and window,
denoising schedule, frame size, action names).

Steps and frames (:mod:`.options`): step 0 is the session's first frame (one latent frame, committed
at prefill); each later step makes ``chunk_frames`` latent frames under one action and returns them,
(N, C, chunk_frames, h, w) float32; ``decode_step`` turns them into the chunk's last pixel frame
through each session's VAE decode cache. The state (:mod:`.kv`): the session's rolling KV cache in
pages of the model's pool, its recent actions, its text context and its decode cache.

Exact resume. Each step's ``resume_data`` holds the keys/values of the frames it made (``"kv"``,
(layers, 2, chunk_frames, tokens, heads, head_dim)), every ``context_frames - 1`` steps the sink's
(``"sink"``), and the VAE decode cache after its frames (``"vae.*"``; none with the option
``decode_cache: rebuild``: prefill then decodes the window's last ``history_frames`` latent frames
again, which gives the same cache bitwise). ``prefill`` of the engine's window (its last
``context_frames - 1`` steps) writes the pages back in frame order and restores the decode cache:
the state is bitwise the warm one. Frame 0 has no resume data (it is made by prefill):
its keys/values and decode cache are recomputed exactly as the first prefill made them. Where resume
data is missing (an older writer, a window cut short, the option ``exact_resume: false``), the
missing steps are committed again from their latents against what the cache holds then: close, not
bitwise. At Wan's sizes the bytes are large (a latent frame's keys/values are 274 MiB for
Wan2.1-1.3B at 480x832 in bf16; the decode cache 3.5 GiB in float32): hence the options.

Actions: the keyboard keys and mouse axes of the transformer's action modules (names from the
options); a folder without action modules is a prompt-only world with an empty action space.
Text: ``prefill(..., text=(L, text_dim))``, the session's precomputed prompt embedding, zero-padded
to ``text_len`` tokens; sessions without one run without cross-attention.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from worldserve.dynamics.attention.backend import decode_kernel_name, last_decode, resolve_backend
from worldserve.dynamics.interface import ActionSpace, ModelInfo, Runtime
from worldserve.dynamics.layers.actions import check_actions, check_events

from .config import WanTransformerConfig, read_transformer_folder
from .inference import ChunkInference, chunk_noise
from .kv import DiTState, FramePool
from .network import CausalWanTransformer, pad_text
from .options import CausalDiTOptions, action_names
from .vae import DecodeCache, StreamingWanVAE, tiny_vae_config

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _as_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {sorted(_DTYPES)} or 'auto'")
        return _DTYPES[dtype.lower()]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype!r}")
    return dtype


class CausalDiTWorldModel:
    """A causal video DiT + Wan's VAE behind the model interface; see the module docstring."""

    def __init__(
        self,
        net: CausalWanTransformer,
        vae: StreamingWanVAE,
        options: CausalDiTOptions | None = None,
        *,
        name: str = "causal_dit",
    ):
        self.options = o = options if options is not None else CausalDiTOptions()
        self.name = name
        cfg = net.config
        if cfg.in_channels != vae.latent_channels or cfg.out_channels != vae.latent_channels:
            raise ValueError(
                f"model {name!r}: the transformer takes {cfg.in_channels} and makes {cfg.out_channels} latent "
                f"channels; the VAE's latents have {vae.latent_channels}"
            )
        p = cfg.patch_size
        if p[0] != 1 or o.latent_height % p[1] or o.latent_width % p[2]:
            raise ValueError(
                f"model {name!r}: latent grid {o.latent_height}x{o.latent_width} does not fit patch size {list(p)} "
                "(the temporal patch must be 1; height and width multiples of the spatial patch)"
            )
        ac = cfg.action_config
        self.has_actions = net.has_actions
        if self.has_actions:
            assert ac is not None
            if ac.vae_time_compression_ratio != vae.temporal:
                raise ValueError(
                    f"model {name!r}: action_config.vae_time_compression_ratio {ac.vae_time_compression_ratio} "
                    f"differs from the VAE's {vae.temporal} pixel frames per latent frame"
                )
            self.keys, self.mouse_axes = action_names(
                o, ac.keyboard_dim_in if ac.enable_keyboard else 0, ac.mouse_dim_in if ac.enable_mouse else 0
            )
            self.action_lookback = ac.windows_size  # latent frames before a chunk whose actions it reads
        else:
            self.keys, self.mouse_axes, self.action_lookback = (), (), 0
        self.net = net.eval().requires_grad_(False)
        self.vae = vae
        self.infer = ChunkInference(net, o, (o.latent_height, o.latent_width))
        # steps whose frames the next chunk reads (KV window, action windows) or, with a rebuilt decode
        # cache, the VAE needs: what the engine hands prefill
        lookback = max(o.window_frames, self.action_lookback)
        if o.decode_cache == "rebuild":
            lookback = max(lookback, vae.history_frames)
        self.context_steps = (lookback - 1) // o.chunk_frames + 1
        heads = cfg.num_attention_heads
        self.pool = FramePool(
            cfg.num_layers,
            heads,
            self.infer.frame_tokens,
            cfg.attention_head_dim,
            o.sink_frames + o.window_frames + o.chunk_frames,
        )
        self.parameter_count = sum(p.numel() for p in net.parameters()) + sum(p.numel() for p in vae.vae.parameters())
        self._lock = threading.RLock()  # one prefill / step / decode / pool change at a time
        self.last_step_attention: tuple[str, str] | None = None

    # --- construction ------------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        folder: str | Path,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str | None = None,
        options: Mapping[str, Any] | None = None,
        name: str = "causal_dit",
    ) -> CausalDiTWorldModel:
        """A published folder (``transformer/`` + ``vae/``) for serving; see the module docstring.
        A broken folder is a :class:`~worldserve.common.registry.ModelLoadError` naming the file and
        the tensor or field; a bad option a ValueError naming it."""
        opts = CausalDiTOptions.from_options(options)
        folder = Path(folder)
        config, state = read_transformer_folder(folder)
        with torch.device("meta"):
            net = CausalWanTransformer(config)
        net.load_state_dict(state, strict=True, assign=True)
        del state
        vae = StreamingWanVAE.from_folder(folder / "vae", device=device)
        # Every weight in memory of its own. Tensors read from a safetensors file can sit at any
        # offset of a shared buffer, and CPU matmul kernels round differently on differently aligned
        # operands: the same folder must give bitwise the same frames on every replica.
        for module in (net, vae.vae):
            for p in module.parameters():
                p.data = p.data.clone()
        return cls(net, vae, opts, name=name).to_serving(device, dtype)

    @classmethod
    def random(
        cls,
        config: WanTransformerConfig,
        vae_config: Mapping[str, Any] | None = None,
        *,
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | str | None = None,
        options: Mapping[str, Any] | CausalDiTOptions | None = None,
        name: str = "causal_dit",
    ) -> CausalDiTWorldModel:
        """A randomly initialised model (the same (configs, seed), the same weights; the global RNG
        is left as it was). The action modules' output projections get small random weights instead
        of zeros, so that actions change the frames of an untrained model."""
        opts = options if isinstance(options, CausalDiTOptions) else CausalDiTOptions.from_options(options)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = CausalWanTransformer(config)
            for blk in net.blocks:
                am = getattr(blk, "action_model", None)
                for proj in (getattr(am, "proj_mouse", None), getattr(am, "proj_keyboard", None)):
                    if proj is not None:
                        torch.nn.init.normal_(proj.weight, std=0.02)
        vae = StreamingWanVAE.random(vae_config if vae_config is not None else tiny_vae_config(), seed=seed)
        return cls(net, vae, opts, name=name).to_serving(device, dtype)

    def to_serving(
        self, device: torch.device | str = "cpu", dtype: torch.dtype | str | None = None
    ) -> CausalDiTWorldModel:
        """The transformer on ``device`` in ``dtype`` (None/"auto": bf16 on CUDA, float32 elsewhere)
        with diffusers' float32 parameters kept so (``network.to_serving_dtype``); the VAE
        in float32. Drops an unused state pool. Returns self."""
        dev = torch.device(device)
        dt = _as_dtype(dtype, dev)
        with self._lock:
            if self.pool.pool is not None and self.pool.pool.used_pages:
                raise RuntimeError("cannot move a model with live session states; release them first")
            self.pool.pool = None
            self.net.to(device=dev)
            self.net.to_serving_dtype(dt)
            torch.nn.Module.to(self.vae.vae, device=dev)
            self.vae.latents_mean = self.vae.latents_mean.to(dev)
            self.vae.latents_std = self.vae.latents_std.to(dev)
        return self

    @property
    def device(self) -> torch.device:
        return self.net.patch_embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.net.patch_embedding.weight.dtype

    # --- the interface: facts ------------------------------------------------------------------------

    @property
    def action_space(self) -> ActionSpace:
        """The action modules' keys and mouse axes; empty for a prompt-only world."""
        return ActionSpace(
            keys=self.keys,
            mouse_axes=self.mouse_axes,
            discrete_actions=2 ** len(self.keys) if self.keys else 0,
            latent_actions=0,
        )

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """(C, chunk_frames, h, w) of a step's latents (step 0's has one frame)."""
        o = self.options
        return (self.vae.latent_channels, o.chunk_frames, o.latent_height, o.latent_width)

    @property
    def info(self) -> ModelInfo:
        o, cfg = self.options, self.net.config
        return ModelInfo(
            frame_width=o.latent_width * self.vae.scale,
            frame_height=o.latent_height * self.vae.scale,
            action_space=self.action_space,
            context_frames=self.context_steps + 1,
            sample_steps=len(o.timesteps),
            default_guidance=1.0,
            events_supported=False,
            event_max_bytes=0,
            parameters=self.parameter_count,
            extra={
                "kind": "causal_dit",
                "text_dim": cfg.text_dim,
                "text_len": o.text_len,
                "latent_shape": self.latent_shape,
                "chunk_frames": o.chunk_frames,
                "sink_frames": o.sink_frames,
                "window_frames": o.window_frames,
                "frame_tokens": self.infer.frame_tokens,
                "page_bytes": self.pool.page_nbytes(self.dtype),
            },
        )

    @property
    def runtime(self) -> Runtime:
        backend = resolve_backend(device=self.device, dtype=self.dtype, head_dim=self.net.config.attention_head_dim)
        return Runtime(
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            attention_backend=backend,
            decode_kernel=decode_kernel_name(backend, paged=True),
        )

    # --- actions ---------------------------------------------------------------------------------------

    def action_vector(self, keys: Sequence[str], mouse: Mapping[str, float] | None = None) -> torch.Tensor:
        """(A,) float32: multi-hot of the held keys, then the mouse axes. A prompt-only world takes
        none: any key or axis is a ValueError saying so."""
        if not self.has_actions and (list(keys) or dict(mouse or {})):
            raise ValueError(f"model {self.name!r} takes no actions (a prompt-only world); got keys {list(keys)!r}")
        return self.action_space.vector(keys, mouse)

    def null_action(self) -> torch.Tensor:
        """(A,) zeros: no key held, mouse at rest."""
        return torch.zeros(len(self.keys) + len(self.mouse_axes), dtype=torch.float32)

    def _check_actions(self, actions: torch.Tensor, n: int) -> torch.Tensor:
        return check_actions(actions, n, len(self.keys), len(self.keys) + len(self.mouse_axes))

    def _check_events(self, events: Sequence[str] | None, n: int) -> None:
        out = check_events(events, n, 1 << 16)
        if out is not None and any(out):
            raise ValueError(f"model {self.name!r} has no event conditioning; got events {sorted(set(out) - {''})!r}")

    # --- the VAE -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 first frames -> (N, C, 1, h, w) float32 CPU latents. Deterministic."""
        info = self.info
        if not isinstance(frames, torch.Tensor) or frames.dim() != 4:
            raise ValueError(
                f"frames must be (N, H, W, 3) uint8, got {getattr(frames, 'shape', type(frames).__name__)}"
            )
        if tuple(frames.shape[1:3]) != (info.frame_height, info.frame_width):
            raise ValueError(
                f"model {self.name!r} takes {info.frame_width}x{info.frame_height} frames, got "
                f"{frames.shape[2]}x{frames.shape[1]}"
            )
        with self._lock:
            if self._alone:
                return torch.cat([self.vae.encode_first(frames[i : i + 1].clone()) for i in range(frames.shape[0])])
            return self.vae.encode_first(frames)

    @property
    def _alone(self) -> bool:
        """Whether ``step``, ``decode_step``, ``encode`` and ``decode`` run each session alone (a
        batch of one, on inputs of its own): on CPU, where a batched matrix product or convolution
        rounds differently with the batch size, and a session's frames must not depend on who
        shares its batch (one resumed on another replica after a cache miss meets other sessions
        there). CUDA keeps the batch."""
        return self.device.type == "cpu"

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, C, f, h, w) latents -> (N, H, W, 3) uint8: each decoded alone, as a session's first
        chunk (no decode cache), its last pixel frame. Stateless; the served frames come from
        :meth:`decode_step`, which decodes against the session's earlier chunks."""
        z = self._latents(latents, None)
        with self._lock:
            if self._alone:
                frames = torch.cat(
                    [self.vae.decode_chunk(z[i : i + 1].clone(), [self.vae.new_cache()]) for i in range(z.shape[0])]
                )
            else:
                frames = self.vae.decode_chunk(z, [self.vae.new_cache() for _ in range(z.shape[0])])
        return frames[:, -1]

    @torch.no_grad()
    def decode_step(self, states: list[DiTState], latents: torch.Tensor) -> torch.Tensor:
        """The sessions' newest chunks (``step``'s output, (N, C, chunk_frames, h, w)) -> (N, H, W, 3)
        uint8 CPU: each chunk's last pixel frame, decoded against the session's earlier chunks (its
        decode cache, which advances). Call once after every ``step``, before ``resume_data``."""
        z = self._latents(latents, self.options.chunk_frames)
        if z.shape[0] != len(states):
            raise ValueError(f"got {len(states)} states and {z.shape[0]} latents; they must match")
        with self._lock:
            self.pool.check(states)
            for i, st in enumerate(states):
                if st.decoded_step != st.last_step - 1:
                    raise ValueError(
                        f"states[{i}] is at step {st.last_step} and has decoded step {st.decoded_step}: "
                        "decode_step takes each step's chunk once, right after the step"
                    )
            if self._alone:
                frames = torch.cat(
                    [self.vae.decode_chunk(z[i : i + 1].clone(), [st.vae]) for i, st in enumerate(states)]
                )
            else:
                frames = self.vae.decode_chunk(z, [st.vae for st in states])  # (N, n_px, H, W, 3)
            for st in states:
                st.decoded_step = st.last_step
        return frames[:, -1]

    def _latents(self, latents: torch.Tensor, frames: int | None) -> torch.Tensor:
        o = self.options
        C = self.vae.latent_channels
        if (
            not isinstance(latents, torch.Tensor)
            or latents.dim() != 5
            or latents.shape[1] != C
            or tuple(latents.shape[3:]) != (o.latent_height, o.latent_width)
            or (frames is not None and latents.shape[2] != frames)
        ):
            f = "f" if frames is None else frames
            raise ValueError(
                f"latents must be (N, {C}, {f}, {o.latent_height}, {o.latent_width}), got "
                f"{tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__}"
            )
        return latents.float()

    # --- the state pool ------------------------------------------------------------------------------------

    @property
    def session_nbytes(self) -> int:
        """Device bytes one session holds at most: its pages, its VAE decode cache (the larger part
        at Wan's sizes: 3.5 GiB at 480x832) and a text context."""
        o, elem = self.options, torch.empty(0, dtype=self.dtype).element_size()
        pages = self.pool.pages_per_state * self.pool.page_nbytes(self.dtype)
        return (
            pages
            + self.vae.cache_nbytes(o.latent_height, o.latent_width)
            + o.text_len * self.net.config.inner_dim * elem
        )

    def configure_state_pool(self, max_bytes: int) -> None:
        """Preallocate the KV page pool for as many sessions as ``max_bytes`` holds whole sessions
        (:attr:`session_nbytes`: the pages, plus the decode cache and text context that live beside
        the pool), at least one. Call before any ``prefill`` (or once every state was released)."""
        n = int(max_bytes) // self.session_nbytes
        if n < 1:
            raise ValueError(f"max_bytes={max_bytes} holds no session of {self.session_nbytes} B")
        with self._lock:
            self.pool.configure(
                n * self.pool.pages_per_state * self.pool.page_nbytes(self.dtype), self.device, self.dtype
            )

    def state_pool_stats(self) -> dict[str, int]:
        """Pages total / free, bytes per page, sessions that still fit (0s before the pool exists)."""
        return self.pool.stats(self.dtype)

    def state_nbytes(self, state: DiTState) -> int:
        """Bytes the state holds: its pages (spares included), text context and decode cache."""
        return state.nbytes

    def release_state(self, state: DiTState) -> None:
        """Return the state's pages to the pool (idempotent)."""
        if not isinstance(state, DiTState):
            raise ValueError(f"expected a causal DiT state, got {type(state).__name__}")
        state._release()

    def state_step(self, state: DiTState) -> int:
        return state.last_step

    # --- prefill ---------------------------------------------------------------------------------------------

    def _text_context(self, text: torch.Tensor | None) -> torch.Tensor | None:
        """(L, text_dim) prompt embedding -> (text_len, D) cross-attention context, or None."""
        if text is None:
            return None
        td, L_max = self.net.config.text_dim, self.options.text_len
        if not isinstance(text, torch.Tensor) or text.dim() != 2 or text.shape[1] != td:
            got = tuple(text.shape) if isinstance(text, torch.Tensor) else type(text).__name__
            raise ValueError(f"text embedding has shape {got}; model {self.name!r} takes (L, {td})")
        if text.shape[0] > L_max:
            raise ValueError(f"text embedding has {text.shape[0]} tokens; model {self.name!r} takes at most {L_max}")
        padded = pad_text([text.float()], L_max)  # (1, text_len, text_dim)
        return self.net.text_context(padded.to(self.device, self.dtype))[0]  # (text_len, D)

    @torch.no_grad()
    def prefill(
        self,
        latents: torch.Tensor | Sequence[torch.Tensor],
        actions: torch.Tensor,
        first_step: int,
        events: Sequence[str] | None = None,
        resume: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
        text: torch.Tensor | None = None,
    ) -> DiTState:
        """A session's state from its steps ``first_step .. first_step + T - 1``: ``latents`` (T
        tensors (C, f, h, w), f = 1 for step 0 and chunk_frames after, stacked when they agree),
        ``actions`` (T, A), ``resume`` (T,) their ``resume_data`` (see the module docstring), ``text``
        the session's prompt embedding. Raises StateMemoryFull when the page pool is full."""
        o = self.options
        T = len(latents)
        if T < 1:
            raise ValueError("prefill needs at least one step, got 0")
        fs = int(first_step)
        if fs < 0:
            raise ValueError(f"first_step must be >= 0, got {first_step!r}")
        for i in range(T):
            n = len(o.step_frames(fs + i))
            z = latents[i]
            if not isinstance(z, torch.Tensor) or tuple(z.shape) != (
                self.vae.latent_channels,
                n,
                o.latent_height,
                o.latent_width,
            ):
                raise ValueError(
                    f"latents[{i}] (step {fs + i}) must be ({self.vae.latent_channels}, {n}, {o.latent_height}, "
                    f"{o.latent_width}), got {tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__}"
                )
        acts = self._check_actions(actions, T)
        self._check_events(events, T)
        if resume is not None and len(resume) != T:
            raise ValueError(f"got {T} latents and {len(resume)} resume entries; they must match")
        with self._lock:
            state = self.pool.new_state(self.device, self.dtype)
            try:
                state.text = self._text_context(text)
                self._rebuild(state, [latents[i] for i in range(T)], acts, fs, resume)
            except BaseException:
                state._release()
                raise
            return state

    def _rebuild(
        self,
        state: DiTState,
        latents: list[torch.Tensor],
        actions: torch.Tensor,
        fs: int,
        resume: Sequence[Mapping[str, torch.Tensor] | None] | None,
    ) -> None:
        o, pool = self.options, self.pool.ensure(self.device, self.dtype)
        T = len(latents)
        res = list(resume) if resume is not None else [None] * T
        for i in range(T):
            for f in o.step_frames(fs + i):
                state.frame_actions[f] = actions[i]
        # keys/values kept in the resume data, per latent frame: (layers, 2, tokens, heads, head_dim)
        kept: dict[int, torch.Tensor] = {}
        page_shape = tuple(pool.kv.shape[:2]) + tuple(pool.kv.shape[3:])
        for i, r in enumerate(res):
            if r is None:
                continue
            if "sink" in r:
                for j in range(r["sink"].shape[2]):
                    kept.setdefault(j, r["sink"][:, :, j])
            if "kv" in r:
                for j, f in enumerate(o.step_frames(fs + i)):
                    kept[f] = r["kv"][:, :, j]
        for f, kv in kept.items():
            if tuple(kv.shape) != page_shape:
                raise ValueError(
                    f"resume data of frame {f} has shape {tuple(kv.shape)}; this model's pages are {page_shape}"
                )
        kept = {f: kv for f, kv in kept.items() if kv.dtype == pool.dtype}  # another dtype: recompute
        # the sink frames made before the window, then the window's steps in order
        state.next_frame = o.step_frames(fs).start
        before = [f for f in sorted(kept) if f < state.next_frame and f < o.sink_frames]
        self._write_pages(state, before, kept, state.next_frame)
        for i in range(T):
            frames = o.step_frames(fs + i)
            if all(f in kept for f in frames):
                self._write_pages(state, list(frames), kept, frames.stop)
            else:  # not kept (step 0, or a writer without resume data): commit it again
                batch = self.infer.batch([state], [frames.start], len(frames), [state.frame_actions])
                self.infer.commit(batch, pool, latents[i][None].to(self.device))
                state.add(frames, frames.stop, o, self.action_lookback)
        state.last_step = fs + T - 1
        # the decode cache after the newest step's frames: stored, or decoded again from the latents
        vae_part = {k[4:]: v for k, v in (res[-1] or {}).items() if k.startswith("vae.")}
        H = self.vae.history_frames
        window = torch.cat([z.float() for z in latents], dim=1)[None]  # (1, C, frames, h, w)
        if vae_part:
            state.vae = DecodeCache.from_tensors(vae_part, self.vae.device)
        elif fs == 0:  # from frame 0: exactly the cache the session carried
            state.vae = self.vae.new_cache()
            self.vae.decode_float(window, [state.vae])
        elif window.shape[2] >= H:  # the decoder forgets: its last H frames give the cache exactly
            state.vae = self.vae.rebuild_cache(window[:, :, -H:], state.next_frame - H)
        else:  # too few frames (a window cut short): close, not bitwise
            state.vae = self.vae.new_cache()
            self.vae.decode_float(window, [state.vae])
        state.decoded_step = state.last_step

    def _write_pages(self, state: DiTState, frames: list[int], kept: dict[int, torch.Tensor], next_frame: int) -> None:
        pool = self.pool.pool
        assert pool is not None
        for j, f in enumerate(frames):
            pool.kv[:, :, state.spare[j]] = kept[f].to(pool.device)
        state.add(frames, next_frame, self.options, self.action_lookback)

    # --- step --------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(
        self,
        states: list[DiTState],
        actions: torch.Tensor,
        seeds: Sequence[int],
        steps: Sequence[int],
        guidance: float | None = None,
        events: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """One chunk per session: (N, C, chunk_frames, h, w) float32 CPU latents; each state's cache
        advances (the chunk committed, old frames evicted). ``steps[i]`` must be
        ``state_step(states[i]) + 1``; its noise depends on (seeds[i], steps[i]) only. ``guidance`` is
        accepted and ignored (distilled models run without CFG)."""
        n = len(states)
        if n == 0:
            raise ValueError("step needs at least one session, got an empty batch")
        seeds, steps = [int(s) for s in seeds], [int(s) for s in steps]
        if len(seeds) != n or len(steps) != n:
            raise ValueError(f"got {n} states, {len(seeds)} seeds and {len(steps)} steps; they must match")
        acts = self._check_actions(actions, n)
        self._check_events(events, n)
        o = self.options
        C, cf = self.vae.latent_channels, o.chunk_frames
        shape = (C, cf, o.latent_height, o.latent_width)
        with self._lock:
            pool = self.pool.check(states)
            for i, (st, s) in enumerate(zip(states, steps)):
                if s != st.last_step + 1:
                    raise ValueError(f"steps[{i}] = {s}, but the state is at step {st.last_step}")
            out = torch.empty(n, *shape)
            # sessions with and without a text context run apart (cross-attention or none); on CPU
            # each session runs alone (see ``_alone``)
            split = (
                [i for i in range(n) if states[i].text is not None],
                [i for i in range(n) if states[i].text is None],
            )
            for idx in [[i] for g in split for i in g] if self._alone else [g for g in split if g]:
                group = [states[i] for i in idx]
                firsts = [st.next_frame for st in group]
                for st, i, f0 in zip(group, idx, firsts):
                    for f in range(f0, f0 + cf):
                        st.frame_actions[f] = acts[i]
                batch = self.infer.batch(group, firsts, cf, [st.frame_actions for st in group])
                passes = len(o.timesteps)
                noise = torch.stack(
                    [chunk_noise(seeds[i], steps[i], passes, shape) for i in idx], dim=1
                )  # (passes, B, C, f, h, w)
                x0 = self.infer.generate(batch, pool, noise)
                for st, i, f0 in zip(group, idx, firsts):
                    st.add(range(f0, f0 + cf), f0 + cf, o, self.action_lookback)
                    st.last_step = steps[i]
                out[idx] = x0.float().cpu()
            self.last_step_attention = last_decode()
            return out

    # --- exact resume ------------------------------------------------------------------------------------------

    @torch.no_grad()
    def resume_data(self, state: DiTState) -> dict[str, torch.Tensor] | None:
        """What an exact ``prefill`` needs beyond the latents, on the CPU: ``"kv"`` the newest step's
        frames' keys/values (layers, 2, frames, tokens, heads, head_dim) in the model dtype; every
        ``context_frames - 1`` steps ``"sink"``, the sink frames' (so that every window the engine
        keeps holds them); ``"vae.*"`` the decode cache after the step's frames (option
        ``decode_cache: store``, the default; so: after ``decode_step``). None with the option
        ``exact_resume: false``."""
        o = self.options
        if not o.exact_resume:
            return None
        with self._lock:
            pool = self.pool.check([state])
            if o.decode_cache == "store" and state.decoded_step != state.last_step:
                raise RuntimeError(
                    f"resume_data of a state at step {state.last_step} whose frames were decoded up to step "
                    f"{state.decoded_step}: call decode_step first"
                )
            frames = list(o.step_frames(state.last_step))
            pages = torch.tensor([state.page_of(f) for f in frames], device=pool.device)
            out = {"kv": pool.kv[:, :, pages].cpu().clone()}  # (layers, 2, f, tokens, heads, head_dim)
            s = state.last_step
            if o.sink_frames and s > 0 and s % self.context_steps == 0:
                sink = [f for f in state.frames if f < o.sink_frames]
                idx = torch.tensor([state.page_of(f) for f in sink], device=pool.device, dtype=torch.long)
                out["sink"] = pool.kv[:, :, idx].cpu().clone()
            if o.decode_cache == "store":
                for k, v in state.vae.to_tensors().items():
                    out[f"vae.{k}"] = v.detach().cpu().clone()
            return out
