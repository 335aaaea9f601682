"""Wan's causal VAE, streaming (causal_dit/vae.py), against diffusers' AutoencoderKLWan as the reference:
chunked decode with carried caches == whole-clip decode, exact cache round trips, batched sessions ==
each alone, the first frame's encoding, and the published folder layout with its faults.

Tiny random VAEs (base_dim 8, z_dim 4, one res block) in float32 on the CPU, a 3x4 latent grid.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from worldserve.common.registry import ModelLoadError
from worldserve.dynamics.interface import pack_resume, unpack_resume
from worldserve.dynamics.models.causal_dit.vae import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    DecodeCache,
    StreamingWanVAE,
    tiny_vae_config,
)

GRID = (3, 4)  # latent h, w -> 24 x 32 pixels
CHUNKS = [(0, 1), (1, 2), (2, 4), (4, 7)]  # the first frame alone, then 1, 2 and 3 latent frames per call

# Chunked decode runs diffusers' decoder on the same inputs in the same order as its whole-clip
# decode (one latent frame per decoder call, the same feature cache): bitwise equal here for Wan2.1's
# layout. What may differ is rounding: diffusers runs the 1x1x1 post_quant_conv over the whole clip,
# we per latent frame (1.3e-6 seen in Wan2.2's layout), and a batch of two sessions takes another
# conv algorithm than one alone on the CPU (PyTorch picks oneDNN for the batch; 4e-6 seen). Frames
# are in [-1, 1] and quantise to steps of 1/127.5 = 7.8e-3, so 1e-5 is far below a visible change.
TOL = 1e-5


def _latents(n: int, f: int, seed: int = 0, grid: tuple[int, int] = GRID) -> torch.Tensor:
    return torch.randn(n, 4, f, *grid, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def vae() -> StreamingWanVAE:
    return StreamingWanVAE.random(tiny_vae_config(), seed=0)


def _reference(vae: StreamingWanVAE, latents: torch.Tensor) -> torch.Tensor:
    """diffusers' whole-clip decode of normalised latents: (B, 3, n_px, H, W) in [-1, 1]."""
    with torch.no_grad():
        return vae.vae.decode(vae.denormalise(latents)).sample


def _chunked(vae: StreamingWanVAE, latents: torch.Tensor, caches: list[DecodeCache]) -> torch.Tensor:
    return torch.cat([vae.decode_float(latents[:, :, a:b], caches) for a, b in CHUNKS], dim=2)


def test_layout_and_dtype(vae):
    assert (vae.latent_channels, vae.scale, vae.temporal) == (4, 8, 4)
    assert vae.dtype == torch.float32  # float32 by default, whatever the transformer runs in
    assert vae.pixel_frames(1, first=True) == 1 and vae.pixel_frames(3, first=True) == 9
    assert vae.pixel_frames(3, first=False) == 12
    forced = StreamingWanVAE.random(tiny_vae_config(), seed=0, dtype=torch.bfloat16)
    assert forced.dtype == torch.bfloat16
    again = StreamingWanVAE.random(tiny_vae_config(), seed=0)
    assert all(torch.equal(a, b) for a, b in zip(vae.vae.state_dict().values(), again.vae.state_dict().values()))


