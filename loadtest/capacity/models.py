"""The served models at a frame size: which can run there, the model itself, one step's bytes.

The served models are the dynamics application's ``models`` in deploy/serve/worldserve.yaml (what
``worldserve up`` serves by default). At the size a model was trained at, it is loaded exactly as
a replica loads it (registry, shipped weights). At another size the same config with the frame
size replaced is built with random weights (seed 0): a model's learned position tables and priors
are sized per frame, so the shipped weights exist only at their size; FLOPs, bytes and speed do
not depend on the weights' values (PNG frames do: see :func:`game_frames`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SERVE_YAML = REPO / "deploy" / "serve" / "worldserve.yaml"

# (height, width) of the frame sizes in the table, written HxW
SIZES: dict[str, tuple[int, int]] = {
    "64x64": (64, 64),
    "360x640": (360, 640),
    "480x832": (480, 832),
    "720x1280": (720, 1280),
}
SIZE_ALIASES = {"720p": "720x1280", "360p": "360x640", "480p": "480x832"}


class CapacityError(ValueError):
    """A bad command-line value; ``str()`` is one line naming it."""


class CannotRun(ValueError):
    """A model that cannot run at a frame size; ``str()`` says why."""


def parse_size(text: str) -> tuple[str, tuple[int, int]]:
    """``"HxW"`` (or 720p / 480p / 360p) -> (its label, (height, width)); CapacityError naming it."""
    t = SIZE_ALIASES.get(text.strip().lower(), text.strip().lower())
    h, sep, w = t.partition("x")
    if not sep or not h.isdigit() or not w.isdigit() or int(h) < 1 or int(w) < 1:
        raise CapacityError(f"--size {text!r}: expected HEIGHTxWIDTH in pixels, e.g. 360x640 (or 720p)")
    return f"{int(h)}x{int(w)}", (int(h), int(w))


def served_config(yaml_path: Path = SERVE_YAML) -> Any:
    """The dynamics application's Config as the serve YAML sets it (its ``args``)."""
    import yaml

    from worldserve.common.config import Config

    doc = yaml.safe_load(yaml_path.read_text())
    app = next(a for a in doc["applications"] if a["name"] == "dynamics")
    args = dict(app.get("args") or {})
    names = {f.name for f in dataclasses.fields(Config)}
    return Config.load({k: v for k, v in args.items() if k in names} | {"device": "cpu"}, env={})


@dataclass(frozen=True)
class ServedModel:
    name: str
    kind: str
    tier: str
    spec: Any  # worldserve.common.config.ModelSpec
    path: str | None  # its weights folder (None: random)
    config: dict[str, Any]  # its config.json (the trained size's)

    @property
    def trained_size(self) -> tuple[int, int]:
        return int(self.config["frame_height"]), int(self.config["frame_width"])


def served_models(config: Any) -> list[ServedModel]:
    from worldserve.common.config import folder_kind, model_path

    out = []
    for spec in config.models:
        path = model_path(spec.path or config.dynamics_model_path, "dynamics")
        kind = spec.kind or folder_kind(path, "world_model")
        cfg: dict[str, Any] = {}
        if path is not None:
            cfg = json.loads((Path(path) / "config.json").read_text())
        out.append(ServedModel(spec.name, kind, spec.tier, spec, path, cfg))
    return out


DIT_NAME = "causal-dit-1.3b"


def dit_model() -> ServedModel:
    """The causal video DiT kind at Wan2.1-T2V-1.3B size (loadtest.dit_bench's real-size run: chunks
    of 3 latent frames, 4 denoising steps, 3 sink + 15 recent latent frames, Wan2.1's VAE). Not
    served by default and not runnable on a CPU at that size: its rows are FLOP counts and declared
    state shapes (the GPU check's part 5 measures it)."""
    from loadtest.dit_bench_common import WAN21_T2V_1_3B

    return ServedModel(DIT_NAME, "causal_dit", "not served by default", None, None, dict(WAN21_T2V_1_3B))


