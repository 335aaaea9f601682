"""The world model with Triton attention (interpreted) makes the same frames as with SDPA.

Runs the real ``WorldModel`` end to end -- encode, ``prefill`` (frame-causal ``attention``, padded,
for one session; ``attention_varlen``, ragged, for ``prefill_many``), batched ``step`` over
sessions with uneven windows through the *paged* decode path (``attention_decode`` with the
model's page pool and block table, QK-norm + RoPE fused, K/V written by the commit pass), with
CFG, windows sliding past ``context_frames``, ``decode`` -- once with ``use_backend("sdpa")`` and
once with ``use_backend("triton")``. A spy on ``flash_decode`` and ``attention.decode_counts``
prove that the paged Triton kernel (not the torch reference) served every decode call.

Tolerance: latents and cached keys within 1e-4 absolute (both backends compute in fp32; the
kernels' summation order differs and the difference passes through every layer, sampler step and
CFG mix; observed ~1e-6); decoded uint8 frames within 1 level. Few sampler steps per frame (two
on the small model, one on the default-sized one) keep the interpreted run short.
"""

from __future__ import annotations

import pytest
import torch

model_mod = pytest.importorskip("worldserve.dynamics.models.transformer")
from worldserve.dynamics.attention import backend as A  # noqa: E402
from worldserve.dynamics.attention.backend import use_backend  # noqa: E402
from worldserve.dynamics.attention.kernels import flash_decode, flash_prefill  # noqa: E402

# 32x32 frames -> 4x4 latent grid (16 tokens per frame = one page), head dim 32, window of 3 frames
SMALL = model_mod.WorldModelConfig(
    frame_height=32,
    frame_width=32,
    latent_channels=4,
    ae_channels=8,
    dim=64,
    n_layers=2,
    n_heads=2,
    context_frames=3,
    sample_steps=2,
)


def _rollout(model, frames, acts, rounds):
    z = model.encode(frames)  # (5, C, h, w)
    # three sessions: windows of 1 and 2 frames, and 5 frames (past the window: prefill streams the tail)
    states = [model.prefill(z[:1], acts[:1], first_step=0)]
    states += model.prefill_many([z[:2], z[:5]], [acts[:2], acts[:5]], [0, 0])  # packed ragged
    lat = []
    for i in range(rounds):  # the windows fill and then slide (rotating pages)
        steps = [model.state_step(s) + 1 for s in states]
        g = 2.0 if i % 2 == 0 else 1.0  # with CFG (two branches share the pages) and without
        lat.append(model.step(states, acts[i % 5 : i % 5 + 1].repeat(3, 1), seeds=[7, 8, 9], steps=steps, guidance=g))
    lat = torch.cat(lat)
    return lat, model.decode(lat), states


# the default model's shapes (frames of 64 tokens = one page, head dim 64), one sampler step: the
# interpreter is slow at this size
DEFAULT_1STEP = model_mod.WorldModelConfig(sample_steps=1)


@pytest.mark.parametrize("config", [SMALL, DEFAULT_1STEP], ids=["small-d32", "default-d64"])
def test_model_with_triton_attention_matches_sdpa(monkeypatch, config):
    model = model_mod.WorldModel.random(config, seed=0)
    c = model.config
    rounds = 4 if config is SMALL else 1
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (5, c.frame_height, c.frame_width, 3), dtype=torch.uint8, generator=g)
    acts = torch.stack(
        [
            model.null_action(),
            model.action_vector(["left"]),
            model.action_vector(["jump"]),
            model.action_vector(["right", "fire"]),
            model.action_vector([]),
        ]
    )
    if config is DEFAULT_1STEP:
        model.configure_state_pool(3 * c.context_frames * model.page_nbytes)  # 3 sessions, no more

    with use_backend("sdpa"):
        assert model.runtime.attention_backend == "sdpa" and model.runtime.decode_kernel == "sdpa"
        lat_ref, frames_ref, states_ref = _rollout(model, frames, acts, rounds)
        assert model.last_step_attention == ("sdpa", "sdpa")
        kv_ref = [model.state_kv(s, -1)[0] for s in states_ref]
        for s in states_ref:
            model.release_state(s)

    launches = []
    real_decode = flash_decode.flash_decode
    monkeypatch.setattr(
        flash_decode,
        "flash_decode",
        lambda *a, **k: (
            launches.append("flash_decode_paged" if k.get("block_table") is not None else "flash_decode"),
            real_decode(*a, **k),
        )[1],
    )
    for name in ("flash_attention", "flash_attention_varlen"):
        real = getattr(flash_prefill, name)
        monkeypatch.setattr(
            flash_prefill, name, lambda *a, _r=real, _n=name, **k: (launches.append(_n), _r(*a, **k))[1]
        )
    before = A.decode_counts()
    with use_backend("triton"):
        assert model.runtime.attention_backend == "triton" and model.runtime.decode_kernel == "flash_decode_paged"
        lat, frames_out, states = _rollout(model, frames, acts, rounds)
        assert model.last_step_attention == ("triton", "flash_decode_paged")
    after = A.decode_counts()

    ran = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    assert {k for k, n in ran.items() if n} == {("triton", "flash_decode_paged")}  # no decode call fell back
    assert ran[("triton", "flash_decode_paged")] == launches.count("flash_decode_paged") > 0
    assert "flash_decode" not in launches  # every decode went through the block table
    assert "flash_attention" in launches  # the single-session prefill window
    assert "flash_attention_varlen" in launches  # prefill_many's packed windows
    assert torch.isfinite(lat).all()
    torch.testing.assert_close(lat, lat_ref, atol=1e-4, rtol=0)
    assert (frames_out.int() - frames_ref.int()).abs().max() <= 1
    for s, k_ref in zip(states, kv_ref):
        torch.testing.assert_close(model.state_kv(s, -1)[0], k_ref, atol=1e-4, rtol=0)
    if config is SMALL:
        assert [s.n_frames for s in states] == [2, 2, 2]  # windows full, pages rotated


def test_fused_prologue_is_the_models_qk_norm_and_rope():
    """What the kernels fuse on load is exactly what the model's blocks do before attention:
    ``Block.qkv_heads`` (QK RMSNorm with the block's weights, RoPE with ``transformer.rope``'s
    per-token tables) followed by frame-causal attention == the kernel on the raw q/k with the
    same weights and tables."""
    from worldserve.dynamics.attention.kernels.flash_prefill import flash_attention

    model = model_mod.WorldModel.random(seed=0)
    c, tr = model.config, model.transformer
    blk = tr.blocks[0]
    with torch.no_grad():
        blk.q_norm.copy_(torch.rand(c.head_dim) + 0.5)  # non-trivial weights
        blk.k_norm.copy_(torch.rand(c.head_dim) + 0.5)
        frames = 3
        x = torch.randn(1, frames * c.frame_tokens, c.dim)
        cos, sin = tr.rope(torch.arange(40, 40 + frames)[None])  # (1, T, D/2)
        q, k, v = blk.qkv_heads(x, cos, sin)  # normed + rotated, (B, T, H, D)
        want = flash_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), frame_tokens=c.frame_tokens, mask="frame_causal"
        )
        raw = blk.qkv(blk.norm1(x)).view(1, -1, 3, c.n_heads, c.head_dim).unbind(2)
        got = flash_attention(
            *(t.transpose(1, 2) for t in raw),
            frame_tokens=c.frame_tokens,
            mask="frame_causal",
            q_norm_weight=blk.q_norm,
            k_norm_weight=blk.k_norm,
            norm_eps=blk.eps,
            rope_cos=cos,
            rope_sin=sin,
        )
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
