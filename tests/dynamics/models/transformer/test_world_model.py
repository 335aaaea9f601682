"""WorldModel: shapes, determinism, batching, prefill vs streaming, sliding window, persistence."""

from __future__ import annotations

import json
import math

import pytest
import torch

from worldserve.dynamics.models.transformer import PagedState, WorldModel, WorldModelConfig, noise_seed
from worldserve.dynamics.models.transformer.sampler import initial_noise, time_grid
from worldserve.dynamics.models.transformer.transformer import apply_rope, rope_cos_sin

# A tiny config for the logic tests: 32x32 frames -> 4x4 latent grid (16 tokens), window of 4 frames.
TINY = WorldModelConfig(
    frame_height=32, frame_width=32, latent_channels=4, ae_channels=8, dim=64, n_layers=2, n_heads=2, context_frames=4
)


@pytest.fixture(scope="module")
def tiny() -> WorldModel:
    return WorldModel.random(TINY, seed=0)


@pytest.fixture(scope="module")
def default() -> WorldModel:
    return WorldModel.random(seed=0)


def latents(model: WorldModel, n: int, seed: int = 0) -> torch.Tensor:
    c = model.config
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c.latent_channels, c.latent_height, c.latent_width, generator=g)


def actions(model: WorldModel, n: int, seed: int = 0) -> torch.Tensor:
    """(n, A) random multi-hot keys + mouse values; row 0 the null action (frame 0)."""
    g = torch.Generator().manual_seed(seed)
    k, m = len(model.config.keys), len(model.config.mouse_axes)
    a = torch.cat([(torch.rand(n, k, generator=g) < 0.3).float(), torch.rand(n, m, generator=g) * 2 - 1], dim=1)
    a[0] = model.null_action()
    return a


# --------------------------------------------------------------------------------------------------
# config


def test_config_defaults_and_derived_sizes():
    c = WorldModelConfig()
    assert (c.latent_height, c.latent_width, c.frame_tokens, c.head_dim) == (8, 8, 64, 64)
    assert c.action_dim == 8
    assert c.keys == ("left", "right", "up", "down", "jump", "fire")


@pytest.mark.parametrize(
    "kwargs, quoted",
    [
        ({"frame_height": 60}, "60"),  # not a multiple of downsample
        ({"downsample": 6}, "6"),
        ({"dim": 250}, "250"),
        ({"n_layers": 0}, "0"),
        ({"context_frames": 1}, "1"),
        ({"guidance": float("nan")}, "nan"),
        ({"guidance": -1.0}, "-1.0"),
        ({"cfg_dropout_p": 1.0}, "1.0"),
        ({"sample_steps": 0}, "0"),
        ({"keys": ("left", "left")}, "left"),
        ({"keys": ("left",), "mouse_axes": ("left",)}, "left"),
        ({"keys": (), "mouse_axes": ()}, "empty"),
        ({"n_heads": True}, "True"),
    ],
)
def test_config_rejects_bad_values_and_quotes_them(kwargs, quoted):
    with pytest.raises(ValueError, match=quoted):
        WorldModelConfig(**kwargs)


def test_config_json_roundtrip():
    c = WorldModelConfig(keys=("a", "b"), mouse_axes=(), guidance=3.5)
    d = json.loads(json.dumps(c.to_dict()))
    assert d["keys"] == ["a", "b"]
    assert WorldModelConfig.from_dict(d) == c
    with pytest.raises(ValueError, match="bogus"):
        WorldModelConfig.from_dict({**d, "bogus": 1})


# --------------------------------------------------------------------------------------------------
# actions


def test_action_vector(default):
    assert default.action_dim == 8
    v = default.action_vector(["left", "jump"], {"mouse_y": -0.5})
    assert v.dtype == torch.float32 and v.shape == (8,)
    assert v.tolist() == [1, 0, 0, 0, 1, 0, 0, -0.5]
    assert torch.equal(default.action_vector([]), default.null_action())
    assert torch.equal(default.null_action(), torch.zeros(8))


