"""The model's paged KV state: the page pool, state lifecycle, the declared model interface, dtypes."""

from __future__ import annotations

import gc

import pytest
import torch

from worldserve.dynamics.interface import DynamicsModelProtocol, ModelInfo, Runtime, StateMemoryFull
from worldserve.dynamics.models.transformer import PagedState, WorldModel, WorldModelConfig

TINY = WorldModelConfig(
    frame_height=32, frame_width=32, latent_channels=4, ae_channels=8, dim=64, n_layers=2, n_heads=2, context_frames=4
)


def _z(model, n, seed=0):
    c = model.config
    return torch.randn(
        n, c.latent_channels, c.latent_height, c.latent_width, generator=torch.Generator().manual_seed(seed)
    )


def _a(model, n):
    a = torch.zeros(n, model.action_dim)
    a[1:, 1] = 1
    return a


@pytest.fixture
def tiny() -> WorldModel:
    return WorldModel.random(TINY, seed=0)


def test_implements_the_declared_interface(tiny):
    assert isinstance(tiny, DynamicsModelProtocol)
    info = tiny.info
    assert isinstance(info, ModelInfo)
    assert (info.frame_width, info.frame_height, info.context_frames) == (32, 32, 4)
    assert info.action_space.keys == TINY.keys and info.action_space.mouse_axes == TINY.mouse_axes
    assert info.action_space.discrete_actions == 2 ** len(TINY.keys)
    assert info.events_supported and info.event_max_bytes == TINY.event_max_bytes
    assert info.sample_steps == TINY.sample_steps and info.default_guidance == TINY.guidance
    assert info.parameters == sum(p.numel() for p in tiny.parameters())
    no_events = WorldModel.random(WorldModelConfig(**{**TINY.to_dict(), "event_dim": 0}))
    assert no_events.info.event_max_bytes == 0 and not no_events.info.events_supported
    rt = tiny.runtime
    assert isinstance(rt, Runtime)
    assert (rt.device, rt.dtype, rt.attention_backend, rt.decode_kernel) == ("cpu", "float32", "sdpa", "sdpa")


def test_pool_capacity_state_memory_full_and_release(tiny):
    C = TINY.context_frames
    tiny.configure_state_pool(2 * C * tiny.page_nbytes + tiny.page_nbytes - 1)  # room for 2 sessions
    assert tiny.state_pool_stats()["pages"] == 2 * C
    z, a = _z(tiny, 2), _a(tiny, 2)
    s1, s2 = tiny.prefill(z, a, 0), tiny.prefill(z[:1], a[:1], 0)
    assert tiny.state_nbytes(s1) == C * tiny.page_nbytes
    assert (tiny.state_step(s1), tiny.state_step(s2)) == (1, 0)
    with pytest.raises(StateMemoryFull, match="pool full"):
        tiny.prefill(z, a, 0)
    with pytest.raises(RuntimeError, match="in use"):
        tiny.configure_state_pool(1 << 20)
    tiny.release_state(s2)
    tiny.release_state(s2)  # idempotent
    assert tiny.state_nbytes(s2) == 0
    with pytest.raises(ValueError, match="released"):
        tiny.step([s2], a[1:2], [0], [1])
    s3 = tiny.prefill(z, a, 0)  # the released pages are reused
    assert set(s3.pages) == set(s2.pages)
    del s3
    gc.collect()  # a dropped state gives its pages back too
    assert tiny.state_pool_stats()["free_pages"] == C
    tiny.release_state(s1)
    tiny.configure_state_pool(1 << 20)  # allowed again: nothing in use
    with pytest.raises(ValueError, match="holds 0 pages"):
        tiny.configure_state_pool(10)


def test_failed_prefill_many_keeps_nothing(tiny):
    C = TINY.context_frames
    tiny.configure_state_pool(2 * C * tiny.page_nbytes)
    z, a = _z(tiny, 2), _a(tiny, 2)
    with pytest.raises(StateMemoryFull):
        tiny.prefill_many([z, z, z], [a, a, a], [0, 0, 0])
    assert tiny.state_pool_stats()["free_pages"] == 2 * C


def test_window_slides_by_rotating_pages_without_copies(tiny):
    z, a = _z(tiny, 1), _a(tiny, 2)
    st = tiny.prefill(z, a[:1], 0)
    pages0 = list(st.pages)
    storage = tiny._pool.kv.data_ptr()
    orders = []
    for s in range(1, 8):
        tiny.step([st], a[1:2], [0], [s])
        orders.append(list(st.pages))
    assert tiny._pool.kv.data_ptr() == storage
    assert all(sorted(o) == sorted(pages0) for o in orders)  # the same pages throughout
    # window of 3 past frames fills at step 2; from step 3 on each commit rotates the list by one
    assert orders[2] == pages0[1:] + pages0[:1] and orders[3] == pages0[2:] + pages0[:2]
    assert (st.n_frames, st.first_step, st.last_step) == (3, 5, 7)


