"""Wan's causal 3D VAE, streaming: the first image in, latent chunks out to pixels one chunk at a time.

:class:`StreamingWanVAE` wraps diffusers' ``AutoencoderKLWan`` (pinned: ``diffusers==0.42.1``), the VAE
of Wan2.1 and of the causal video DiTs built on it (Self-Forcing, CausVid, Matrix-Game 2.0, ...). The
weights load unchanged from a published ``vae/`` folder (``config.json`` +
``diffusion_pytorch_model.safetensors``, diffusers' names); pickles are never read.

Time: a latent frame after the first decodes to ``temporal`` (4) pixel frames, the first to one. The
decoder is causal in time: every temporal convolution keeps the last two input frames of the
previous call (diffusers' ``feat_map``). :class:`DecodeCache` is that state for one session, kept
between :meth:`StreamingWanVAE.decode_chunk` calls, so a session's chunks decode one at a time into
the frames a whole-clip ``AutoencoderKLWan.decode`` gives (to float32 rounding; bitwise the same
however the frames are cut into chunks). Sessions whose caches have the same layout decode in one
batch; the others one group at a time.

Exact resume either stores the cache (:meth:`DecodeCache.to_tensors`) or rebuilds it: the time
convolutions forget, so a cache is a function of the session's last
:attr:`StreamingWanVAE.history_frames` latent frames only (38 for Wan2.1's VAE), and
:meth:`StreamingWanVAE.rebuild_cache` decodes them into bitwise the cache the session carried.

Latents crossing this module are *normalised* as diffusers' Wan pipelines have them:
``(z - latents_mean) / latents_std`` per channel.

The VAE runs in float32 unless a dtype is forced, even beside a bf16 transformer: bf16 keeps 8 bits
of mantissa through some 30 stacked convolutions, which bands the smooth gradients of the decoded
frames (on CUDA, float32 convolutions still run on tensor cores as TF32, PyTorch's default). It is
not cheap: at 480x832 the decoder costs 13.6 TFLOP per latent frame (4 pixel frames) and a
session's cache holds 3.5 GiB in float32 (:meth:`StreamingWanVAE.cache_nbytes`).
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import __version__ as diffusers_version
from diffusers.models.autoencoders.autoencoder_kl_wan import (
    AutoencoderKLWan,
    WanCausalConv3d,
    WanResample,
    patchify,
    unpatchify,
)

from worldserve.common.registry import ModelLoadError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
INDEX_FILE = WEIGHTS_FILE + ".index.json"  # sharded weights: {"weight_map": {tensor: shard file}}
CLASS_NAME = "AutoencoderKLWan"
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl")

# The fields AutoencoderKLWan takes (its __init__'s arguments); anything else in config.json is refused.
CONFIG_FIELDS = frozenset(p for p in inspect.signature(AutoencoderKLWan.__init__).parameters if p != "self")

Slot = torch.Tensor | str | None  # one entry of diffusers' feat_map: unused yet, "Rep" (first chunk seen), a tensor
_KINDS = {None: 0, "Rep": 1}  # DecodeCache.to_tensors: slot kind codes (2: a tensor)


def tiny_vae_config(
    *,
    base_dim: int = 8,
    z_dim: int = 4,
    num_res_blocks: int = 1,
    is_residual: bool = False,
    patch_size: int | None = None,
) -> dict[str, Any]:
    """A tiny AutoencoderKLWan config (tests, tiny model folders): Wan2.1's layout (spatial x8, temporal
    x4) at a few channels. ``is_residual`` + ``patch_size=2`` is Wan2.2's VAE layout (spatial x16)."""
    return {
        "base_dim": base_dim,
        "z_dim": z_dim,
        "dim_mult": [1, 2, 4, 4],
        "num_res_blocks": num_res_blocks,
        "attn_scales": [],
        "temperal_downsample": [False, True, True],
        "dropout": 0.0,
        # not 0 / 1, so that the normalisation is exercised
        "latents_mean": [round(0.1 * (i % 5) - 0.2, 4) for i in range(z_dim)],
        "latents_std": [round(0.5 + 0.25 * (i % 4), 4) for i in range(z_dim)],
        "is_residual": is_residual,
        "patch_size": patch_size,
        "in_channels": 3 * (patch_size or 1) ** 2,  # RGB, in patches
        "out_channels": 3 * (patch_size or 1) ** 2,
    }


