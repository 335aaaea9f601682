"""CausalWanTransformer against diffusers' WanTransformer3DModel, the frame mask and the streaming seam."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from worldserve.dynamics.models.causal_dit.actions import FrameActions
from worldserve.dynamics.models.causal_dit.config import WanTransformerConfig
from worldserve.dynamics.models.causal_dit.network import (
    CausalWanTransformer,
    block_causal_frame_mask,
    chunk_start,
    pad_text,
    sdpa_self_attention,
    token_mask,
)
from worldserve.dynamics.models.causal_dit.testing import tiny_action_config, tiny_config

diffusers = pytest.importorskip("diffusers")

TINY = tiny_config(actions=False, text_dim=32)
ACTIONS = tiny_action_config()


def _randomise(net: torch.nn.Module, seed: int) -> None:
    """Every parameter random (zero-initialised projections and norms included), so nothing hides."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _pair(config: WanTransformerConfig, seed: int = 0):
    ref = diffusers.WanTransformer3DModel(**config.diffusers_kwargs()).eval()
    _randomise(ref, seed)
    net = CausalWanTransformer(config).eval()
    net.load_state_dict(ref.state_dict(), strict=True)
    return ref, net


@pytest.mark.parametrize(
    "config",
    [TINY, dataclasses.replace(TINY, cross_attn_norm=False, qk_norm=None, patch_size=(1, 1, 2), eps=1e-5)],
    ids=["cross_attn_norm", "no_cross_attn_norm"],
)
def test_forward_equals_diffusers(config: WanTransformerConfig) -> None:
    ref, net = _pair(config)
    g = torch.Generator().manual_seed(1)
    B, Fr, H, W = 2, 3, 8, 8
    latents = torch.randn(B, 4, Fr, H, W, generator=g)  # (B, C, F, H, W)
    text = torch.randn(B, 7, 32, generator=g)  # (B, L, text_dim)
    tokens_per_frame = (H // config.patch_size[1]) * (W // config.patch_size[2])
    with torch.no_grad():
        # one timestep per sample
        t = torch.tensor([937.0, 250.0])  # (B,)
        want = ref(latents, t, text, return_dict=False)[0]  # (B, C, F, H, W)
        got = net(latents, t, text)
        assert got.shape == want.shape == (B, 4, Fr, H, W)
        assert (got - want).abs().max().item() < 1e-4
        # one timestep per latent frame: diffusers takes it per token (B, N)
        tf = torch.tensor([[1000.0, 500.0, 0.0], [3.0, 750.0, 999.0]])  # (B, F)
        want = ref(latents, tf.repeat_interleave(tokens_per_frame, dim=1), text, return_dict=False)[0]
        got = net(latents, tf, text)
        assert (got - want).abs().max().item() < 1e-4
        # the all-True frame mask is full attention
        full = torch.ones(Fr, Fr, dtype=torch.bool)
        assert (net(latents, tf, text, frame_mask=full) - want).abs().max().item() < 1e-4


def test_block_causal_frame_mask_examples() -> None:
    # chunk_frames 1, sink 1, window 2: frame q sees frame 0, frames q-2, q-1 and itself
    m = block_causal_frame_mask(6, 1, 1, 2)
    want = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 0, 1, 1, 1, 0],
            [1, 0, 0, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(m, want)
    # chunk_frames 3: chunks {0}, {1,2,3}, {4,5,6}, {7}; sink 1, window 2 before each chunk
    m = block_causal_frame_mask(8, 3, 1, 2)
    want = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0, 0, 0],
            [1, 0, 1, 1, 1, 1, 1, 0],
            [1, 0, 1, 1, 1, 1, 1, 0],
            [1, 0, 1, 1, 1, 1, 1, 0],
            [1, 0, 0, 0, 0, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(m, want)
    # no window (None or 0): plain block-causal; sink 0 with a window: only the recent frames
    causal = block_causal_frame_mask(7, 3, 0, None)
    assert torch.equal(causal, block_causal_frame_mask(7, 3, 0, 0))
    assert torch.equal(causal, block_causal_frame_mask(7, 3, 2, 0))
    assert causal[4:].all() and not causal[1:4, 4:].any() and causal[1:4, :4].all() and not causal[0, 1:].any()
    m = block_causal_frame_mask(5, 1, 0, 1)
    assert torch.equal(m, torch.eye(5, dtype=torch.bool) | torch.diag(torch.ones(4), -1).bool())
    assert [chunk_start(j, 3) for j in range(4)] == [0, 1, 4, 7]
    with pytest.raises(ValueError):
        block_causal_frame_mask(4, 0, 0, None)


def _seam_forward(net: CausalWanTransformer, latents, t, text, actions, self_attn):
    x, grid = net.embed(latents)
    temb = net.time_embed(t)
    ctx = net.text_context(text)
    rope = net.rope(0, *grid)
    win = net.action_windows(actions, 0, grid[0])
    for i in range(len(net.blocks)):
        x = net.block_forward(i, x, temb, ctx, rope, self_attn, win)
    return net.head(x, temb, grid)


def _tiny_actions(B: int, frames: int, seed: int) -> FrameActions:
    g = torch.Generator().manual_seed(seed)
    n_px = 4 * (frames - 1) + 1
    keyboard = (torch.rand(B, n_px, 4, generator=g) > 0.5).float()  # (B, F_px, K)
    mouse = torch.randn(B, n_px, 2, generator=g)  # (B, F_px, M)
    return FrameActions(keyboard=keyboard, mouse=mouse)


def test_seam_with_sdpa_reproduces_forward() -> None:
    config = dataclasses.replace(TINY, action_config=ACTIONS)
    torch.manual_seed(0)
    net = CausalWanTransformer(config).eval()
    _randomise(net, 3)
    g = torch.Generator().manual_seed(2)
    B, Fr = 2, 5
    latents = torch.randn(B, 4, Fr, 4, 4, generator=g)
    text = torch.randn(B, 6, 32, generator=g)
    t = torch.rand(B, Fr, generator=g) * 1000
    actions = _tiny_actions(B, Fr, 4)
    mask = block_causal_frame_mask(Fr, 2, 1, 1)
    with torch.no_grad():
        want = net(latents, t, text, actions, frame_mask=mask)
        seam = _seam_forward(net, latents, t, text, actions, sdpa_self_attention(token_mask(mask, 4)))
        assert (seam - want).abs().max().item() < 1e-5
        # a hand-written attention through the seam: the seam hands q, k, v as documented
        tm = token_mask(mask, 4)

        def manual(q, k, v):
            s = (q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5  # (B, H, N, N)
            return s.masked_fill(~tm, float("-inf")).softmax(-1) @ v

        seam = _seam_forward(net, latents, t, text, actions, manual)
        assert (seam - want).abs().max().item() < 1e-4
        # the mask matters, the actions matter, text None skips the cross-attention
        assert (net(latents, t, text, actions) - want).abs().max().item() > 1e-3
        assert (net(latents, t, text, None, frame_mask=mask) - want).abs().max().item() > 1e-3
        assert (net(latents, t, None, actions, frame_mask=mask) - want).abs().max().item() > 1e-3


def test_chunked_seam_equals_masked_forward() -> None:
    """Chunk by chunk through the seam with a dense per-layer cache of every frame's keys and values
    (what the paged cache serves) equals the full forward under the block-causal mask: the seam
    carries the absolute frame index into RoPE and the action windows."""
    config = dataclasses.replace(TINY, action_config=ACTIONS)
    net = CausalWanTransformer(config).eval()
    _randomise(net, 5)
    g = torch.Generator().manual_seed(6)
    B, Fr, chunk, sink, window = 1, 6, 2, 1, 2
    latents = torch.randn(B, 4, Fr, 4, 4, generator=g)
    text = torch.randn(B, 5, 32, generator=g)
    t = torch.rand(B, Fr, generator=g) * 1000
    actions = _tiny_actions(B, Fr, 7)
    mask = block_causal_frame_mask(Fr, chunk, sink, window)
    S = 4  # tokens per frame (4x4 latents, 2x2 patches)
    with torch.no_grad():
        want = net(latents, t, text, actions, frame_mask=mask)
        cache_k: list[list[torch.Tensor]] = [[] for _ in net.blocks]  # per layer: (B, H, S, hd) per frame
        cache_v: list[list[torch.Tensor]] = [[] for _ in net.blocks]
        outs = []
        ctx = net.text_context(text)
        j = 0
        while chunk_start(j, chunk) < Fr:
            a = chunk_start(j, chunk)
            b = min(Fr, chunk_start(j + 1, chunk))
            x, grid = net.embed(latents[:, :, a:b])
            temb = net.time_embed(t[:, a:b])
            rope = net.rope(a, *grid)
            win = net.action_windows(actions, a, b - a)
            visible = [f for f in range(a) if mask[a, f]]
            for i in range(len(net.blocks)):

                def attend(q, k, v, i=i):
                    ks = torch.cat([cache_k[i][f] for f in visible] + [k], dim=2)  # (B, H, M, hd)
                    vs = torch.cat([cache_v[i][f] for f in visible] + [v], dim=2)
                    for f in range(b - a):
                        cache_k[i].append(k[:, :, f * S : (f + 1) * S])
                        cache_v[i].append(v[:, :, f * S : (f + 1) * S])
                    return F.scaled_dot_product_attention(q, ks, vs)

                x = net.block_forward(i, x, temb, ctx, rope, attend, win)
            outs.append(net.head(x, temb, grid))
            j += 1
        got = torch.cat(outs, dim=2)
        assert got.shape == want.shape
        assert (got - want).abs().max().item() < 1e-4


def test_rope_beyond_the_diffusers_table_and_shapes() -> None:
    net = CausalWanTransformer(TINY)
    cos, sin = net.rope(0, 3, 2, 2)
    assert cos.shape == sin.shape == (12, 32) and cos.dtype == torch.float32
    late_cos, _ = net.rope(2000, 2, 2, 2)  # beyond rope_max_seq_len = 1024 frames
    assert late_cos.shape == (8, 32) and torch.isfinite(late_cos).all()
    # a window of the sequence equals the same frames of a longer one
    c5, s5 = net.rope(0, 5, 2, 2)
    c2, s2 = net.rope(3, 2, 2, 2)
    assert torch.equal(c5[12:], c2) and torch.equal(s5[12:], s2)
    with pytest.raises(ValueError, match="model takes no actions"):
        net.action_windows(_tiny_actions(1, 2, 0), 0, 2)


def test_a_batch_of_sessions_at_different_frames_equals_each_alone() -> None:
    """Sessions batched through the seam with per-session first frames (RoPE and action windows)
    give what each gives alone."""
    config = dataclasses.replace(TINY, action_config=ACTIONS)
    net = CausalWanTransformer(config).eval()
    _randomise(net, 8)
    g = torch.Generator().manual_seed(9)
    firsts, f = [3, 7], 2
    latents = torch.randn(2, 4, f, 4, 4, generator=g)
    text = torch.randn(2, 5, 32, generator=g)
    t = torch.rand(2, f, generator=g) * 1000
    acts = [_tiny_actions(1, 12, 10), _tiny_actions(1, 30, 11)]

    def run(idx: list[int]) -> torch.Tensor:
        x, grid = net.embed(latents[idx])
        temb = net.time_embed(t[idx])
        rope = net.rope([firsts[i] for i in idx], *grid)
        win = net.action_windows([acts[i] for i in idx], [firsts[i] for i in idx], f)
        for i in range(len(net.blocks)):
            x = net.block_forward(i, x, temb, net.text_context(text[idx]), rope, sdpa_self_attention(), win)
        return net.head(x, temb, grid)

    with torch.no_grad():
        both = run([0, 1])
        assert (both[0:1] - run([0])).abs().max().item() < 1e-5
        assert (both[1:2] - run([1])).abs().max().item() < 1e-5
        assert net.rope([firsts[0]], f, 2, 2)[0].shape == (1, 8, 32)
        assert torch.equal(net.rope([4, 9], f, 2, 2)[1][1], net.rope(9, f, 2, 2)[1])


def test_pad_text_and_serving_dtype() -> None:
    a, b = torch.randn(3, 32), torch.randn(5, 32)
    padded = pad_text([a, b], length=8)
    assert padded.shape == (2, 8, 32) and torch.equal(padded[0, :3], a) and not padded[0, 3:].any()
    with pytest.raises(ValueError, match="must be"):
        pad_text([torch.randn(9, 32)], length=8)
    ref, net = _pair(TINY, seed=12)
    latents = torch.randn(1, 4, 2, 4, 4)
    text = torch.randn(1, 6, 32)
    with torch.no_grad():
        want = net(latents, torch.tensor([500.0]), text)
        net.to_serving_dtype(torch.bfloat16)
        kept = {n for n, p in net.named_parameters() if p.dtype == torch.float32}
        assert "scale_shift_table" in kept and "blocks.0.scale_shift_table" in kept and "blocks.0.norm2.weight" in kept
        assert "condition_embedder.time_embedder.linear_1.weight" in kept and "blocks.0.attn1.to_q.weight" not in kept
        got = net(latents.bfloat16(), torch.tensor([500.0]), text.bfloat16())
        assert got.dtype == torch.bfloat16
        assert (got.float() - want).abs().max().item() < 0.1 * want.abs().max().item()