def test_other_models_states_are_rejected(tiny):
    other = WorldModel.random(TINY, seed=0)
    st = other.prefill(_z(other, 1), _a(other, 1), 0)
    with pytest.raises(ValueError, match="state pool"):
        tiny.step([st], _a(tiny, 2)[1:], [0], [1])
    with pytest.raises(ValueError, match="PagedState"):
        tiny.step([object()], _a(tiny, 2)[1:], [0], [1])


def test_prefill_many_equals_one_by_one(tiny):
    zs = [_z(tiny, n, seed=n) for n in (1, 3, 6)]  # 6 > context_frames: the tail streams
    acts = [_a(tiny, n) for n in (1, 3, 6)]
    many = tiny.prefill_many(zs, acts, [0, 2, 0])
    solo = [tiny.prefill(z, a, f) for z, a, f in zip(zs, acts, [0, 2, 0])]
    for m, s in zip(many, solo):
        assert (m.n_frames, m.last_step) == (s.n_frames, s.last_step)
        for layer in range(TINY.n_layers):
            torch.testing.assert_close(tiny.state_kv(m, layer)[0], tiny.state_kv(s, layer)[0], atol=1e-5, rtol=0)
    out_m = tiny.step(many, _a(tiny, 3), [1, 2, 3], [m.last_step + 1 for m in many])
    out_s = tiny.step(solo, _a(tiny, 3), [1, 2, 3], [s.last_step + 1 for s in solo])
    torch.testing.assert_close(out_m, out_s, atol=1e-4, rtol=0)


def test_step_keeps_sample_steps_as_a_keyword_and_records_the_backend(tiny):
    st = tiny.prefill(_z(tiny, 1), _a(tiny, 1), 0)
    out = tiny.step([st], _a(tiny, 2)[1:], [0], [1], 2.0, None, sample_steps=1)
    assert out.shape == (1, 4, 4, 4) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert tiny.last_step_attention == ("sdpa", "sdpa")


def test_load_bf16_keeps_the_autoencoder_in_float32(tmp_path, tiny):
    tiny.save_pretrained(tmp_path / "m")
    m = WorldModel.load(tmp_path / "m", device="cpu", dtype="bf16", overrides={"sample_steps": 2})
    assert m.dtype == torch.bfloat16 and m.config.sample_steps == 2
    assert next(m.autoencoder.parameters()).dtype == torch.float32
    assert m.runtime.dtype == "bfloat16"
    frames = torch.randint(0, 256, (1, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    z = m.encode(frames)
    assert z.dtype == torch.float32
    torch.testing.assert_close(z, tiny.encode(frames))  # the autoencoder is unchanged
    st = m.prefill(z, _a(m, 1), 0)
    assert m._pool.dtype == torch.bfloat16 and m.state_nbytes(st) == TINY.context_frames * m.page_nbytes
    out = m.step([st], _a(m, 2)[1:], [4], [1])
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    ref = tiny.step([tiny.prefill(z, _a(tiny, 1), 0)], _a(tiny, 2)[1:], [4], [1], sample_steps=2)
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()  # bf16 transformer: close, not equal
    assert m.decode(out).dtype == torch.uint8
    rnd = WorldModel.load(None, dtype="float32", overrides=TINY.to_dict())
    assert rnd.config == TINY and rnd.dtype == torch.float32
    with pytest.raises(ValueError, match="dtype"):
        WorldModel.load(None, dtype="int8")
    with pytest.raises(RuntimeError, match="live session states"):
        m.to_serving("cpu", torch.float32)
    m.release_state(st)
    m.to_serving("cpu", torch.float32)
    assert m.dtype == torch.float32


def test_paged_state_is_opaque_but_describes_itself(tiny):
    st = tiny.prefill(_z(tiny, 2), _a(tiny, 2), 5)
    assert isinstance(st, PagedState)
    assert (st.first_step, st.last_step, st.n_frames, len(st.pages)) == (5, 6, 2, TINY.context_frames)
    fork = tiny.clone_state(st)
    assert tiny.state_step(fork) == 6 and not set(fork.pages) & set(st.pages)
    torch.testing.assert_close(tiny.state_kv(fork, 0)[0], tiny.state_kv(st, 0)[0], atol=0, rtol=0)


def test_a_finalizer_inside_alloc_cannot_deadlock():
    """Pages of a state dropped while another thread (or the garbage collector on this one) holds
    the pool lock are given back without taking the lock."""
    from worldserve.dynamics.models.transformer.kv_cache import PagePool

    pool = PagePool(1, 1, 4, 8, 6, "cpu", torch.float32)
    a = pool.alloc(3)
    with pool._lock:  # as if the collector ran a finalizer in the middle of alloc
        pool.release(a)  # must return at once
    assert pool.free_pages == 6 and pool.alloc(6) == [0, 1, 2, 3, 4, 5]