def config_at(m: ServedModel, hw: tuple[int, int]) -> Any:
    """The model's config at frame size ``hw``; CannotRun with the config's own reason when the
    architecture does not allow that size."""
    if m.kind == "causal_dit":
        from loadtest.dit_bench_common import REAL_OPTIONS
        from worldserve.dynamics.models.causal_dit import CausalDiTOptions
        from worldserve.dynamics.models.causal_dit.config import WanTransformerConfig

        cfg = WanTransformerConfig(**m.config)
        cell = 8 * cfg.patch_size[1]  # Wan's VAE (x8) times the transformer's patch
        for name, v in (("height", hw[0]), ("width", hw[1])):
            if v % cell:
                raise CannotRun(
                    f"frame {name} {v} is not a multiple of {cell} (VAE x8, then {cfg.patch_size[1]}x{cfg.patch_size[2]} patches)"
                )
        options = CausalDiTOptions(**(REAL_OPTIONS | {"latent_height": hw[0] // 8, "latent_width": hw[1] // 8}))
        return cfg, options
    d = dict(m.config) | {"frame_height": hw[0], "frame_width": hw[1]}
    try:
        if m.kind == "world_model":
            from worldserve.dynamics.models.transformer import WorldModelConfig

            if m.spec.sample_steps:
                d["sample_steps"] = m.spec.sample_steps
            return WorldModelConfig.from_dict(d)
        if m.kind == "scroll_canvas":
            from worldserve.dynamics.models.canvas.config import CanvasConfig

            cfg = CanvasConfig.from_dict(d)
            if (hw[0] // 4) % 2 or (hw[1] // 4) % 2:  # the scroll head's flattened 1/8 grid
                raise ValueError(f"frame size must be a multiple of 8 (the scroll head), got {hw[0]}x{hw[1]}")
            return cfg
    except ValueError as e:
        msg = str(e)
        if m.kind == "scroll_canvas" and "canvas_origin" in msg:
            msg += f" (the canvas is {d.get('canvas_width')} columns wide)"
        raise CannotRun(msg) from None
    raise CannotRun(f"kind {m.kind!r} has no capacity model")


def build(m: ServedModel, hw: tuple[int, int]) -> tuple[Any, bool]:
    """(the model on the CPU, whether it carries the trained weights)."""
    cfg = config_at(m, hw)
    if hw == m.trained_size and m.path is not None:
        from worldserve.common.config import Config
        from worldserve.dynamics.registry import load_model

        return load_model(m.spec, Config.load({"device": "cpu"}, env={}), "cpu"), True
    if m.kind == "world_model":
        from worldserve.dynamics.models.transformer import WorldModel

        return WorldModel.random(cfg, seed=0).to_serving("cpu"), False
    from worldserve.dynamics.models.canvas.model import CanvasWorldModel

    return CanvasWorldModel.random(cfg, seed=0), False


# --------------------------------------------------------------------------------------------------
# frames and the window a cache miss prefills from


def game_frames(n: int, hw: tuple[int, int]) -> np.ndarray:
    """(n, H, W, 3) uint8: the shipped platformer walking right, resized (bilinear) to ``hw`` when
    that is not its 64x64 (what a trained model at that size would show, near enough for PNG sizes;
    a random-weight model's frames are noise, which no trained model serves)."""
    from PIL import Image

    from worldserve.worlds.platformer import Game, parse_caption

    game = Game(parse_caption("a red door on the left, a blue box on the right, grass, day"), seed=1)
    frames = [game.reset()] + [game.step(["right"] if i % 4 else ["right", "jump"]) for i in range(1, n)]
    if frames[0].shape[:2] == hw:
        return np.stack(frames)
    return np.stack([np.asarray(Image.fromarray(f).resize((hw[1], hw[0]), Image.BILINEAR)) for f in frames])


def window(model: Any, frames: np.ndarray) -> list:
    """(step, action, latent, resume) of steps 0..W-1 (W = context_frames - 1): the engine's
    cache-miss window (engine_bench's, with game frames)."""
    import torch

    W = max(1, model.info.context_frames - 1)
    lat = model.encode(torch.from_numpy(frames[:W]))
    return [(s, None if s == 0 else {"keys": ["right"]}, lat[s].numpy(), None) for s in range(W)]


# --------------------------------------------------------------------------------------------------
# one step's bytes


@dataclass(frozen=True)
class Payload:
    """What the engine hands ``SessionStore.append`` for one step of one session."""

    latent: bytes  # pack_array(latent)
    frame: bytes  # the PNG of the step's frame
    resume: bytes | None  # the model's resume data, packed (None: none at this step)
    resume_every: int  # steps between two resume data (1: every step)
    how: str  # "model step" or "declared shapes"

    def as_dict(self) -> dict[str, Any]:
        return dict(
            latent_bytes=len(self.latent),
            frame_png_bytes=len(self.frame),
            resume_bytes=len(self.resume or b""),
            resume_every=self.resume_every,
            source=self.how,
        )


def step_payload(model: Any, trained: bool, frames: np.ndarray, run_step: bool) -> Payload:
    """One step's bytes. ``run_step``: the engine's runner steps the model from a window of game
    frames (prefill -> step -> decode -> resume data) and the engine's own packing is applied;
    else from the model's declared shapes (latent: encode of a frame; resume: the state's page
    shape), for sizes where a CPU step takes too long."""
    import torch

    from worldserve.common.codec import pack_array
    from worldserve.dynamics.engine.output import OutputProcessor
    from worldserve.dynamics.interface import pack_resume

    every = int(getattr(model, "snapshot_every", 1))
    if run_step:
        from loadtest.engine_bench_sessions import _configure_pool, engine_parts
        from worldserve.common.codec import PNG
        from worldserve.dynamics.engine.runner import Runner
        from worldserve.dynamics.engine.state_cache import StateCache

        parts = engine_parts()
        win = window(model, frames)
        page = (model.info.extra or {}).get("page_bytes")
        if page:
            _configure_pool(model, int(page) * (model.info.context_frames + 1))
        cache = StateCache(model, 1 << 40)
        runner = Runner(model, cache, batch_invariant=True)
        job = parts.make_job(("t", "s"), len(win) - 1, 7, model.action_vector(["right"]), model.info.default_guidance)
        job.window = win
        runner.run([job])
        if job.error is not None:
            raise job.error
        try:
            png = OutputProcessor.encode_sync(job.rgb if trained else frames[len(win)], PNG)[0]
            if job.resume is None and every > 1 and len(win) % every:
                raise RuntimeError(f"step {len(win)} carries no resume data (snapshot every {every})")
            return Payload(pack_array(job.latent), png, job.resume, every, "model step")
        finally:
            if job.state is not None:
                model.release_state(job.state)
            cache.clear()
            cache.drain_releases()
    lat = model.encode(torch.from_numpy(frames[:1]))[0]
    png = OutputProcessor.encode_sync(frames[1], 1)[0]
    resume = None
    kind = (model.info.extra or {}).get("kind", "")
    if hasattr(model, "page_nbytes") and hasattr(model, "config") and hasattr(model.config, "n_layers"):
        c = model.config  # world_model: the newest frame's page, (n_layers, 2, F, heads, head_dim)
        # values like a real page's (noise to a compressor: zeros would compress to nothing)
        gen = torch.Generator().manual_seed(0)
        kv = torch.randn(c.n_layers, 2, c.frame_tokens, c.n_heads, c.head_dim, generator=gen).to(model.dtype)
        resume = pack_resume({"kv": kv})
    elif kind == "scroll_canvas":
        c = model.config
        resume = pack_resume(
            {
                # the canvas holds game pixels (the frames side by side), every column valid
                "canvas": _game_canvas(frames, c.frame_height, c.canvas_width),
                "valid": torch.ones(c.canvas_width, dtype=torch.bool),
            }
        )
    return Payload(pack_array(lat.numpy()), png, resume, every, "declared shapes")


def _game_canvas(frames: np.ndarray, height: int, width: int) -> Any:
    """(3, height, width) uint8: the game frames side by side (cycled), as a scrolled canvas holds."""
    import torch

    strip = np.concatenate([f[:height] for f in frames], axis=1)  # (H, n * W, 3)
    reps = -(-width // strip.shape[1])
    wide = np.concatenate([strip] * reps, axis=1)[:, :width]
    return torch.from_numpy(np.ascontiguousarray(wide.transpose(2, 0, 1)))


def state_bytes(model: Any, frames: np.ndarray) -> int:
    """One session's model state with a full window (engine_bench's measure)."""
    from loadtest.engine_bench_sessions import engine_parts, session_state_bytes

    return session_state_bytes(model, engine_parts(), lambda: window(model, frames))[0]


def cpu_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
