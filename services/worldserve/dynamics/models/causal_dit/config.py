"""The transformer's published config and the reader of a published transformer folder.

``WanTransformerConfig`` carries diffusers' ``WanTransformer3DModel`` field names and defaults
(diffusers 0.42.1, ``transformer/config.json`` of the ``*-Diffusers`` repositories) plus
``action_config``, the Matrix-Game 2.0 action-module config (``ActionConfig``). The original Wan
repository's ``config.json`` (``dim``, ``num_heads``, ``in_dim``, ...) maps onto the same fields
(``from_original_dict``).

``read_transformer_folder(folder)`` reads either layout (a single safetensors file or shards with
their ``*.safetensors.index.json``), renames original tensor names through ``keymap.py`` and checks
every expected tensor's presence and shape against the config; it never reads a pickle.

Unsupported published variants are refused by name: image-conditioned models (``image_dim``,
``added_kv_proj_dim``, original ``model_type`` i2v / flf2v / ti2v: they need a CLIP image input this
kind does not take), local attention (``window_size`` other than (-1, -1)), a temporal patch other
than 1, and an original ``qk_norm: false`` (diffusers' module always normalises q and k).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from worldserve.common.registry import ModelLoadError

from . import keymap

DIFFUSERS_CLASS_NAME = "WanTransformer3DModel"
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl")


def _int(source: str, name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{source}: {name} must be an int in [{lo}, {hi}], got {value!r}")
    return value


def _bool(source: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{source}: {name} must be true or false, got {value!r}")
    return value


def _ints(source: str, name: str, value: Any, n: int | None = None) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{source}: {name} must be a list of ints, got {value!r}")
    if n is not None and len(value) != n:
        raise ValueError(f"{source}: {name} must hold {n} ints, got {value!r}")
    return tuple(value)


def _unknown(source: str, cls: type, data: Mapping[str, Any], extra_ok: frozenset[str] = frozenset()) -> None:
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names and key not in extra_ok and not key.startswith("_"):
            raise ValueError(f"{source}: unknown config field {key!r} (known: {', '.join(sorted(names))})")


@dataclass(frozen=True)
class ActionConfig:
    """The action modules' config: Matrix-Game 2.0's ``action_config`` field names.

    Keyboard: ``keyboard_dim_in`` multi-hot keys per pixel frame; mouse: ``mouse_dim_in`` axes per
    pixel frame. A latent frame ``i`` sees the ``windows_size * vae_time_compression_ratio`` pixel
    frames before pixel frame ``vae_time_compression_ratio * i`` (pixel frames before 0 repeat
    frame 0), as Matrix-Game's module windows them.
    """

    blocks: tuple[int, ...] = ()
    """Indices of the transformer blocks that carry an action module."""
    enable_keyboard: bool = True
    enable_mouse: bool = True
    heads_num: int = 16
    """Heads of the keyboard cross-attention."""
    hidden_size: int = 128
    """Width of a pixel frame's keyboard embedding."""
    img_hidden_size: int = 1536
    """The transformer's token width (must equal num_attention_heads * attention_head_dim)."""
    keyboard_dim_in: int = 4
    keyboard_hidden_dim: int = 1024
    mouse_dim_in: int = 2
    mouse_hidden_dim: int = 1024
    mouse_qk_dim_list: tuple[int, ...] = (8, 28, 28)
    """Kept for config compatibility: our mouse branch has no temporal attention (see actions.py)."""
    patch_size: tuple[int, ...] = (1, 2, 2)
    qk_norm: bool = True
    qkv_bias: bool = False
    rope_dim_list: tuple[int, ...] = (8, 28, 28)
    """RoPE split of a keyboard head; the first entry rotates with the pixel-frame position."""
    rope_theta: float = 256.0
    vae_time_compression_ratio: int = 4
    windows_size: int = 3
    local_attn_size: int = 6
    """Kept for config compatibility: our module attends within one latent frame's window."""

    @property
    def window_pixel_frames(self) -> int:
        """Pixel frames in one latent frame's action window."""
        return self.windows_size * self.vae_time_compression_ratio

    @property
    def keyboard_head_dim(self) -> int:
        return self.keyboard_hidden_dim // self.heads_num

    def pixel_range(self, first_frame: int, num_frames: int) -> tuple[int, int]:
        """[start, stop) of the absolute pixel frames whose actions latent frames
        first_frame .. first_frame + num_frames - 1 read (pixel frame 0 always when a window
        reaches before it)."""
        r = self.vae_time_compression_ratio
        start = max(0, r * (first_frame - self.windows_size))
        stop = max(start + 1, r * (first_frame + num_frames - 1))
        return start, stop

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "action_config") -> ActionConfig:
        """Checked config from a mapping; unknown fields are a ValueError naming field and source."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: action_config must be an object, got {data!r}")
        _unknown(source, cls, data)
        d = {k: v for k, v in data.items() if not k.startswith("_")}
        for name in ("blocks", "mouse_qk_dim_list", "patch_size", "rope_dim_list"):
            if name in d:
                d[name] = _ints(source, f"action_config.{name}", d[name])
        cfg = cls(**d)
        cfg.check(source)
        return cfg

    def check(self, source: str = "action_config") -> None:
        """ValueError naming the source and field on a bad value."""
        s = source
        for name in ("heads_num", "hidden_size", "img_hidden_size", "keyboard_hidden_dim", "mouse_hidden_dim"):
            _int(s, f"action_config.{name}", getattr(self, name), 1, 1 << 16)
        for name in ("keyboard_dim_in", "mouse_dim_in"):
            _int(s, f"action_config.{name}", getattr(self, name), 0, 4096)
        _int(s, "action_config.vae_time_compression_ratio", self.vae_time_compression_ratio, 1, 64)
        _int(s, "action_config.windows_size", self.windows_size, 1, 1024)
        _int(s, "action_config.local_attn_size", self.local_attn_size, -1, 1 << 20)
        for name in ("enable_keyboard", "enable_mouse", "qk_norm", "qkv_bias"):
            _bool(s, f"action_config.{name}", getattr(self, name))
        if len(set(self.blocks)) != len(self.blocks) or any(b < 0 for b in self.blocks):
            raise ValueError(f"{s}: action_config.blocks must be distinct block indices, got {list(self.blocks)!r}")
        if isinstance(self.rope_theta, bool) or not isinstance(self.rope_theta, (int, float)) or self.rope_theta <= 1:
            raise ValueError(f"{s}: action_config.rope_theta must be a number > 1, got {self.rope_theta!r}")
        if self.enable_keyboard:
            if self.keyboard_dim_in < 1:
                raise ValueError(f"{s}: action_config.keyboard_dim_in must be >= 1 with enable_keyboard")
            if self.keyboard_hidden_dim % self.heads_num:
                raise ValueError(
                    f"{s}: action_config.keyboard_hidden_dim {self.keyboard_hidden_dim} is not a multiple of "
                    f"heads_num {self.heads_num}"
                )
            rope = self.rope_dim_list[0] if self.rope_dim_list else 0
            if rope % 2 or rope > self.keyboard_head_dim:
                raise ValueError(
                    f"{s}: action_config.rope_dim_list[0] must be even and at most the keyboard head dim "
                    f"{self.keyboard_head_dim}, got {list(self.rope_dim_list)!r}"
                )
        if self.enable_mouse and self.mouse_dim_in < 1:
            raise ValueError(f"{s}: action_config.mouse_dim_in must be >= 1 with enable_mouse")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass(frozen=True)
class WanTransformerConfig:
    """diffusers' ``WanTransformer3DModel`` config (same field names and defaults) + ``action_config``."""

    patch_size: tuple[int, ...] = (1, 2, 2)
    """(t, h, w) patch of the latent grid; t must be 1 (every Wan2.1-lineage model)."""
    num_attention_heads: int = 40
    attention_head_dim: int = 128
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    """Width of the text embedding (umT5-XXL: 4096) the cross-attention reads."""
    freq_dim: int = 256
    """Width of the sinusoidal timestep embedding."""
    ffn_dim: int = 13824
    num_layers: int = 40
    cross_attn_norm: bool = True
    """A LayerNorm (with affine) before the cross-attention."""
    qk_norm: str | None = "rms_norm_across_heads"
    """As in diffusers, q and k are always RMS-normalised across heads whatever this says."""
    eps: float = 1e-6
    image_dim: int | None = None
    """Image-conditioned variants are refused (must be null)."""
    added_kv_proj_dim: int | None = None
    """Image-conditioned variants are refused (must be null)."""
    rope_max_seq_len: int = 1024
    """diffusers' RoPE table length; ours computes any position (identical values below it)."""
    pos_embed_seq_len: int | None = None
    """Image-conditioned variants are refused (must be null)."""
    action_config: ActionConfig | None = None
    """Matrix-Game 2.0-style action modules; None: a prompt-only model (no actions)."""

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config.json") -> WanTransformerConfig:
        """Checked config from diffusers-named fields; keys starting with '_' (``_class_name``,
        ``_diffusers_version``) are ignored; an unknown field is a ValueError naming it and ``source``."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: the config must be a JSON object")
        _unknown(source, cls, data)
        d = {k: v for k, v in data.items() if not k.startswith("_")}
        if "patch_size" in d:
            d["patch_size"] = _ints(source, "patch_size", d["patch_size"], 3)
        if d.get("action_config") is not None:
            d["action_config"] = ActionConfig.from_dict(d["action_config"], source)
        cfg = cls(**d)
        cfg.check(source)
        return cfg

    @classmethod
    def from_original_dict(cls, data: Mapping[str, Any], source: str = "config.json") -> WanTransformerConfig:
        """Checked config from the original Wan repository's ``config.json`` field names.

        dim = num_heads * attention_head_dim, in_dim -> in_channels, out_dim -> out_channels; text_len
        (the prompt padding length) and the causal forks' cache knobs (local_attn_size, sink_size,
        recent_attn_size, num_frame_per_block: serving options here) are read and ignored; fields the
        original class leaves out of its config.json take its defaults (cross_attn_norm true,
        qk_norm true, text_dim 4096, patch_size (1, 2, 2), window_size (-1, -1)).
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: the config must be a JSON object")
        known = {
            "model_type",
            "patch_size",
            "text_len",
            "in_dim",
            "dim",
            "ffn_dim",
            "freq_dim",
            "text_dim",
            "out_dim",
            "num_heads",
            "num_layers",
            "window_size",
            "qk_norm",
            "cross_attn_norm",
            "eps",
            "action_config",
            # causal forks (Self-Forcing, CausVid, Matrix-Game 2.0): serving knobs, set by the options
            "local_attn_size",
            "sink_size",
            "recent_attn_size",
            "num_frame_per_block",
            "inject_sample_info",
            "independent_first_frame",
        }
        for key in data:
            if key not in known and not key.startswith("_"):
                raise ValueError(f"{source}: unknown config field {key!r} (known: {', '.join(sorted(known))})")
        model_type = data.get("model_type", "t2v")
        if model_type != "t2v":
            raise ValueError(
                f"{source}: model_type {model_type!r} is not supported: image-conditioned Wan models "
                "(i2v, flf2v, ti2v) need a CLIP image input this model kind does not take; only 't2v' loads"
            )
        window = data.get("window_size", [-1, -1])
        if list(window) != [-1, -1]:
            raise ValueError(f"{source}: window_size {window!r} is not supported (only global attention: [-1, -1])")
        if data.get("qk_norm", True) is not True:
            raise ValueError(f"{source}: qk_norm {data.get('qk_norm')!r} is not supported (q/k RMS norm is always on)")
        if data.get("inject_sample_info", False):
            raise ValueError(f"{source}: inject_sample_info true is not supported")
        dim = _int(source, "dim", data.get("dim", 2048), 1, 1 << 16)
        heads = _int(source, "num_heads", data.get("num_heads", 16), 1, 1024)
        if dim % heads:
            raise ValueError(f"{source}: dim {dim} is not a multiple of num_heads {heads}")
        d: dict[str, Any] = {
            "patch_size": data.get("patch_size", (1, 2, 2)),
            "num_attention_heads": heads,
            "attention_head_dim": dim // heads,
            "in_channels": data.get("in_dim", 16),
            "out_channels": data.get("out_dim", 16),
            "text_dim": data.get("text_dim", 4096),
            "freq_dim": data.get("freq_dim", 256),
            "ffn_dim": data.get("ffn_dim", 8192),
            "num_layers": data.get("num_layers", 32),
            "cross_attn_norm": data.get("cross_attn_norm", True),
            "eps": data.get("eps", 1e-6),
            "action_config": data.get("action_config"),
        }
        return cls.from_dict(d, source)

    def check(self, source: str = "config.json") -> None:
        """ValueError naming the source and the field on a bad value."""
        s = source
        _ints(s, "patch_size", self.patch_size, 3)
        if self.patch_size[0] != 1 or not all(1 <= p <= 16 for p in self.patch_size):
            raise ValueError(
                f"{s}: patch_size must be [1, ph, pw] with ph, pw in [1, 16], got {list(self.patch_size)!r}"
            )
        _int(s, "num_attention_heads", self.num_attention_heads, 1, 1024)
        _int(s, "attention_head_dim", self.attention_head_dim, 2, 4096)
        if self.attention_head_dim % 2 or (self.attention_head_dim - 4 * (self.attention_head_dim // 6)) % 2:
            raise ValueError(f"{s}: attention_head_dim must be even (RoPE), got {self.attention_head_dim}")
        _int(s, "in_channels", self.in_channels, 1, 4096)
        _int(s, "out_channels", self.out_channels, 1, 4096)
        _int(s, "text_dim", self.text_dim, 1, 1 << 16)
        _int(s, "freq_dim", self.freq_dim, 2, 1 << 16)
        _int(s, "ffn_dim", self.ffn_dim, 1, 1 << 20)
        _int(s, "num_layers", self.num_layers, 1, 1024)
        _int(s, "rope_max_seq_len", self.rope_max_seq_len, 1, 1 << 24)
        _bool(s, "cross_attn_norm", self.cross_attn_norm)
        if self.qk_norm is not None and not isinstance(self.qk_norm, str):
            raise ValueError(f"{s}: qk_norm must be a string or null, got {self.qk_norm!r}")
        eps = self.eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not (0 < eps < 1) or not math.isfinite(eps):
            raise ValueError(f"{s}: eps must be a number in (0, 1), got {eps!r}")
        for name in ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len"):
            if getattr(self, name) is not None:
                raise ValueError(
                    f"{s}: {name} {getattr(self, name)!r} is not supported: image-conditioned Wan models need a "
                    "CLIP image input this model kind does not take (must be null)"
                )
        a = self.action_config
        if a is not None:
            a.check(s)
            if a.img_hidden_size != self.inner_dim:
                raise ValueError(
                    f"{s}: action_config.img_hidden_size {a.img_hidden_size} differs from the token width "
                    f"num_attention_heads * attention_head_dim = {self.inner_dim}"
                )
            if tuple(a.patch_size) != tuple(self.patch_size):
                raise ValueError(
                    f"{s}: action_config.patch_size {list(a.patch_size)!r} differs from patch_size {list(self.patch_size)!r}"
                )
            bad = [b for b in a.blocks if b >= self.num_layers]
            if bad:
                raise ValueError(f"{s}: action_config.blocks {bad!r} beyond num_layers {self.num_layers}")

    def to_dict(self) -> dict[str, Any]:
        """diffusers-named JSON fields (with ``_class_name``), as ``transformer/config.json`` holds them."""
        d: dict[str, Any] = {"_class_name": DIFFUSERS_CLASS_NAME}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name == "action_config":
                if v is not None:
                    d[f.name] = v.to_dict()
                continue
            d[f.name] = list(v) if isinstance(v, tuple) else v
        return d

    def diffusers_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for diffusers' ``WanTransformer3DModel`` (the reference in tests)."""
        d = self.to_dict()
        d.pop("_class_name")
        d.pop("action_config", None)
        d["patch_size"] = tuple(d["patch_size"])
        return d


# ---------------------------------------------------------------------------------------------
# The folder reader
# ---------------------------------------------------------------------------------------------


def is_original_config(data: Mapping[str, Any]) -> bool:
    """True for the original Wan repository's config.json (``dim``/``num_heads`` field names)."""
    return "dim" in data or "num_heads" in data or data.get("_class_name") in ("WanModel", "CausalWanModel")


def _transformer_dir(folder: Path) -> Path:
    sub = folder / "transformer"
    return sub if (sub / "config.json").is_file() else folder


def _weight_files(tdir: Path) -> list[Path]:
    """The safetensors files holding the transformer: the index's shards, else the single file."""
    indexes = sorted(tdir.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise ModelLoadError(f"{tdir}: several safetensors index files {[p.name for p in indexes]!r}; keep one")
    if indexes:
        index = indexes[0]
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelLoadError(f"{index}: not a safetensors index (a JSON object with 'weight_map'): {e}") from e
        for name in shards:
            if not isinstance(name, str) or "/" in name or not name.endswith(".safetensors"):
                raise ModelLoadError(f"{index}: weight_map names {name!r}, not a safetensors file in the folder")
            if not (tdir / name).is_file():
                raise ModelLoadError(f"{index}: shard {name!r} is missing from {tdir}")
        return [tdir / n for n in shards]
    files = sorted(tdir.glob("*.safetensors"))
    preferred = tdir / "diffusion_pytorch_model.safetensors"
    if preferred.is_file():
        return [preferred]
    if len(files) == 1:
        return files
    if len(files) > 1:
        raise ModelLoadError(
            f"{tdir}: several safetensors files {[p.name for p in files]!r} and no *.safetensors.index.json; "
            "name the transformer diffusion_pytorch_model.safetensors or add an index"
        )
    pickles = sorted(p.name for p in tdir.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ModelLoadError(
            f"{tdir}: the transformer weights are only in pickle files {pickles!r}, which are never read "
            "(they can run code); convert them to safetensors (e.g. safetensors.torch.save_file of the state dict)"
        )
    raise ModelLoadError(f"{tdir}: no transformer weights (diffusion_pytorch_model.safetensors) in the folder")


def read_transformer_config(folder: str | Path) -> tuple[WanTransformerConfig, bool, Path]:
    """(config, is_original_layout, config path) of a model folder (``transformer/config.json``) or
    of a transformer folder (``config.json``); ModelLoadError naming the file on any fault."""
    tdir = _transformer_dir(Path(folder))
    path = tdir / "config.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ModelLoadError(f"{path}: missing (the transformer config)") from e
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path}: the config must be a JSON object")
    original = is_original_config(data)
    try:
        cfg = (WanTransformerConfig.from_original_dict if original else WanTransformerConfig.from_dict)(data, str(path))
    except (ValueError, TypeError) as e:
        raise ModelLoadError(str(e)) from e
    return cfg, original, path


def expected_shapes(config: WanTransformerConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a folder must hold for ``config`` (diffusers names) and its shape."""
    from .network import CausalWanTransformer  # the module tree is the one source of the names

    with torch.device("meta"):
        net = CausalWanTransformer(config)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def read_transformer_folder(folder: str | Path) -> tuple[WanTransformerConfig, dict[str, torch.Tensor]]:
    """(config, state dict in diffusers names) of a published transformer, either layout.

    ``folder`` is a model folder with ``transformer/`` or the transformer folder itself. Every
    fault is a ModelLoadError naming the file and the tensor or field: a missing or unexpected
    tensor, a wrong shape, an unknown config field, pickle-only weights.
    """
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    cfg, original, cfg_path = read_transformer_config(folder)
    tdir = cfg_path.parent
    files = _weight_files(tdir)
    expected = expected_shapes(cfg)
    state: dict[str, torch.Tensor] = {}
    source: dict[str, tuple[Path, str]] = {}  # diffusers name -> (file, name in the file)
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    target = (keymap.lookup_original(name) or f"<unmapped> {name}") if original else name
                    if target in source:
                        raise ModelLoadError(
                            f"{path}: tensor {name!r} duplicates {source[target][1]!r} of {source[target][0].name}"
                        )
                    if target not in expected:
                        shown = f"{name!r}" + (f" (diffusers name {target!r})" if target != name else "")
                        raise ModelLoadError(f"{path}: unexpected tensor {shown} for this config")
                    state[target] = f.get_tensor(name)
                    source[target] = (path, name)
        except SafetensorError as e:
            raise ModelLoadError(f"{path}: not a readable safetensors file: {e}") from e
    for target, shape in expected.items():
        if target not in state:
            name = keymap.diffusers_to_original(target) if original else target
            shown = f"{name!r}" + (f" (diffusers name {target!r})" if name != target else "")
            where = files[0] if len(files) == 1 else tdir
            raise ModelLoadError(f"{where}: missing tensor {shown}, expected shape {list(shape)}")
        got = tuple(state[target].shape)
        if got != shape:
            path, name = source[target]
            raise ModelLoadError(
                f"{path}: tensor {name!r} has shape {list(got)}, expected {list(shape)} for {cfg_path.name}"
            )
    return cfg, state


def to_original_dict(config: WanTransformerConfig) -> dict[str, Any]:
    """The original Wan repository's config.json fields for ``config`` (the inverse of ``from_original_dict``)."""
    d: dict[str, Any] = {
        "_class_name": "WanModel",
        "model_type": "t2v",
        "patch_size": list(config.patch_size),
        "dim": config.inner_dim,
        "ffn_dim": config.ffn_dim,
        "freq_dim": config.freq_dim,
        "in_dim": config.in_channels,
        "out_dim": config.out_channels,
        "text_dim": config.text_dim,
        "num_heads": config.num_attention_heads,
        "num_layers": config.num_layers,
        "cross_attn_norm": config.cross_attn_norm,
        "eps": config.eps,
        "text_len": 512,
    }
    if config.action_config is not None:
        d["action_config"] = config.action_config.to_dict()
    return d


def save_transformer_folder(
    folder: str | Path,
    config: WanTransformerConfig,
    state: Mapping[str, torch.Tensor],
    *,
    layout: str = "diffusers",
    max_shard_bytes: int | None = None,
) -> Path:
    """Write ``config.json`` and safetensors into ``folder`` (the transformer folder itself) in the
    published ``layout`` ("diffusers" names or the "original" Wan names); ``max_shard_bytes`` splits
    the tensors into ``diffusion_pytorch_model-0000i-of-0000n.safetensors`` shards with their index,
    as published sharded checkpoints are. Returns ``folder``."""
    from safetensors.torch import save_file

    if layout not in ("diffusers", "original"):
        raise ValueError(f"layout must be 'diffusers' or 'original', got {layout!r}")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    original = layout == "original"
    cfg = to_original_dict(config) if original else config.to_dict()
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    tensors = {
        (keymap.diffusers_to_original(k) if original else k): v.detach().contiguous().cpu() for k, v in state.items()
    }
    if max_shard_bytes is None:
        save_file(tensors, str(out / "diffusion_pytorch_model.safetensors"))
        return out
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        t = tensors[name]
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    weight_map: dict[str, str] = {}
    for i, shard in enumerate(shards):
        fname = f"diffusion_pytorch_model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / fname))
        weight_map.update(dict.fromkeys(shard, fname))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return out