@pytest.mark.parametrize(
    "keys, mouse, pattern",
    [
        (["jmp"], None, r"unknown key 'jmp'; expected one of \('left'"),
        ("left", None, "'left'"),
        ([], {"wheel": 0.1}, "unknown mouse axis 'wheel'"),
        ([], {"mouse_x": 1.5}, "1.5"),
        ([], {"mouse_x": float("nan")}, "nan"),
        ([], {"mouse_x": float("inf")}, "inf"),
        ([], {"mouse_x": "left"}, "'left'"),
    ],
)
def test_action_vector_errors(default, keys, mouse, pattern):
    with pytest.raises(ValueError, match=pattern):
        default.action_vector(keys, mouse)


def test_mouse_axes_may_be_empty():
    m = WorldModel.random(WorldModelConfig(**{**TINY.to_dict(), "mouse_axes": []}))
    assert m.action_dim == 6
    with pytest.raises(ValueError, match="mouse_x"):
        m.action_vector([], {"mouse_x": 0.0})


# --------------------------------------------------------------------------------------------------
# autoencoder


def test_encode_decode_shapes_and_determinism(default):
    frames = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    z = default.encode(frames)
    assert z.shape == (3, 8, 8, 8) and z.dtype == torch.float32
    assert torch.equal(z, default.encode(frames))
    # per-frame: a frame's latents do not depend on the rest of the batch
    torch.testing.assert_close(default.encode(frames[1:2])[0], z[1], atol=1e-5, rtol=0)
    out = default.decode(z)
    assert out.shape == (3, 64, 64, 3) and out.dtype == torch.uint8
    assert torch.equal(out, default.decode(z))
    assert out.float().std() > 10  # an untrained decoder still gives frames with contrast