def test_chunked_decode_equals_whole_clip_decode(vae):
    z = _latents(1, 7)
    ref = _reference(vae, z)  # (1, 3, 25, 24, 32)
    caches = [vae.new_cache()]
    got = _chunked(vae, z, caches)
    assert got.shape == ref.shape == (1, 3, 1 + 4 * 6, 24, 32)
    assert (got - ref).abs().max().item() <= TOL
    assert 0.01 < ref.abs().mean() < 0.9  # not a clamped or blank clip
    assert caches[0].frames == 7

    # the uint8 frames: the last chunk's 12 frames, (B, n_px, H, W, 3)
    caches = [vae.new_cache()]
    for a, b in CHUNKS[:-1]:
        vae.decode_chunk(z[:, :, a:b], caches)
    frames = vae.decode_chunk(z[:, :, 4:7], caches)
    assert frames.dtype == torch.uint8 and frames.shape == (1, 12, 24, 32, 3)
    want = ((ref[:, :, -12:] + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)
    assert (frames.int() - want.int()).abs().max() <= 1


def test_cache_round_trip_gives_bitwise_the_same_next_frames(vae):
    z = _latents(1, 7, seed=1)
    carried = [vae.new_cache()]
    for a, b in CHUNKS[:2]:
        vae.decode_chunk(z[:, :, a:b], carried)
    tensors = carried[0].to_tensors()
    assert carried[0].nbytes == sum(t.numel() * t.element_size() for k, t in tensors.items() if k.startswith("feat."))
    assert carried[0].nbytes == vae.cache_nbytes(*GRID) > 0  # its size from the second frame on, found from shapes
    restored = DecodeCache.from_tensors(unpack_resume(pack_resume(tensors)))  # through the bytes Redis holds
    forked = carried[0].clone()
    assert restored.frames == forked.frames == 2

    a = vae.decode_chunk(z[:, :, 2:4], carried)
    b = vae.decode_chunk(z[:, :, 2:4], [restored])
    c = vae.decode_chunk(z[:, :, 2:4], [forked])  # a clone is independent of the cache it came from
    assert torch.equal(a, b) and torch.equal(a, c)
    a = vae.decode_float(z[:, :, 4:7], carried)
    b = vae.decode_float(z[:, :, 4:7], [restored])
    assert torch.equal(a, b)

    with pytest.raises(ValueError, match="not a decode cache"):
        DecodeCache.from_tensors({"frames": torch.tensor([1])})


def _same(a: DecodeCache, b: DecodeCache) -> bool:
    ta, tb = a.to_tensors(), b.to_tensors()
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_cache_rebuilt_from_the_last_history_frames_is_bitwise_the_carried_one(vae):
    """Resume without storing the cache: the decoder's time convolutions forget, so decoding the last
    ``history_frames`` latent frames into a new cache gives bitwise the carried cache, and one fewer
    does not (the count is the cache's real reach); chunking never changes a bit either."""
    k = vae.history_frames
    assert k == 30  # Wan2.1's layout with one res block (38 with Wan2.1's two)
    n = k + 3
    z = _latents(1, n, seed=7, grid=(2, 2))
    carried = [vae.new_cache()]
    at5 = None
    for a, b in [(0, 1), (1, 3), (3, 5), *((i, min(i + 3, n)) for i in range(5, n, 3))]:  # chunks of 1, 2, 3
        vae.decode_chunk(z[:, :, a:b], carried)
        at5 = at5 or (carried[0].clone() if b == 5 else None)
    rebuilt = vae.rebuild_cache(z[:, :, n - k :], first_frame=n - k)  # one call over k frames
    assert rebuilt.frames == carried[0].frames == n and _same(rebuilt, carried[0])
    short = vae.new_cache()
    vae.decode_float(z[:, :, n - k + 1 :], [short])
    short.frames = n
    assert not _same(short, carried[0])
    assert at5 is not None and _same(vae.rebuild_cache(z[:, :, :5], first_frame=0), at5)  # from the start: all of them
    nxt = _latents(1, 2, seed=8, grid=(2, 2))
    assert torch.equal(vae.decode_chunk(nxt, carried), vae.decode_chunk(nxt, [rebuilt]))
    with pytest.raises(ValueError, match=f"last {k} latent frames"):
        vae.rebuild_cache(z[:, :, n - k + 1 :], first_frame=n - k + 1)


def test_two_sessions_in_one_batch_equal_each_alone(vae):
    z = torch.cat([_latents(1, 7, seed=2), _latents(1, 7, seed=3)])
    together = _chunked(vae, z, [vae.new_cache(), vae.new_cache()])
    for i in range(2):
        alone = _chunked(vae, z[i : i + 1], [vae.new_cache()])
        assert (together[i : i + 1] - alone).abs().max().item() <= TOL

    # a cache decoded in a batch (its tensors are slices of the batch's) stores and restores alone
    pair = [vae.new_cache(), vae.new_cache()]
    vae.decode_chunk(z[:, :, :1], pair)
    vae.decode_chunk(z[:, :, 1:3], pair)
    restored = DecodeCache.from_tensors(unpack_resume(pack_resume(pair[1].to_tensors())))
    assert restored.nbytes == pair[1].nbytes == vae.cache_nbytes(*GRID)
    assert torch.equal(vae.decode_chunk(z[1:, :, 3:4], [pair[1]]), vae.decode_chunk(z[1:, :, 3:4], [restored]))

    # sessions at different points (caches of different layouts) in one call: decoded group by group
    early, late = [vae.new_cache()], [vae.new_cache()]
    vae.decode_chunk(z[:1, :, :1], early)
    for a, b in CHUNKS[:3]:
        vae.decode_chunk(z[1:, :, a:b], late)
    want = torch.cat(
        [vae.decode_float(z[:1, :, 1:2], [early[0].clone()]), vae.decode_float(z[1:, :, 4:5], [late[0].clone()])]
    )
    got = vae.decode_float(torch.cat([z[:1, :, 1:2], z[1:, :, 4:5]]), [early[0], late[0]])
    assert torch.equal(got, want)
    assert (early[0].frames, late[0].frames) == (2, 5)

    with pytest.raises(ValueError, match="mixes"):  # a first chunk gives fewer frames than a later one
        vae.decode_chunk(z[:, :, :1], [vae.new_cache(), late[0]])
    with pytest.raises(ValueError, match="decode caches"):
        vae.decode_chunk(z[:, :, :1], [vae.new_cache()])
    with pytest.raises(ValueError, match="latent grid"):
        vae.decode_chunk(_latents(1, 1, grid=(2, 2)), [late[0]])


def test_encode_first_is_the_deterministic_mode(vae):
    frames = torch.randint(0, 256, (2, 24, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    z = vae.encode_first(frames)
    assert z.shape == (2, 4, 1, 3, 4) and z.dtype == torch.float32 and z.device.type == "cpu"
    assert torch.equal(z, vae.encode_first(frames))
    x = frames.permute(0, 3, 1, 2).unsqueeze(2).float() / 127.5 - 1.0  # (N, 3, 1, H, W)
    with torch.no_grad():
        want = vae.normalise(vae.vae.encode(x).latent_dist.mode())
    assert (z - want).abs().max().item() <= TOL
    with pytest.raises(ValueError, match="multiple"):
        vae.encode_first(frames[:, :20])
    with pytest.raises(ValueError, match="uint8"):
        vae.encode_first(frames.float())


def test_wan22_layout_streams_too():
    """Wan2.2's VAE layout (residual blocks, 2x2 patches: spatial x16) through the same streaming path."""
    v = StreamingWanVAE.random(tiny_vae_config(is_residual=True, patch_size=2), seed=1)
    assert (v.scale, v.temporal) == (16, 4)
    z = _latents(1, 4, seed=5, grid=(2, 2))
    ref = _reference(v, z)
    got = torch.cat(
        [v.decode_float(z[:, :, a:b], c) for c in [[v.new_cache()]] for a, b in [(0, 1), (1, 2), (2, 4)]], 2
    )
    assert got.shape == ref.shape == (1, 3, 13, 32, 32)
    assert (got - ref).abs().max().item() <= TOL
    assert v.encode_first(torch.zeros(1, 32, 32, 3, dtype=torch.uint8)).shape == (1, 4, 1, 2, 2)


# --- the published folder layout ---------------------------------------------------------------------


def test_folder_round_trip(vae, tmp_path):
    folder = vae.save_folder(tmp_path / "vae")
    data = json.loads((folder / CONFIG_FILE).read_text())
    assert data["_class_name"] == "AutoencoderKLWan" and data["z_dim"] == 4
    loaded = StreamingWanVAE.from_folder(folder)
    z = _latents(1, 2, seed=6)
    assert torch.equal(vae.decode_float(z, [vae.new_cache()]), loaded.decode_float(z, [loaded.new_cache()]))

    # sharded weights (diffusers' index + shards) load the same
    state = load_file(folder / WEIGHTS_FILE)
    names = sorted(state)
    shards = {"a.safetensors": names[: len(names) // 2], "b.safetensors": names[len(names) // 2 :]}
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / CONFIG_FILE).write_text((folder / CONFIG_FILE).read_text())
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, sharded / file)
    index = {"weight_map": {k: file for file, keys in shards.items() for k in keys}}
    (sharded / (WEIGHTS_FILE + ".index.json")).write_text(json.dumps(index))
    loaded = StreamingWanVAE.from_folder(sharded)
    assert torch.equal(vae.decode_float(z, [vae.new_cache()]), loaded.decode_float(z, [loaded.new_cache()]))


def test_folder_faults_name_the_file_and_the_tensor_or_field(vae, tmp_path):
    good = vae.save_folder(tmp_path / "good")
    state = load_file(good / WEIGHTS_FILE)
    config = json.loads((good / CONFIG_FILE).read_text())

    def folder(name: str, cfg: dict, tensors: dict) -> str:
        f = tmp_path / name
        f.mkdir()
        (f / CONFIG_FILE).write_text(json.dumps(cfg))
        save_file(tensors, f / WEIGHTS_FILE)
        return str(f)

    gone = "decoder.up_blocks.1.resnets.0.conv1.weight"
    path = folder("missing", config, {k: v for k, v in state.items() if k != gone})
    with pytest.raises(ModelLoadError, match=f"{path}/{WEIGHTS_FILE}.*{gone}.*missing"):
        StreamingWanVAE.from_folder(path)

    bad = "encoder.conv_in.weight"
    path = folder("shape", config, {**state, bad: torch.zeros(3, 3)})
    with pytest.raises(ModelLoadError, match=rf"{path}/{WEIGHTS_FILE}.*{bad}.*\(3, 3\)"):
        StreamingWanVAE.from_folder(path)

    path = folder("extra", config, {**state, "decoder.extra.weight": torch.zeros(1)})
    with pytest.raises(ModelLoadError, match="unexpected tensor 'decoder.extra.weight'"):
        StreamingWanVAE.from_folder(path)

    path = folder("field", {**config, "base_dims": 8}, state)
    with pytest.raises(ModelLoadError, match=f"{path}/{CONFIG_FILE}.*unknown VAE config field 'base_dims'"):
        StreamingWanVAE.from_folder(path)

    path = folder("class", {**config, "_class_name": "AutoencoderKL"}, state)
    with pytest.raises(ModelLoadError, match=f"{path}/{CONFIG_FILE}.*_class_name"):
        StreamingWanVAE.from_folder(path)

    path = folder("stats", {**config, "latents_std": [1.0]}, state)
    with pytest.raises(ModelLoadError, match="latents_std"):
        StreamingWanVAE.from_folder(path)

    pickles = tmp_path / "pickles"
    pickles.mkdir()
    (pickles / CONFIG_FILE).write_text(json.dumps(config))
    (pickles / "Wan2.1_VAE.pth").write_bytes(b"\x80\x04not read")
    with pytest.raises(ModelLoadError, match=r"Wan2.1_VAE.pth.*never read.*convert"):
        StreamingWanVAE.from_folder(pickles)

    path = folder("notsafetensors", config, {})
    (tmp_path / "notsafetensors" / WEIGHTS_FILE).write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match=f"{path}/{WEIGHTS_FILE}.*not a safetensors file"):
        StreamingWanVAE.from_folder(path)
    with pytest.raises(ModelLoadError, match="not found"):
        StreamingWanVAE.from_folder(tmp_path / "nowhere")
