"""The scroll-canvas world model: next frames in pixel space, remembered in world coordinates.

One step, for a batch of sessions (shapes per session)::

    prev frame (3, H, W) --> scroll head --> dx, the view's shift in pixels (one of 2*max_scroll+1)
    canvas window around the view (3, H, W + 2m)  --read at cam + dx-->  base A (3, H, W)
        columns the previous frame covered: the previous frame, shifted
        columns it did not cover: what the canvas remembers there, or 0 (never seen)
    [A, frame before prev aligned, known/fresh masks, world prior, time prior, coords, action]
        --> U-Net (FiLM on action + event + dx; self-attention at 1/4 resolution)
        --> per pixel: one choice among "copy A from offset (dy, dx)" (65 offsets, (0, 0) =
            unchanged) and "draw" (A + a predicted delta)
    next frame = each pixel's choice, rounded to 8 bits; written into the canvas at cam + dx

- **Copy, don't repaint**: a pixel that stays, or that moves (the player walking or jumping, rain
  falling, the background closing over where the player stood), is an exact copy of a pixel of A;
  only what appears from nowhere (a muzzle flash, never-seen columns, the light changing) is
  drawn. So a still world is free and small sprites stay sharp over long rollouts.
- **Memory**: the canvas is a per-session image of the world in world coordinates (the first
  frame's left edge is world x = 0). Walking back brings back exactly what was seen there.
- **Learned priors**: a world-coordinate map (``world_channels`` x H x canvas width, e.g. where
  stars hang at night) and a screen-space map per step phase (``time_period``, e.g. where rain
  streaks fall at a given step) are parameters, read at the view's position / the frame's step.
- **Events** (free text, "night falls") are embedded by the byte-level event encoder and condition
  every block, so the text in force may be repeated every step.
- **Player layer** (``player_layer``): copying pixel by pixel, a small sprite that changes shape
  (a crouch, a jump, a flash) breaks into pieces and never recovers. With the layer, the U-Net
  also says where the player's anchor (the sprite's bottom-centre pixel) is in the new frame (a
  heat map, argmax) and its pose there (8 classes: crouch x facing x flash); a lighting head (two
  small convolutions over the previous frame, its mean colours, the event) picks one of 4 lightings; the sprite is a learned template per
  (lighting, pose) with a learned mask per pose, pasted over the copied frame. Every frame shows a
  whole sprite, so the next step reads a clean one.
- **Player-free canvas** (``background_canvas``, with the player layer): the canvas keeps each
  frame as it was before the sprite was pasted, so a place the player walked in front of comes back
  whole when the view returns; the copies start from that player-free base, while the U-Net still
  sees the previous frame (player included) where it stood.

The model is deterministic: ``seeds`` and ``guidance`` are accepted and ignored, and ``sample_steps``
is 1 (a single pass per frame). Latents are the frame itself plus the view's world position:
``(3 * H * W + 1,)`` float32, values k/255, then the camera x -- so a session's state can be
rebuilt from its frames in Redis: the newest canvas snapshot (``resume_data``, every
``context_frames - 1`` steps) with the frames after it pasted, bitwise the warm state. With
``background_canvas`` the frame is the player-free one and 4 more values follow the camera: the
sprite's anchor row and column, its pose and lighting (``decode`` pastes it; ``encode`` of an outside
frame says "no sprite", anchor row -1, and keeps the frame whole).

Modules by job: :mod:`.config` (``CanvasConfig``), :mod:`.blocks` (the network's parts),
:mod:`.network` (``CanvasNet``, one step for a batch, shared by the served step and training) and
this one: the served model (``CanvasWorldModel``) and its per-session state (``CanvasState``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from worldserve.common.caption import EVENTS
from worldserve.common.pretrained import CONFIG_FILE, WEIGHTS_FILE, read_folder
from worldserve.dynamics.attention.backend import resolve_backend
from worldserve.dynamics.interface import ActionSpace, ModelInfo, Runtime
from worldserve.dynamics.layers.actions import check_actions, check_events

from .blocks import paste_sprites, quantize, shift_view, sprite_cells, window_cols
from .config import KIND, CanvasConfig
from .network import CanvasNet, Prediction, save_net

__all__ = [
    "CONFIG_FILE",
    "KIND",
    "WEIGHTS_FILE",
    "CanvasConfig",
    "CanvasNet",
    "CanvasState",
    "CanvasWorldModel",
    "Prediction",
    "paste_sprites",
    "quantize",
    "save_net",
    "shift_view",
    "sprite_cells",
    "window_cols",
]


# --------------------------------------------------------------------------------------------------
# Per-session state (serving)


@dataclass
class CanvasState:
    """One session: its canvas (uint8 world memory), where the view is, the last two frames."""

    canvas: torch.Tensor  # (3, H, Wc) uint8
    valid: torch.Tensor  # (Wc,) bool: column ever seen
    cam: int  # world x of the view's left edge (newest frame)
    prev: torch.Tensor  # (3, H, W) uint8: the newest frame, as served
    prev2: torch.Tensor  # (3, H, W) uint8: the frame before it
    prev_cam: int  # its world x
    step: int  # absolute step of the newest frame
    released: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return self.canvas.numel() + self.valid.numel() + self.prev.numel() + self.prev2.numel()


# --------------------------------------------------------------------------------------------------
# The served model


class CanvasWorldModel:
    """Implements :class:`~worldserve.dynamics.interface.DynamicsModelProtocol` around a :class:`CanvasNet`."""

    def __init__(
        self,
        config: CanvasConfig | None = None,
        net: CanvasNet | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        self.config = config or CanvasConfig()
        # parameters and the frame arithmetic stay float32 (8-bit frames are copied exactly); a
        # lower dtype runs the U-Net under autocast on CUDA
        self.net = (net or CanvasNet(self.config)).to(device=device, dtype=torch.float32).eval()
        self.device = torch.device(device)
        self.dtype = dtype if self.device.type == "cuda" else torch.float32
        self.net.amp_dtype = None if self.dtype == torch.float32 else self.dtype
        self._event_cache: dict[str, torch.Tensor] = {}

    # --- loading ----------------------------------------------------------------------------------

    @classmethod
    def random(cls, config: CanvasConfig | None = None, seed: int = 0, **kw) -> CanvasWorldModel:
        torch.manual_seed(seed)
        return cls(config, **kw)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> CanvasWorldModel:
        data, state = read_folder(path)
        cfg = CanvasConfig.from_dict(data)
        net = CanvasNet(cfg)
        net.load_state_dict(state, strict=True)
        return cls(cfg, net, device=device, dtype=dtype)

    def save_pretrained(self, path: str | Path) -> None:
        save_net(path, self.config, self.net)

    # --- the interface: info, runtime, actions, events ---------------------------------------------

    @property
    def info(self) -> ModelInfo:
        c = self.config
        return ModelInfo(
            frame_width=c.frame_width,
            frame_height=c.frame_height,
            action_space=self.action_space,
            context_frames=c.context_frames,
            sample_steps=1,
            default_guidance=0.0,
            events_supported=True,
            event_max_bytes=c.event_max_bytes,
            events=c.events or tuple(EVENTS),
            parameters=sum(p.numel() for p in self.net.parameters()),
            extra={"latent_shape": (c.latent_size,), "canvas_width": c.canvas_width, "kind": c.kind},
        )

    @property
    def runtime(self) -> Runtime:
        backend = resolve_backend(device=self.device, dtype=self.dtype, head_dim=self.config.head_dim)
        return Runtime(
            device=str(self.device),
            dtype=str(self.dtype).removeprefix("torch."),
            attention_backend=backend,
            decode_kernel="flash_attention" if backend == "triton" else "sdpa",
        )

    @property
    def events_supported(self) -> bool:
        return True

    @property
    def action_space(self) -> ActionSpace:
        c = self.config
        return ActionSpace(keys=c.keys, mouse_axes=c.mouse_axes, discrete_actions=2 ** len(c.keys))

    def action_vector(self, keys: Sequence[str], mouse: Mapping[str, float] | None = None) -> torch.Tensor:
        return self.action_space.vector(keys, mouse)

    def null_action(self) -> torch.Tensor:
        return torch.zeros(self.config.action_dim, dtype=torch.float32)

    def _check_actions(self, actions: torch.Tensor, n: int) -> torch.Tensor:
        return check_actions(actions, n, len(self.config.keys), self.config.action_dim)

    def _check_events(self, events: Sequence[str] | None, n: int) -> list[str]:
        return check_events(events, n, self.config.event_max_bytes) or [""] * n

    def _event_embed(self, texts: list[str]) -> torch.Tensor:
        """(n, cond_dim); each distinct text embedded once per process (the weights never change),
        by itself: its vector does not depend on the texts embedded beside it."""
        missing = sorted({t for t in texts if t and t not in self._event_cache})
        if missing:
            emb = self.net.events(missing, alone=True)  # each text alone: not what else was missing
            for t, e in zip(missing, emb):
                self._event_cache[t] = e
        zero = torch.zeros(self.config.cond_dim, device=self.device, dtype=torch.float32)
        return torch.stack([self._event_cache[t] if t else zero for t in texts])

    # --- latents ----------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, latent_size) float32: the frame in [0, 1] (k/255), then camera x 0
        (a frame handed in from outside is a first frame: world x 0 is its left edge); with
        ``background_canvas`` then no sprite (anchor row -1: above the frame) -- the frame is kept
        whole, player included, and the first step paints the player out of the canvas."""
        H, W = self.config.frame_height, self.config.frame_width
        if frames.dim() != 4 or tuple(frames.shape[1:]) != (H, W, 3):
            raise ValueError(f"frames must be (N, {H}, {W}, 3) uint8, got {tuple(frames.shape)}")
        x = frames.permute(0, 3, 1, 2).reshape(frames.shape[0], -1).float() / 255.0
        tail = [0.0, -1.0, 0.0, 0.0, 0.0] if self.config.background_canvas else [0.0]
        return torch.cat([x, torch.tensor(tail).expand(frames.shape[0], -1)], 1)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, latent_size) -> (N, H, W, 3) uint8 (with ``background_canvas`` the sprite pasted)."""
        frames, _, sprite = self._unpack(latents)
        return self._shown(frames, sprite).permute(0, 2, 3, 1).cpu().contiguous()

    def _unpack(self, latents: torch.Tensor) -> tuple[torch.Tensor, list[int], torch.Tensor | None]:
        """(N, latent_size) -> the canvas's frames (N, 3, H, W) uint8 (player-free with
        ``background_canvas``), the camera x of each, and with ``background_canvas`` the sprites
        (N, 4) long: anchor row, anchor column, pose, lighting."""
        c = self.config
        H, W = c.frame_height, c.frame_width
        if latents.dim() != 2 or latents.shape[-1] != c.latent_size:
            raise ValueError(f"latents must be (N, {c.latent_size}), got {tuple(latents.shape)}")
        latents = latents.detach().float().cpu()
        bg = torch.round(latents[:, : 3 * H * W].reshape(-1, 3, H, W) * 255.0).clamp(0, 255).to(torch.uint8)
        cams = [int(round(float(v))) for v in latents[:, 3 * H * W]]
        if not c.background_canvas:
            return bg, cams, None
        sprite = torch.round(latents[:, 3 * H * W + 1 :]).long()  # (N, 4)
        sprite[:, 0].clamp_(-1, H - 1)  # an anchor the model can give (row -1: no sprite)
        sprite[:, 1].clamp_(0, W - 1)
        sprite[:, 2].clamp_(0, c.poses - 1)
        sprite[:, 3].clamp_(0, c.lightings - 1)
        return bg, cams, sprite

    @torch.no_grad()
    def _shown(self, frames: torch.Tensor, sprite: torch.Tensor | None) -> torch.Tensor:
        """The served frames (N, 3, H, W) uint8: the canvas's frames with their sprites pasted (if any)."""
        if sprite is None:
            return frames
        shown = self.net.paste(frames.to(self.device, torch.float32) / 255.0, sprite.to(self.device))
        return torch.round(shown * 255.0).clamp(0, 255).to(torch.uint8).cpu()

    # --- state ------------------------------------------------------------------------------------

    def _clamp_cam(self, cam: int) -> int:
        c = self.config
        return max(-c.canvas_origin, min(c.canvas_width - c.canvas_origin - c.frame_width, cam))

    @property
    def snapshot_every(self) -> int:
        """Steps between two canvas snapshots in ``resume_data``: ``context_frames - 1``, so every
        window the engine hands ``prefill`` (its last ``context_frames - 1`` frames) holds one."""
        return max(1, self.config.context_frames - 1)

    def resume_data(self, state: CanvasState) -> dict[str, torch.Tensor] | None:
        """Every ``snapshot_every`` steps, the canvas and its seen columns (``{"canvas": (3, H,
        canvas_width) uint8, "valid": (canvas_width,) bool}``, 197 KB at the shipped size); None
        between. The canvas remembers every place the session has seen, back to step 0, which the
        last frames alone cannot rebuild; the snapshot plus the frames after it can, exactly."""
        if state.released:
            raise ValueError("the state was released")
        if state.step <= 0 or state.step % self.snapshot_every:
            return None
        return {"canvas": state.canvas.clone(), "valid": state.valid.clone()}

    def prefill(
        self,
        latents: torch.Tensor,
        actions: torch.Tensor,
        first_step: int,
        events: Sequence[str] | None = None,
        resume: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
    ) -> CanvasState:
        """Rebuild a session from its last T frames: each is pasted into the canvas where it was seen.

        Exact (bitwise the state the session had when stepped warm) when the frames start at step
        0 or ``resume`` (T,) holds a canvas snapshot (``resume_data``) of one of them: the canvas is
        the newest snapshot's, with the frames after it pasted. Otherwise the canvas holds only
        what these frames saw (a place seen before them comes back blank)."""
        c = self.config
        if latents.dim() != 2 or latents.shape[0] < 1:
            raise ValueError(f"latents must be (T, {c.latent_size}) with T >= 1, got {tuple(latents.shape)}")
        if resume is not None and len(resume) != latents.shape[0]:
            raise ValueError(f"got {latents.shape[0]} latents and {len(resume)} resume entries; they must match")
        self._check_actions(actions, latents.shape[0])
        self._check_events(events, latents.shape[0])
        canvas = torch.zeros(3, c.frame_height, c.canvas_width, dtype=torch.uint8)
        valid = torch.zeros(c.canvas_width, dtype=torch.bool)
        kept, cams, sprite = self._unpack(latents)
        cams = [self._clamp_cam(x) for x in cams]
        paste_from = 0
        for i in reversed(range(len(resume or ()))):
            snap = resume[i] if resume is not None else None
            if snap is not None and "canvas" in snap and "valid" in snap:
                if snap["canvas"].shape != canvas.shape or snap["valid"].shape != valid.shape:
                    raise ValueError(
                        f"resume[{i}]: a canvas {tuple(snap['canvas'].shape)} does not fit this model's "
                        f"{tuple(canvas.shape)}"
                    )
                canvas = snap["canvas"].to(torch.uint8).clone()
                valid = snap["valid"].to(torch.bool).clone()
                paste_from = i + 1
                break
        for f, cam in zip(kept[paste_from:], cams[paste_from:]):
            x0 = cam + c.canvas_origin
            canvas[:, :, x0 : x0 + c.frame_width] = f
            valid[x0 : x0 + c.frame_width] = True
        i2 = max(len(cams) - 2, 0)
        shown = self._shown(kept[i2:], None if sprite is None else sprite[i2:])  # the last two frames as served
        return CanvasState(
            canvas,
            valid,
            cams[-1],
            shown[-1].clone(),
            shown[0].clone(),
            cams[i2],
            int(first_step) + latents.shape[0] - 1,
        )

    def state_nbytes(self, state: CanvasState) -> int:
        return state.nbytes

    def release_state(self, state: CanvasState) -> None:
        if not state.released:
            state.released = True
            state.canvas = state.canvas.new_empty(0)
            state.valid = state.valid.new_empty(0)
            state.prev = state.prev.new_empty(0)
            state.prev2 = state.prev2.new_empty(0)

    def state_step(self, state: CanvasState) -> int:
        return state.step

    # --- the step ---------------------------------------------------------------------------------

    @torch.no_grad()
    def step(
        self,
        states: list[CanvasState],
        actions: torch.Tensor,
        seeds: Sequence[int],
        steps: Sequence[int],
        guidance: float | None = None,
        events: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """One new frame per session (deterministic: ``seeds`` and ``guidance`` do not matter)."""
        c = self.config
        n = len(states)
        if n == 0:
            return torch.zeros(0, c.latent_size)
        a = self._check_actions(actions, n)
        texts = self._check_events(events, n)
        if len(seeds) != n or len(steps) != n:
            raise ValueError(f"seeds and steps must hold {n} values each, got {len(seeds)} and {len(steps)}")
        for i, s in enumerate(states):
            if s.released:
                raise ValueError(f"states[{i}] was released")
            if int(steps[i]) != s.step + 1:
                raise ValueError(f"steps[{i}] = {steps[i]} but the session's newest frame is step {s.step}")
        # On CPU each session runs the network alone, on inputs of its own: a batched convolution or
        # matrix product rounds differently with the batch size (measured: the scroll head's
        # convolution at 16 frames against 1), and a session's frames must not depend on who shares
        # its batch (resumed on another replica after a cache miss, it meets other sessions there).
        # The engine's batch-invariant mode (the CPU default) did so already, one call per session;
        # 16 sessions in one call now take ~1.2-1.35x the CPU time of one batched pass (measured at
        # 64x64). CUDA keeps the batch.
        groups = [[i] for i in range(n)] if self.device.type == "cpu" else [list(range(n))]
        parts = [
            self._predict([states[i] for i in g], a[g], [texts[i] for i in g], [int(steps[i]) for i in g])
            for g in groups
        ]
        frames = torch.cat([p[0] for p in parts])  # (n, 3, H, W) as served
        bgs = torch.cat([p[1] for p in parts])  # what the canvas keeps
        dxs = [d for p in parts for d in p[2]]
        sprites = [p[3] for p in parts if p[3] is not None]  # with background_canvas: (k, 4) each
        W = c.frame_width
        for s, fr, bg, d in zip(states, frames, bgs, dxs):
            new_cam = self._clamp_cam(s.cam + int(d))
            s.prev2, s.prev = s.prev, fr
            s.prev_cam = s.cam
            s.cam = new_cam
            x1 = new_cam + c.canvas_origin
            s.canvas[:, :, x1 : x1 + W] = bg
            s.valid[x1 : x1 + W] = True
            s.step += 1
        tail = torch.tensor([[float(s.cam)] for s in states])
        if c.background_canvas:
            tail = torch.cat([tail, torch.cat(sprites).float()], 1)
        return torch.cat([bgs.reshape(n, -1).float() / 255.0, tail], 1)

    def _predict(
        self, states: list[CanvasState], a: torch.Tensor, texts: list[str], steps: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor, list[int], torch.Tensor | None]:
        """The network's step for ``states`` (one batch): the new frames as served (k, 3, H, W)
        uint8, what the canvas keeps of them (the player-free frames with ``background_canvas``),
        the views' shifts, and with ``background_canvas`` the sprites (k, 4) on the CPU."""
        c = self.config
        m, W = c.max_scroll, c.frame_width
        dev = self.device
        wins, wvalid, prev, prev2, cams, off2 = [], [], [], [], [], []
        for s in states:
            x0 = s.cam + c.canvas_origin
            lo, hi = x0 - m, x0 + W + m
            win = torch.zeros(3, c.frame_height, W + 2 * m, dtype=torch.uint8)
            wv = torch.zeros(W + 2 * m, dtype=torch.bool)
            a0, b0 = max(lo, 0), min(hi, c.canvas_width)
            win[:, :, a0 - lo : b0 - lo] = s.canvas[:, :, a0:b0]
            wv[a0 - lo : b0 - lo] = s.valid[a0:b0]
            wins.append(win)
            wvalid.append(wv)
            prev.append(s.prev)
            prev2.append(s.prev2)
            cams.append(s.cam)
            off2.append(s.cam - s.prev_cam)
        f = lambda xs: torch.stack(xs).to(dev, torch.float32) / 255.0
        cam_t = torch.tensor(cams, device=dev)
        pred = self.net.predict(
            f(prev),
            f(prev2),
            torch.tensor(off2, device=dev),
            f(wins),
            torch.stack(wvalid).to(dev, torch.float32),
            cam_t,
            a.to(dev, torch.float32),
            self._event_embed(texts),
            torch.tensor(steps, device=dev),
        )
        u8 = lambda x: torch.round(x * 255.0).clamp(0, 255).to(torch.uint8).cpu()
        frames = u8(pred.frame)
        bgs = u8(pred.background) if c.background_canvas else frames
        sprite = pred.sprite.cpu() if c.background_canvas and pred.sprite is not None else None
        return frames, bgs, pred.dx.cpu().tolist(), sprite