def test_encode_decode_reject_bad_input(default):
    with pytest.raises(ValueError, match="uint8"):
        default.encode(torch.zeros(1, 64, 64, 3))
    with pytest.raises(ValueError, match=r"\(1, 32, 64, 3\)"):
        default.encode(torch.zeros(1, 32, 64, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(1, 8, 4, 4\)"):
        default.decode(torch.zeros(1, 8, 4, 4))


# --------------------------------------------------------------------------------------------------
# sampler pieces


def test_noise_seed_is_stable_and_batch_independent():
    # hard-coded: the noise of a step must not change across processes, machines or releases
    assert noise_seed(1, 2) == 4169594941497429085
    assert noise_seed(2**64 - 1, 10**9) == 386244941130719949
    assert noise_seed(1, 2) != noise_seed(2, 1)
    alone = initial_noise([5], [7], (4, 4, 4))
    batched = initial_noise([1, 5, 9], [7, 7, 7], (4, 4, 4))
    assert torch.equal(alone[0], batched[1])
    assert not torch.equal(batched[0], batched[1])
    assert time_grid(4) == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_rope_scores_depend_only_on_offset():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 2, 64, generator=g), torch.randn(1, 1, 2, 64, generator=g)

    def score(pq: int, pk: int) -> torch.Tensor:
        cq, sq = rope_cos_sin(torch.tensor([[pq]]), 64, 10000.0, torch.float32)
        ck, sk = rope_cos_sin(torch.tensor([[pk]]), 64, 10000.0, torch.float32)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum(-1)

    torch.testing.assert_close(score(5, 2), score(3, 0), atol=1e-5, rtol=0)
    torch.testing.assert_close(score(10**6 + 5, 10**6 + 2), score(3, 0), atol=1e-4, rtol=0)  # float64 angles
    assert (score(5, 2) - score(5, 4)).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------------
# prefill and step


def test_prefill_and_step_shapes(default):
    c = default.config
    z, a = latents(default, 3), actions(default, 4)
    cache = default.prefill(z, a[:3], first_step=0)
    assert isinstance(cache, PagedState)
    assert (cache.n_frames, cache.last_step, len(cache.pages)) == (3, 2, c.context_frames)
    assert default.state_kv(cache, 0)[0].shape == (c.n_heads, 3 * c.frame_tokens, c.head_dim)
    out = default.step([cache], a[3:4], seeds=[0], steps=[3])
    assert out.shape == (1, 8, 8, 8) and out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (cache.n_frames, cache.last_step) == (4, 3)
    assert default.decode(out).shape == (1, 64, 64, 3)


def test_step_is_deterministic_and_depends_on_actions_and_seed(default):
    z, a = latents(default, 2), actions(default, 2)

    def rollout(keys: list[list[str]], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        cache = default.prefill(z, a, first_step=0)
        outs = [default.step([cache], default.action_vector(k)[None], [seed], [cache.last_step + 1]) for k in keys]
        lat = torch.cat(outs)
        return lat, default.decode(lat)

    lat1, frames1 = rollout([["left"], ["left", "jump"], []], seed=42)
    lat2, frames2 = rollout([["left"], ["left", "jump"], []], seed=42)
    assert torch.equal(lat1, lat2) and torch.equal(frames1, frames2)  # bitwise

    lat3, frames3 = rollout([["right"], ["left", "jump"], []], seed=42)
    assert torch.equal(lat1[:0], lat3[:0])
    assert (lat1[0] - lat3[0]).abs().max() > 1e-2  # the action changes the frame it makes...
    assert (frames1[0].float() - frames3[0].float()).abs().mean() > 0.5
    assert (lat1[1] - lat3[1]).abs().max() > 1e-3  # ...and, through the cache, later frames

    lat4, _ = rollout([["left"], ["left", "jump"], []], seed=43)
    assert (lat1 - lat4).abs().max() > 0.1


def test_guidance_and_sample_steps_change_the_result(tiny):
    z, a = latents(tiny, 2), actions(tiny, 3)

    def one(**kw) -> torch.Tensor:
        return tiny.step([tiny.prefill(z, a[:2], 0)], a[2:3], [1], [2], **kw)

    base = one()
    assert torch.equal(base, one(guidance=TINY.guidance, sample_steps=TINY.sample_steps))
    assert (base - one(guidance=1.0)).abs().max() > 1e-3  # 1.0 = conditional only
    assert (base - one(guidance=0.0)).abs().max() > 1e-3  # 0.0 = unconditional only
    assert (base - one(sample_steps=1)).abs().max() > 1e-3


def test_batched_step_matches_individual_steps_with_uneven_caches(tiny):
    # caches of 1, 2 and 3 frames (the window is 3 past frames), different seeds and actions
    z, a = latents(tiny, 3), actions(tiny, 6, seed=1)
    lengths = [1, 3, 2]
    solo = [tiny.prefill(z[:n], a[:n], 0) for n in lengths]
    batch = [tiny.prefill(z[:n], a[:n], 0) for n in lengths]
    seeds = [11, 12, 13]
    for round_ in range(3):  # keep going past the window so the caches slide unevenly
        acts = a[3 + round_ : 4 + round_].repeat(3, 1)
        acts[1] = tiny.null_action()
        want = torch.cat([tiny.step([c], acts[i : i + 1], [seeds[i]], [c.last_step + 1]) for i, c in enumerate(solo)])
        got = tiny.step(batch, acts, seeds, [c.last_step + 1 for c in batch])
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
        for s, b in zip(solo, batch):
            assert (s.n_frames, s.last_step) == (b.n_frames, b.last_step)
            torch.testing.assert_close(tiny.state_kv(b, -1)[0], tiny.state_kv(s, -1)[0], atol=1e-4, rtol=0)
    assert [c.n_frames for c in batch] == [3, 3, 3]


def test_batched_step_matches_individual_on_the_default_model(default):
    z, a = latents(default, 4), actions(default, 5)
    solo = [default.prefill(z[:n], a[:n], 0) for n in (1, 4)]
    batch = [default.prefill(z[:n], a[:n], 0) for n in (1, 4)]
    want = torch.cat([default.step([c], a[4:5], [3], [c.last_step + 1]) for c in solo])
    got = default.step(batch, a[4:5].repeat(2, 1), [3, 3], [c.last_step + 1 for c in batch])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_prefill_then_step_equals_streaming_within_the_window(tiny):
    z0, a = latents(tiny, 1), actions(tiny, 4, seed=2)
    stream = tiny.prefill(z0, a[:1], first_step=0)
    frames = [z0]
    for s in (1, 2):
        frames.append(tiny.step([stream], a[s : s + 1], [5], [s]))
    rebuilt = tiny.prefill(torch.cat(frames), a[:3], first_step=0)  # the stored window, re-prefilled
    for layer in range(TINY.n_layers):
        (rk, rv), (sk, sv) = tiny.state_kv(rebuilt, layer), tiny.state_kv(stream, layer)
        torch.testing.assert_close(rk, sk, atol=1e-4, rtol=0)
        torch.testing.assert_close(rv, sv, atol=1e-4, rtol=0)
    got = tiny.step([rebuilt], a[3:4], [5], [3])
    want = tiny.step([stream], a[3:4], [5], [3])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_prefill_longer_than_the_window_streams_the_tail(tiny):
    # prefill of 6 frames == prefill of the first 4 then committing 2 more by streaming steps
    z0, a = latents(tiny, 1), actions(tiny, 6, seed=3)
    stream = tiny.prefill(z0, a[:1], 0)
    frames = [z0] + [tiny.step([stream], a[s : s + 1], [9], [s]) for s in range(1, 6)]
    rebuilt = tiny.prefill(torch.cat(frames), a, 0)
    assert (rebuilt.n_frames, rebuilt.last_step) == (3, 5)
    torch.testing.assert_close(tiny.state_kv(rebuilt, 0)[0], tiny.state_kv(stream, 0)[0], atol=1e-4, rtol=0)


def test_sliding_window_keeps_the_cache_bounded(tiny):
    z, a = latents(tiny, 1), actions(tiny, 2)
    cache = tiny.prefill(z, a[:1], 0)
    sizes = []
    for s in range(1, 12):
        tiny.step([cache], a[1:2], [0], [s])
        sizes.append(cache.n_frames)
        assert tiny.state_kv(cache, 0)[0].shape[1] == cache.n_frames * TINY.frame_tokens
    assert sizes == [2, 3] + [3] * 9  # context_frames - 1 past frames
    assert (cache.last_step, cache.first_step) == (11, 9)
    # context_frames pages (the window plus the spare) of one frame's K and V in every layer
    assert (
        tiny.state_nbytes(cache)
        == TINY.context_frames * 2 * TINY.n_layers * TINY.n_heads * TINY.frame_tokens * TINY.head_dim * 4
    )
    # prefill keeps only the last context_frames - 1 frames
    long = tiny.prefill(latents(tiny, 7), actions(tiny, 7), 0)
    assert (long.n_frames, long.first_step, long.last_step) == (3, 4, 6)


def test_only_relative_frame_positions_matter(tiny, monkeypatch):
    # the same window at steps 1..3 and at 1001..1003 gives the same next frame: RoPE on the
    # absolute frame index makes scores depend on offsets only. Frame 0 is special (first-frame
    # embedding), so both windows avoid it; the noise is keyed by step, so make it step-independent.
    from worldserve.dynamics.models.transformer import inference

    real = inference.initial_noise
    monkeypatch.setattr(
        inference, "initial_noise", lambda seeds, steps, shape, **kw: real(seeds, [0] * len(steps), shape, **kw)
    )
    z, a = latents(tiny, 3), actions(tiny, 4, seed=4)
    early = tiny.step([tiny.prefill(z, a[:3], first_step=1)], a[3:4], [0], [4])
    late = tiny.step([tiny.prefill(z, a[:3], first_step=1001)], a[3:4], [0], [1004])
    torch.testing.assert_close(late, early, atol=1e-4, rtol=0)
    from_zero = tiny.step([tiny.prefill(z, a[:3], first_step=0)], a[3:4], [0], [3])
    assert (from_zero - early).abs().max() > 1e-3  # but frame 0 is special


def test_step_rejects_bad_input(tiny):
    z, a = latents(tiny, 2), actions(tiny, 2)
    cache = tiny.prefill(z, a, 0)
    act = a[1:2]
    with pytest.raises(ValueError, match="last step is 1; expected 2"):
        tiny.step([cache], act, [0], [5])
    with pytest.raises(ValueError, match="twice"):
        tiny.step([cache, cache], act.repeat(2, 1), [0, 0], [2, 2])
    with pytest.raises(ValueError, match="empty batch"):
        tiny.step([], act[:0], [], [])
    with pytest.raises(ValueError, match="must match"):
        tiny.step([cache], act, [0, 1], [2])
    with pytest.raises(ValueError, match=r"shape \(1, 8\)"):
        tiny.step([cache], act[:, :3], [0], [2])
    with pytest.raises(ValueError, match="1.5"):
        tiny.step([cache], torch.full((1, 8), 1.5), [0], [2])
    with pytest.raises(ValueError, match="nan"):
        tiny.step([cache], act, [0], [2], guidance=float("nan"))
    with pytest.raises(ValueError, match="0"):
        tiny.step([cache], act, [0], [2], sample_steps=0)
    with pytest.raises(ValueError, match="first_step"):
        tiny.prefill(z, a, -1)
    assert (cache.n_frames, cache.last_step) == (2, 1)  # failed calls left the cache alone


def test_cache_clone_forks_a_session(tiny):
    z, a = latents(tiny, 2), actions(tiny, 3)
    cache = tiny.prefill(z, a[:2], 0)
    fork = tiny.clone_state(cache)
    x1 = tiny.step([cache], a[2:3], [3], [2])
    x2 = tiny.step([fork], a[2:3], [3], [2])
    assert torch.equal(x1, x2)
    assert not set(fork.pages) & set(cache.pages)


# --------------------------------------------------------------------------------------------------
# construction, persistence, training


def test_random_is_deterministic_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    m1, m2, m3 = WorldModel.random(TINY, seed=1), WorldModel.random(TINY, seed=1), WorldModel.random(TINY, seed=2)
    assert torch.equal(torch.random.get_rng_state(), state)
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not torch.equal(s1["transformer.head.weight"], s3["transformer.head.weight"])


def test_save_load_roundtrip_gives_identical_outputs(tmp_path, tiny):
    tiny.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    loaded = WorldModel.from_pretrained(tmp_path / "m")
    assert loaded.config == tiny.config
    z, a = latents(tiny, 2), actions(tiny, 3)
    want = tiny.step([tiny.prefill(z, a[:2], 0)], a[2:3], [7], [2])
    got = loaded.step([loaded.prefill(z, a[:2], 0)], a[2:3], [7], [2])
    assert torch.equal(got, want)
    assert torch.equal(loaded.decode(got), tiny.decode(want))
    with pytest.raises(FileNotFoundError, match="config.json"):
        WorldModel.from_pretrained(tmp_path / "missing")


def test_training_loss_backpropagates_and_decreases(tiny):
    model = WorldModel.random(TINY, seed=3)
    model.train()
    z = latents(model, 8).view(2, 4, *latents(model, 1).shape[1:])
    a = actions(model, 8).view(2, 4, -1)
    opt = torch.optim.Adam(model.transformer.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(z, a, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert math.isfinite(losses[0]) and losses[-1] < 0.8 * losses[0]
    assert model.transformer.action_mlp[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="at most context_frames=4"):
        model(latents(model, 5)[None], actions(model, 5)[None])
