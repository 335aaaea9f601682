"""Chunked, KV-cached inference of the causal DiT against the network's full forward.

Every denoising pass of a chunk (its tokens attending to the session's paged cache of sink + window
frames) must equal the full-sequence forward of [the clean past frames at timestep 0, the noisy chunk
at its timestep] under ``block_causal_frame_mask``; the commit pass must leave in the pages exactly
the keys/values the full forward computes for those frames at timestep 0. The rollouts run past
sink + window frames, so eviction is exercised. Also: batching, the state's bytes, a full pool.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from worldserve.dynamics.interface import StateMemoryFull
from worldserve.dynamics.models.causal_dit.actions import FrameActions
from worldserve.dynamics.models.causal_dit.inference import chunk_noise, noise_seed
from worldserve.dynamics.models.causal_dit.model import CausalDiTWorldModel
from worldserve.dynamics.models.causal_dit.network import block_causal_frame_mask, token_mask
from worldserve.dynamics.models.causal_dit.testing import TINY_TEXT_DIM, tiny_model

TOL = 1e-4


def _model(**options) -> CausalDiTWorldModel:
    """The tiny model with every transformer parameter random (zero-initialised ones included), so
    that no path (actions, norms, modulation) hides behind a zero."""
    m = tiny_model(options=options)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in m.net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return m


def _pixel_actions(m: CausalDiTWorldModel, per_frame: list[torch.Tensor]) -> FrameActions:
    """FrameActions for pixel frames 0.. of latent frames with these action vectors (keyboard then mouse)."""
    rows = [per_frame[0]] + [per_frame[f] for f in range(1, len(per_frame)) for _ in range(4)]
    a = torch.stack(rows)[None]  # (1, F_px, K + M)
    return FrameActions(keyboard=a[..., :4], mouse=a[..., 4:6])


def _reference(m, frames, t_frames, per_frame_actions, text):
    """Full forward (net.forward) and, through the seam with SDPA under the same mask, every layer's
    keys/values (B, H, N, hd) -- what the commit passes must have cached."""
    net, o = m.net, m.options
    F_ = frames.shape[2]
    mask = block_causal_frame_mask(F_, o.chunk_frames, o.sink_frames, o.window_frames)
    actions = _pixel_actions(m, per_frame_actions)
    v = net(frames, t_frames, text, actions, frame_mask=mask)
    kvs = []
    tm = token_mask(mask, m.infer.frame_tokens)

    def capture(q, k, val):
        kvs.append((k, val))
        return F.scaled_dot_product_attention(q, k, val, attn_mask=tm)

    x, grid = net.embed(frames)
    temb = net.time_embed(t_frames)
    ctx = net.text_context(text)
    rope = net.rope(0, *grid)
    win = net.action_windows(actions, 0, grid[0])
    for i in range(len(net.blocks)):
        x = net.block_forward(i, x, temb, ctx, rope, capture, win)
    return v, kvs


@pytest.mark.parametrize("chunk_frames,window,steps", [(1, 3, 7), (3, 4, 4)])
@torch.no_grad()
def test_chunked_cached_inference_equals_full_forward(chunk_frames: int, window: int, steps: int) -> None:
    m = _model(chunk_frames=chunk_frames, sink_frames=1, window_frames=window)
    o, S = m.options, m.infer.frame_tokens
    g = torch.Generator().manual_seed(3)
    z0 = torch.randn(4, 1, 8, 8, generator=g)
    text = torch.randn(5, TINY_TEXT_DIM, generator=g)
    ctx_text = torch.zeros(1, o.text_len, TINY_TEXT_DIM)
    ctx_text[0, :5] = text  # the model zero-pads a prompt to text_len
    state = m.prefill(z0[None], m.null_action()[None], 0, text=text)
    clean = [z0]  # committed latents, chunk by chunk
    per_frame = [m.null_action()]
    vecs = [m.action_vector(["forward", "left"], {"yaw": 0.5}), m.action_vector(["back"], {"pitch": -1.0})]
    pool = m.pool.pool
    assert pool is not None
    for s in range(1, steps + 1):
        vec = vecs[s % 2]
        f0 = state.next_frame
        for f in range(f0, f0 + chunk_frames):
            state.frame_actions[f] = vec
        per_frame += [vec] * chunk_frames
        batch = m.infer.batch([state], [f0], chunk_frames, [state.frame_actions])
        noise = chunk_noise(7, s, len(o.timesteps), (4, chunk_frames, 8, 8))[:, None]  # (passes, 1, C, f, h, w)
        trace: list[torch.Tensor] = []
        inputs: list[torch.Tensor] = []
        real_forward = m.infer.forward

        def spy(batch, pool, x, sigma, commit, _real=real_forward):
            inputs.append(x.clone())
            return _real(batch, pool, x, sigma, commit)

        m.infer.forward = spy  # type: ignore[method-assign]
        try:
            x0 = m.infer.generate(batch, pool, noise, trace=trace)
        finally:
            del m.infer.forward
        state.add(range(f0, f0 + chunk_frames), f0 + chunk_frames, o, m.action_lookback)
        state.last_step = s
        past = torch.cat(clean, dim=1)  # (C, F_past, h, w)
        for k, (sigma, v) in enumerate(zip(o.sigmas()[:-1], trace)):
            frames = torch.cat([past, inputs[k][0]], dim=1)[None]  # (1, C, F, h, w)
            t = torch.zeros(1, frames.shape[2])
            t[:, -chunk_frames:] = 1000.0 * sigma
            want, _ = _reference(m, frames, t, per_frame, ctx_text)
            err = (v - want[:, :, -chunk_frames:]).abs().max().item()
            assert err < TOL, f"step {s} pass {k}: {err}"
        clean.append(x0[0])
        # the commit pass: the cached pages hold the full forward's keys/values of those frames at t = 0
        frames = torch.cat(clean, dim=1)[None]
        _, kvs = _reference(m, frames, torch.zeros(1, frames.shape[2]), per_frame, ctx_text)
        assert state.frames == o.visible_before(state.next_frame)
        for layer, (k_ref, v_ref) in enumerate(kvs):
            for f, page in zip(state.frames, state.frame_pages):
                rows = slice(f * S, (f + 1) * S)
                k_page = pool.k(layer)[page][None]  # (1, H, S, hd)
                v_page = pool.v(layer)[page][None]
                assert (k_page - k_ref[:, :, rows]).abs().max().item() < TOL, (s, layer, f)
                assert (v_page - v_ref[:, :, rows]).abs().max().item() < TOL, (s, layer, f)
    assert state.next_frame > o.sink_frames + o.window_frames + chunk_frames  # frames were evicted
    assert len(state.frames) == o.sink_frames + o.window_frames
    m.release_state(state)


@torch.no_grad()
def test_a_batch_of_sessions_equals_each_alone() -> None:
    """Three sessions at different absolute frames and cache lengths, each with its own prompt:
    stepped together, each gets the latents it gets alone (the noise depends on (seed, step) only)."""
    m = _model(chunk_frames=2, sink_frames=1, window_frames=3)
    g = torch.Generator().manual_seed(5)
    z0s = [torch.randn(1, 4, 1, 8, 8, generator=g) for _ in range(3)]
    texts = [torch.randn(3 + i, TINY_TEXT_DIM, generator=g) for i in range(3)]
    vecs = [m.action_vector(["forward"]), m.action_vector(["left"], {"yaw": 1.0}), m.action_vector([], {"pitch": -0.5})]
    seeds = [1, 2, 3]

    def run(batched: bool) -> list[torch.Tensor]:
        states = [m.prefill(z0s[i], m.null_action()[None], 0, text=texts[i]) for i in range(3)]
        for i in range(3):  # sessions 1 and 2 start ahead: different positions and cache lengths
            for s in range(1, i * 2 + 1):
                z = m.step([states[i]], vecs[i][None], [seeds[i]], [s])
                m.decode_step([states[i]], z)
        outs = []
        for _ in range(3):
            steps = [st.last_step + 1 for st in states]
            if batched:
                z = m.step(states, torch.stack(vecs), seeds, steps)
                m.decode_step(states, z)
                outs.append(z)
            else:
                zs = [m.step([st], vecs[i][None], [seeds[i]], [steps[i]]) for i, st in enumerate(states)]
                for st, z in zip(states, zs):
                    m.decode_step([st], z)
                outs.append(torch.cat(zs))
        for st in states:
            m.release_state(st)
        return outs

    together, alone = run(True), run(False)
    for a, b in zip(together, alone):
        assert (a - b).abs().max().item() < 1e-5
    print(f"batched == alone bitwise: {all(torch.equal(a, b) for a, b in zip(together, alone))}")


def test_noise_depends_on_seed_and_step_only() -> None:
    a = chunk_noise(3, 9, 4, (4, 1, 8, 8))
    assert torch.equal(a, chunk_noise(3, 9, 4, (4, 1, 8, 8)))
    assert not torch.equal(a, chunk_noise(3, 10, 4, (4, 1, 8, 8)))
    assert noise_seed(3, 9) != noise_seed(9, 3)


@torch.no_grad()
def test_state_bytes_and_a_full_pool() -> None:
    m = tiny_model()
    o = m.options
    page = m.pool.page_nbytes(m.dtype)
    per_session = o.sink_frames + o.window_frames + o.chunk_frames
    assert m.session_nbytes == per_session * page + m.vae.cache_nbytes(8, 8) + o.text_len * 64 * 4
    m.configure_state_pool(2 * m.session_nbytes + page)  # two whole sessions: pages, decode caches, text
    assert m.state_pool_stats()["free_sessions"] == 2 and m.state_pool_stats()["pages"] == 2 * per_session
    z0 = torch.zeros(1, 4, 1, 8, 8)
    a = m.prefill(z0, m.null_action()[None], 0)
    b = m.prefill(z0, m.null_action()[None], 0, text=torch.ones(2, TINY_TEXT_DIM))
    assert m.state_nbytes(a) == per_session * page + a.vae.nbytes
    text_bytes = o.text_len * m.net.config.inner_dim * 4
    assert m.state_nbytes(b) == per_session * page + text_bytes + b.vae.nbytes
    print(f"tiny state: {per_session} pages of {page} B, decode cache {a.vae.nbytes} B, text {text_bytes} B")
    with pytest.raises(StateMemoryFull):
        m.prefill(z0, m.null_action()[None], 0)
    m.release_state(a)
    m.release_state(a)  # idempotent
    assert m.state_nbytes(a) == 0
    c = m.prefill(z0, m.null_action()[None], 0)
    del c  # a dropped state gives its pages back too
    import gc

    gc.collect()
    assert m.state_pool_stats()["free_sessions"] == 1
    with pytest.raises(ValueError, match="released"):
        m.step([a], m.null_action()[None], [0], [1])


@torch.no_grad()
def test_sessions_with_and_without_text_in_one_step() -> None:
    """A batch mixing sessions with a prompt and without one runs them apart (cross-attention or
    none): each gets what it gets alone."""
    m = tiny_model()
    z0 = torch.randn(1, 4, 1, 8, 8, generator=torch.Generator().manual_seed(9))
    text = torch.randn(4, TINY_TEXT_DIM, generator=torch.Generator().manual_seed(10))
    vec = m.action_vector(["right"])[None]

    def fresh():
        return [m.prefill(z0, m.null_action()[None], 0, text=text), m.prefill(z0, m.null_action()[None], 0)]

    a = fresh()
    both = m.step(a, vec.expand(2, -1), [1, 1], [1, 1])
    b = fresh()
    alone = torch.cat([m.step([b[0]], vec, [1], [1]), m.step([b[1]], vec, [1], [1])])
    assert torch.equal(both, alone)
    assert (both[0] - both[1]).abs().max().item() > 1e-3  # the prompt matters


_TRITON_CHECK = """
import torch
from worldserve.dynamics.attention.backend import use_backend
from worldserve.dynamics.models.causal_dit.testing import tiny_model

def run(backend):
    m = tiny_model(options={"chunk_frames": 3, "window_frames": 4})
    z0 = torch.randn(1, 4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with use_backend(backend):
        st = m.prefill(z0, m.null_action()[None], 0, text=torch.ones(3, 16))
        out = torch.cat([m.step([st], m.action_vector(["forward"])[None], [0], [s]) for s in (1, 2, 3)])
    return out, m.last_step_attention

a, ka = run("sdpa")
b, kb = run("triton")
assert (ka, kb) == (("sdpa", "sdpa"), ("triton", "flash_decode_paged")), (ka, kb)
err = (a - b).abs().max().item()
assert err < 1e-5, err
print("max diff", err)
"""


def test_the_triton_paged_decode_kernel_serves_a_chunk() -> None:
    """The served attention call (mask "full", a chunk of 3 frames of new tokens, pages of one frame,
    past the window) through the Triton paged decode kernel -- interpreted on CPU -- equals SDPA."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", _TRITON_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
