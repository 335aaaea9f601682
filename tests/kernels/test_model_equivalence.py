"""The world model with Triton attention (interpreted) makes the same frames as with SDPA.

Runs the real ``WorldModel`` (default config: 8x8 latent grid = 64 tokens per frame, head dim 64)
end to end -- encode, a frame-causal ``prefill`` (``attention``, padded), batched ``step`` over
sessions with uneven caches (``attention_varlen``, ragged, one launch per layer and pass),
``decode`` -- once with ``use_backend("sdpa")`` and once with ``use_backend("triton")``.

Tolerance: latents and cached keys within 1e-4 absolute (both backends compute in fp32; the
kernels' summation order differs and the difference passes through every layer, sampler step and
CFG mix; observed ~2e-7); decoded uint8 frames within 1 level. Two sampler steps per frame keep the
interpreted run short.
"""

from __future__ import annotations

import pytest
import torch

model_mod = pytest.importorskip("worldserve.dynamics.model")
from worldserve.dynamics.kernels import flash_prefill  # noqa: E402
from worldserve.dynamics.model.attention import use_backend  # noqa: E402


def _rollout(model, frames, acts):
    z = model.encode(frames)  # (3, C, h, w)
    # two sessions with caches of 1 and 3 frames
    caches = [model.prefill(z[:1], acts[:1], first_step=0), model.prefill(z, acts[:3], first_step=0)]
    lat = []
    for i in range(2):
        steps = [c.last_step + 1 for c in caches]
        lat.append(model.step(caches, acts[3 + i: 4 + i].repeat(2, 1), seeds=[7, 8], steps=steps, sample_steps=2))
    lat = torch.cat(lat)
    return lat, model.decode(lat), caches


def test_model_with_triton_attention_matches_sdpa(monkeypatch):
    model = model_mod.WorldModel.random(seed=0)
    c = model.config
    g = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 256, (3, c.frame_height, c.frame_width, 3), dtype=torch.uint8, generator=g)
    acts = torch.stack([model.null_action(), model.action_vector(["left"]), model.action_vector(["jump"]),
                        model.action_vector(["right", "fire"]), model.action_vector([])])

    with use_backend("sdpa"):
        lat_ref, frames_ref, caches_ref = _rollout(model, frames, acts)

    launches = []
    for name in ("flash_attention", "flash_attention_varlen"):
        real = getattr(flash_prefill, name)
        monkeypatch.setattr(flash_prefill, name,
                            lambda *a, _r=real, _n=name, **k: (launches.append(_n), _r(*a, **k))[1])
    with use_backend("triton"):
        lat, frames_out, caches = _rollout(model, frames, acts)

    assert "flash_attention" in launches and "flash_attention_varlen" in launches  # both paths really ran
    assert torch.isfinite(lat).all()
    torch.testing.assert_close(lat, lat_ref, atol=1e-4, rtol=0)
    assert (frames_out.int() - frames_ref.int()).abs().max() <= 1
    for a, b in zip(caches, caches_ref):
        torch.testing.assert_close(a.k[-1], b.k[-1], atol=1e-4, rtol=0)


def test_fused_prologue_is_the_models_qk_norm_and_rope():
    """What the kernels fuse on load is exactly what the model's blocks do before attention:
    ``Block.qkv_heads`` (QK RMSNorm with the block's weights, RoPE with ``transformer.rope``'s
    per-token tables) followed by frame-causal attention == the kernel on the raw q/k with the
    same weights and tables."""
    from worldserve.dynamics.kernels.flash_prefill import flash_attention

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
        want = flash_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                               frame_tokens=c.frame_tokens, mask="frame_causal")
        raw = blk.qkv(blk.norm1(x)).view(1, -1, 3, c.n_heads, c.head_dim).unbind(2)
        got = flash_attention(*(t.transpose(1, 2) for t in raw), frame_tokens=c.frame_tokens, mask="frame_causal",
                              q_norm_weight=blk.q_norm, k_norm_weight=blk.k_norm, norm_eps=blk.eps,
                              rope_cos=cos, rope_sin=sin)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