def check_vae_config(data: Mapping[str, Any], source: str = "VAE config") -> dict[str, Any]:
    """The AutoencoderKLWan arguments of a ``config.json`` dict (diffusers' ``_`` fields dropped).
    ValueError naming ``source`` and the field: another ``_class_name``, an unknown field, latent
    statistics that do not have ``z_dim`` entries."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
    cls = data.get("_class_name", CLASS_NAME)
    if cls != CLASS_NAME:
        raise ValueError(f"{source}: _class_name is {cls!r}; the causal DiT's VAE is {CLASS_NAME!r}")
    for name in data:
        if not name.startswith("_") and name not in CONFIG_FIELDS:
            raise ValueError(
                f"{source}: unknown VAE config field {name!r} (AutoencoderKLWan takes {sorted(CONFIG_FIELDS)})"
            )
    cfg = {k: v for k, v in data.items() if not k.startswith("_")}
    z_dim = cfg.get("z_dim", 16)
    for name in ("latents_mean", "latents_std"):
        if name not in cfg and z_dim != 16:  # the defaults are Wan2.1's 16 channels
            raise ValueError(f"{source}: field {name!r} is missing (its default has 16 entries; z_dim is {z_dim})")
        if name in cfg and (not isinstance(cfg[name], list) or len(cfg[name]) != z_dim):
            raise ValueError(f"{source}: field {name!r} must be a list of z_dim ({z_dim}) numbers")
    return cfg


@dataclass
class DecodeCache:
    """One session's decoder state between :meth:`StreamingWanVAE.decode_chunk` calls: how many latent
    frames it has decoded and diffusers' feature cache, one slot per causal convolution of the decoder
    (None: not used yet; ``"Rep"``: a temporal upsampler that has seen only the first frame; else the
    last input frames of that convolution, ``(1, C, 1 or 2, H_l, W_l)``)."""

    frames: int = 0
    feats: list[Slot] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        """Bytes of the cached tensors."""
        return sum(s.numel() * s.element_size() for s in self.feats if isinstance(s, torch.Tensor))

    def clone(self) -> DecodeCache:
        """An independent copy (a forked session)."""
        return DecodeCache(self.frames, [s.clone() if isinstance(s, torch.Tensor) else s for s in self.feats])

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The cache as named tensors (exact resume; :func:`~worldserve.dynamics.interface.pack_resume`
        stores them). The feature tensors are the cache's own, not copies."""
        kinds = [2 if isinstance(s, torch.Tensor) else _KINDS[s] for s in self.feats]
        out = {
            "frames": torch.tensor([self.frames], dtype=torch.int64),
            "kinds": torch.tensor(kinds, dtype=torch.int8),  # one per slot: 0 unused, 1 "Rep", 2 tensor
        }
        for i, s in enumerate(self.feats):
            if isinstance(s, torch.Tensor):
                out[f"feat.{i}"] = s
        return out

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor], device: torch.device | str | None = None) -> DecodeCache:
        """The inverse of :meth:`to_tensors` (tensors moved to ``device`` when given); ValueError when
        ``tensors`` is not such a dict."""
        try:
            frames = int(tensors["frames"].reshape(-1)[0])
            kinds = [int(k) for k in tensors["kinds"].reshape(-1)]
        except (KeyError, IndexError) as e:
            raise ValueError(f"not a decode cache: {e} missing") from None
        feats: list[Slot] = []
        for i, k in enumerate(kinds):
            if k == 2:
                if f"feat.{i}" not in tensors:
                    raise ValueError(f"not a decode cache: feat.{i} missing")
                t = tensors[f"feat.{i}"]
                feats.append(t.to(device) if device is not None else t)
            elif k in (0, 1):
                feats.append(None if k == 0 else "Rep")
            else:
                raise ValueError(f"not a decode cache: slot {i} has kind {k}")
        return cls(frames, feats)

    def _layout(self) -> tuple[Any, ...]:
        """What must agree for caches to decode in one batch."""
        return (self.frames == 0,) + tuple(
            (tuple(s.shape[1:]), s.dtype) if isinstance(s, torch.Tensor) else s for s in self.feats
        )


class StreamingWanVAE:
    """Wan's causal VAE for serving: :meth:`encode_first` (the session's first image -> its latent frame)
    and :meth:`decode_chunk` (latent chunks -> uint8 frames, each session through its own
    :class:`DecodeCache`). Build with :meth:`from_folder` or :meth:`random`."""

    def __init__(self, vae: AutoencoderKLWan):
        self.vae = vae.eval().requires_grad_(False)
        cfg: Mapping[str, Any] = vae.config  # a FrozenDict of the __init__ arguments
        self.latent_channels: int = cfg["z_dim"]
        self.patch: int = cfg["patch_size"] or 1
        self.scale: int = 2 ** (len(cfg["dim_mult"]) - 1) * self.patch  # pixels per latent cell, each side
        self.temporal: int = 2 ** sum(bool(t) for t in cfg["temperal_downsample"])  # pixel frames per latent frame
        self.decoder_slots = sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())
        self.encoder_slots = sum(isinstance(m, WanCausalConv3d) for m in vae.encoder.modules())
        self.history_frames = _history_frames(vae.decoder)
        self._cache_nbytes: dict[tuple[int, int], int] = {}
        shape = (1, cfg["z_dim"], 1, 1, 1)
        self.latents_mean = torch.tensor(cfg["latents_mean"], dtype=torch.float32).view(shape).to(self.device)
        self.latents_std = torch.tensor(cfg["latents_std"], dtype=torch.float32).view(shape).to(self.device)

    @property
    def device(self) -> torch.device:
        return self.vae.post_quant_conv.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.post_quant_conv.weight.dtype

    @property
    def config(self) -> dict[str, Any]:
        """The AutoencoderKLWan arguments (what config.json holds, less diffusers' ``_`` fields)."""
        return {k: v for k, v in dict(self.vae.config).items() if k in CONFIG_FIELDS}

    # --- building ---------------------------------------------------------------------------------

    @classmethod
    def random(
        cls,
        config: Mapping[str, Any] | None = None,
        seed: int = 0,
        device: torch.device | str = "cpu",
        dtype: torch.dtype | None = None,
    ) -> StreamingWanVAE:
        """A randomly initialised VAE (PyTorch's default init, seeded; the global RNG is left as it
        was) of ``config`` (default :func:`tiny_vae_config`); float32 unless ``dtype`` is forced."""
        cfg = check_vae_config(dict(config) if config is not None else tiny_vae_config())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vae = AutoencoderKLWan(**cfg)
        return cls(_place(vae, device, dtype))

    @classmethod
    def from_folder(
        cls, folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype | None = None
    ) -> StreamingWanVAE:
        """Load a published ``vae/`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``,
        or its sharded form), float32 unless ``dtype`` is forced. :class:`ModelLoadError` naming the
        file and the field or tensor at fault: a missing file (a folder with only pickles says to
        convert them), an unknown config field, a missing, unexpected or misshapen tensor."""
        folder = Path(folder)
        config_path = folder / CONFIG_FILE
        if not config_path.is_file():
            raise ModelLoadError(f"{str(config_path)!r} not found")
        try:
            data = json.loads(config_path.read_text())
        except ValueError as e:
            raise ModelLoadError(f"{str(config_path)!r} is not valid JSON: {_one_line(e)}") from None
        try:
            cfg = check_vae_config(data, repr(str(config_path)))
        except ValueError as e:
            raise ModelLoadError(str(e)) from None
        try:
            with torch.device("meta"):  # shapes only: the weights come from the file
                vae = AutoencoderKLWan(**cfg)
        except (ValueError, TypeError, AssertionError, IndexError) as e:
            raise ModelLoadError(
                f"{str(config_path)!r}: AutoencoderKLWan refuses this config: {_one_line(e)}"
            ) from None
        state, source = _read_weights(folder)
        want = vae.state_dict()
        missing = [k for k in want if k not in state]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ModelLoadError(f"{source!r}: tensor {missing[0]!r} is missing{more}")
        unexpected = [k for k in state if k not in want]
        if unexpected:
            more = f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""
            raise ModelLoadError(f"{source!r}: unexpected tensor {unexpected[0]!r}{more} for {str(config_path)!r}")
        for k, t in want.items():
            if tuple(state[k].shape) != tuple(t.shape):
                raise ModelLoadError(
                    f"{source!r}: tensor {k!r} has shape {tuple(state[k].shape)}; {str(config_path)!r} makes it {tuple(t.shape)}"
                )
            if not state[k].is_floating_point():
                raise ModelLoadError(f"{source!r}: tensor {k!r} has dtype {state[k].dtype}; expected floating point")
        vae.load_state_dict(state, strict=True, assign=True)
        return cls(_place(vae, device, dtype))

    def save_folder(self, folder: str | Path) -> Path:
        """Write this VAE as a published ``vae/`` folder (config.json + diffusion_pytorch_model.safetensors)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        data = {"_class_name": CLASS_NAME, "_diffusers_version": diffusers_version, **self.config}
        (folder / CONFIG_FILE).write_text(json.dumps(data, indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in self.vae.state_dict().items()}
        save_file(state, folder / WEIGHTS_FILE, metadata={"format": "pt"})
        return folder

    # --- encode -----------------------------------------------------------------------------------

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latents -> the DiT's latents: ``(z - mean) / std`` per channel, float32."""
        return (z.float() - self.latents_mean.to(z.device)) / self.latents_std.to(z.device)

    def denormalise(self, latents: torch.Tensor) -> torch.Tensor:
        """The DiT's latents -> the VAE's: ``latents * std + mean`` per channel, float32."""
        return latents.float() * self.latents_std.to(latents.device) + self.latents_mean.to(latents.device)

    @torch.no_grad()
    def encode_first(self, frames: torch.Tensor) -> torch.Tensor:
        """Each of ``frames`` (N, H, W, 3) uint8 as the first frame of a video -> its normalised latent
        frame (N, C, 1, H/scale, W/scale) float32 on the CPU: the posterior's mode (deterministic)."""
        if (
            not isinstance(frames, torch.Tensor)
            or frames.dtype != torch.uint8
            or frames.dim() != 4
            or frames.shape[-1] != 3
        ):
            got = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
            raise ValueError(f"frames must be a uint8 tensor (N, H, W, 3), got {getattr(frames, 'dtype', '')} {got}")
        _, H, W, _ = frames.shape
        if H % self.scale or W % self.scale:
            raise ValueError(f"frame size {H}x{W} is not a multiple of the VAE's {self.scale}")
        x = frames.to(self.device).permute(0, 3, 1, 2).unsqueeze(2)  # (N, 3, 1, H, W)
        x = x.to(self.dtype) / 127.5 - 1.0  # [-1, 1]
        if self.patch > 1:
            x = patchify(x, self.patch)  # (N, 3*p*p, 1, H/p, W/p)
        h = self.vae.encoder(x, feat_cache=[None] * self.encoder_slots, feat_idx=[0])  # (N, 2C, 1, h, w)
        h = self.vae.quant_conv(h)
        mode = h[:, : self.latent_channels]  # the Gaussian's mean; the rest is its log-variance
        return self.normalise(mode).cpu()

    # --- decode -----------------------------------------------------------------------------------

    def new_cache(self) -> DecodeCache:
        """The cache of a session that has decoded nothing yet."""
        return DecodeCache(0, [None] * self.decoder_slots)

    @torch.no_grad()
    def rebuild_cache(self, latents: torch.Tensor, first_frame: int) -> DecodeCache:
        """A session's cache rebuilt from its normalised latent frames (1, C, f, h, w), the first of them
        its frame ``first_frame``: bitwise the cache it carried after them (decoded one session at a
        time), without storing it. The decoder's time convolutions forget: a cache depends only on
        the last :attr:`history_frames` latent frames (38 for Wan2.1's VAE), so those suffice, or all
        of them from frame 0. ValueError for fewer."""
        f = latents.shape[2] if isinstance(latents, torch.Tensor) and latents.dim() == 5 else 0
        if first_frame != 0 and f < self.history_frames:
            raise ValueError(
                f"rebuilding a decode cache takes the last {self.history_frames} latent frames or all from frame 0; "
                f"got {f} from frame {first_frame}"
            )
        if latents.shape[0] != 1:
            raise ValueError(f"rebuild_cache takes one session's latents (1, C, f, h, w), got {tuple(latents.shape)}")
        cache = self.new_cache()
        self.decode_float(latents, [cache])  # frames dropped: only the cache is wanted
        cache.frames = first_frame + f
        return cache

    def cache_nbytes(self, h: int, w: int) -> int:
        """Bytes of a session's :class:`DecodeCache` on an ``h`` x ``w`` latent grid once it has decoded
        two latent frames (its size from then on), in this VAE's dtype; found by decoding shapes only
        (meta tensors), without memory or compute. 3.5 GiB for Wan2.1's VAE at 480x832 in float32."""
        if (h, w) not in self._cache_nbytes:
            with torch.device("meta"):
                shapes = StreamingWanVAE(_place(AutoencoderKLWan(**self.config), "meta", self.dtype))
            cache = shapes.new_cache()
            shapes.decode_float(torch.zeros(1, self.latent_channels, 2, h, w, device="meta"), [cache])
            self._cache_nbytes[(h, w)] = cache.nbytes
        return self._cache_nbytes[(h, w)]

    def pixel_frames(self, latent_frames: int, first: bool) -> int:
        """Pixel frames that ``latent_frames`` latent frames decode to (``first``: the session's first chunk)."""
        return self.temporal * latent_frames - (self.temporal - 1 if first else 0)

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor, caches: Sequence[DecodeCache]) -> torch.Tensor:
        """Normalised latents (B, C, f, h, w) of ``caches``' sessions -> uint8 frames (B, n_px, H, W, 3)
        on the CPU, advancing each cache (``n_px``: :meth:`pixel_frames`; a session's first chunk
        starts with its frame 0, which decodes to one frame)."""
        x = self.decode_float(latents, caches)  # (B, 3, n_px, H, W) in [-1, 1]
        x = ((x + 1.0) * 127.5).round().to(torch.uint8)
        return x.permute(0, 2, 3, 4, 1).contiguous().cpu()  # (B, n_px, H, W, 3)

    @torch.no_grad()
    def decode_float(self, latents: torch.Tensor, caches: Sequence[DecodeCache]) -> torch.Tensor:
        """:meth:`decode_chunk` before quantisation: (B, 3, n_px, H, W) float32 in [-1, 1] on the VAE's
        device, what ``AutoencoderKLWan.decode`` gives for these frames of the whole clip."""
        self._check(latents, caches)
        first = caches[0].frames == 0
        if any((c.frames == 0) != first for c in caches):
            raise ValueError("a batch mixes sessions' first chunks with later ones (they give different frame counts)")
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, c in enumerate(caches):
            groups.setdefault(c._layout(), []).append(i)
        out: list[torch.Tensor | None] = [None] * len(caches)
        for idx in groups.values():
            feats = _stack([caches[i].feats for i in idx], self.device)
            y = self._decode_group(latents[idx], feats, caches[idx[0]].frames)
            for j, i in enumerate(idx):  # write back only once the whole group decoded
                caches[i].feats = [s[j : j + 1] if isinstance(s, torch.Tensor) else s for s in feats]
                caches[i].frames += latents.shape[2]
                out[i] = y[j]
        return torch.stack(out)  # type: ignore[arg-type]

    def _decode_group(self, latents: torch.Tensor, feats: list[Slot], frames: int) -> torch.Tensor:
        """Decode (b, C, f, h, w) normalised latents one latent frame at a time, as diffusers'
        ``AutoencoderKLWan._decode`` does, through ``feats`` (updated in place). Every op sees one
        latent frame, so how a session's frames are cut into chunks never changes a bit of the result
        (diffusers runs the 1x1x1 ``post_quant_conv`` over the whole clip at once: a few ulps apart)."""
        z = self.denormalise(latents.to(self.device)).to(self.dtype)  # (b, C, f, h, w)
        pieces = []
        for t in range(z.shape[2]):
            x = self.vae.post_quant_conv(z[:, :, t : t + 1])  # (b, C, 1, h, w)
            first_chunk = frames + t == 0  # the session's frame 0: one pixel frame, no temporal upsampling
            y = self.vae.decoder(x, feat_cache=feats, feat_idx=[0], first_chunk=first_chunk)
            pieces.append(y)  # (b, 3*p*p, 1 or temporal, H/p, W/p)
        y = torch.cat(pieces, dim=2)
        if self.patch > 1:
            y = unpatchify(y, self.patch)
        return y.clamp(-1.0, 1.0).float()  # (b, 3, n_px, H, W)

    def _check(self, latents: torch.Tensor, caches: Sequence[DecodeCache]) -> None:
        if not isinstance(latents, torch.Tensor) or not latents.is_floating_point() or latents.dim() != 5:
            got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise ValueError(f"latents must be a float tensor (B, C, f, h, w), got {got}")
        B, C, f = latents.shape[:3]
        if C != self.latent_channels or f < 1:
            raise ValueError(
                f"latents must have {self.latent_channels} channels and a frame or more, got {tuple(latents.shape)}"
            )
        if len(caches) != B:
            raise ValueError(f"{B} sessions' latents but {len(caches)} decode caches")
        for c in caches:
            if len(c.feats) != self.decoder_slots:
                raise ValueError(
                    f"a decode cache with {len(c.feats)} slots; this VAE's decoder has {self.decoder_slots}"
                )
            s = c.feats[0]
            if isinstance(s, torch.Tensor) and tuple(s.shape[-2:]) != tuple(latents.shape[-2:]):
                raise ValueError(
                    f"a decode cache of a {tuple(s.shape[-2:])} latent grid given latents of {tuple(latents.shape[-2:])}"
                )


def _history_frames(decoder: torch.nn.Module) -> int:
    """Latent frames the decoder's cache depends on: each causal time convolution of temporal kernel k
    reaches k - 1 of its input frames back, and its input runs at ``rate`` frames per latent frame
    (doubled by each temporal upsampler). Checked against the caches themselves in the tests."""
    reach, rate, done = 0.0, 1, set()
    for m in decoder.modules():  # in forward order: conv_in, mid_block, up_blocks (resnets, upsampler), conv_out
        if isinstance(m, WanResample) and m.mode == "upsample3d":
            reach += (m.time_conv.kernel_size[0] - 1) / rate  # runs before the upsampling
            done.add(id(m.time_conv))
            rate *= 2
        elif isinstance(m, WanCausalConv3d) and id(m) not in done:
            reach += (m.kernel_size[0] - 1) / rate
    return math.ceil(reach)


def _stack(per_session: list[list[Slot]], device: torch.device) -> list[Slot]:
    """Sessions' feature caches (same layout) as one batched cache."""
    out: list[Slot] = []
    for slots in zip(*per_session):
        tensors = [s.to(device) for s in slots if isinstance(s, torch.Tensor)]
        out.append(slots[0] if not tensors else tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0))
    return out


def _read_weights(folder: Path) -> tuple[dict[str, torch.Tensor], str]:
    """(CPU state dict, the file to name in errors) of a VAE folder: the single file or the sharded index."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    single, index = folder / WEIGHTS_FILE, folder / INDEX_FILE
    if single.is_file():
        files, source = [single], single
    elif index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            files = [folder / name for name in sorted(set(weight_map.values()))]
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ModelLoadError(f"{str(index)!r} is not a safetensors index: {_one_line(e)}") from None
        source = index
    else:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise ModelLoadError(
                f"{str(single)!r} not found; {folder}/ has only pickle checkpoints {pickles}, which are never read: "
                "convert them to safetensors in diffusers' layout (AutoencoderKLWan.save_pretrained)"
            )
        raise ModelLoadError(f"{str(single)!r} not found")
    state: dict[str, torch.Tensor] = {}
    for path in files:
        if not path.is_file():
            raise ModelLoadError(f"{str(path)!r} not found (named by {str(index)!r})")
        try:
            state.update(load_file(path, device="cpu"))
        except (SafetensorError, OSError) as e:
            raise ModelLoadError(f"{str(path)!r} is not a safetensors file: {_one_line(e)}") from None
    return state, str(source)


def _place(vae: AutoencoderKLWan, device: torch.device | str, dtype: torch.dtype | None) -> AutoencoderKLWan:
    """``vae`` on ``device`` in ``dtype`` (default float32). nn.Module.to: ModelMixin.to warns on every
    dtype cast about modules to keep in float32 (AutoencoderKLWan has none)."""
    return torch.nn.Module.to(vae, device=device, dtype=dtype or torch.float32)


def _one_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0][:300] if s else type(e).__name__
