"""CausalDiTWorldModel through the model interface: exact resume (the test kit), the engine's runner,
loading the published layouts, a prompt-only world, options, and the tiny instance's CPU speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from worldserve.common.registry import ModelLoadError
from worldserve.dynamics.engine.runner import Job, Runner
from worldserve.dynamics.engine.state_cache import StateCache
from worldserve.dynamics.engine.types import StepRequest
from worldserve.dynamics.interface import DynamicsModelProtocol
from worldserve.dynamics.models.causal_dit import CausalDiTOptions, CausalDiTWorldModel
from worldserve.dynamics.models.causal_dit.testing import TINY_OPTIONS, TINY_TEXT_DIM, tiny_model, write_tiny_folder
from worldserve.dynamics.testkit import away_and_back, check_exact_resume


def _frame(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (64, 64, 3), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("options", [{}, {"chunk_frames": 3, "window_frames": 4, "sink_frames": 2}])
def test_exact_resume(options: dict) -> None:
    """Resumed before every step from what the engine keeps (the last context_frames - 1 steps'
    latents, actions and resume data), the session's frames are bitwise the warm ones, well past
    the window (the sink then comes from a snapshot, the decode cache from the newest step)."""
    m = tiny_model(options=options)
    assert isinstance(m, DynamicsModelProtocol)
    text = torch.randn(5, TINY_TEXT_DIM, generator=torch.Generator().manual_seed(1))
    steps = 3 * (m.info.context_frames - 1) + 2
    report = check_exact_resume(m, _frame(), away_and_back(m.info.action_space, steps), seed=7, text=text)
    assert report.differing == [], report
    assert report.frames_changed >= steps - 1
    print(
        f"options {options}: context_frames {m.info.context_frames}, resume bytes for the window {report.resume_bytes}"
    )


def test_the_runner_decodes_before_resume_data_and_resumes_exactly() -> None:
    """The engine's runner with this model (chunks of 3, a text embedding): a session stepped warm
    and the same step prefilled cold from the runner's own stored latents, actions and resume data
    give the same frame; step 0's latent (one frame) and the later ones (three) prefill as a list."""
    m = tiny_model(options={"chunk_frames": 3, "window_frames": 4})
    runner = Runner(m, StateCache(m, 1 << 30), batch_invariant=True)
    first = _frame(3).numpy()
    text = np.random.default_rng(0).standard_normal((4, TINY_TEXT_DIM)).astype(np.float32)
    vec = m.action_vector(["left"], {"yaw": 0.5})
    req = StepRequest("t", "s", keys=("left",), mouse={"yaw": 0.5})

    def job(step: int, state=None, window=None) -> Job:
        return Job(req, ("t", "s"), step, 5, vec, 1.0, "", state=state, window=window, first_frame=first, text=text)

    j1 = job(0, window=[(0, None, None, None)])
    runner.run([j1])
    assert j1.error is None and j1.first_latent is not None and j1.resume is not None
    assert j1.latent is not None and j1.latent.shape == (4, 3, 8, 8) and j1.rgb is not None
    j2 = job(1, state=j1.state)
    runner.run([j2])
    action = {"keys": ["left"], "mouse": {"yaw": 0.5}}
    cold = job(1, window=[(0, None, j1.first_latent, None), (1, action, j1.latent, j1.resume)])
    runner.run([cold])
    assert j2.error is None and cold.error is None
    assert np.array_equal(j2.latent, cold.latent) and np.array_equal(j2.rgb, cold.rgb)
    for j in (j2, cold):
        m.release_state(j.state)


@pytest.mark.parametrize("actions", [True, False])
def test_load_both_layouts(tmp_path, actions: bool) -> None:
    """A folder in diffusers' layout and one in the original Wan layout load to the same model: the
    same frames, the same as the in-memory model they were written from."""
    a = CausalDiTWorldModel.load(write_tiny_folder(tmp_path / "d", actions=actions), options=TINY_OPTIONS)
    b = CausalDiTWorldModel.load(
        write_tiny_folder(tmp_path / "o", actions=actions, layout="original"), options=TINY_OPTIONS
    )
    ref = tiny_model(actions=actions)
    assert (tmp_path / "o" / "transformer" / "config.json").read_text().count('"num_heads"') == 1
    outs = []
    for m in (a, b, ref):
        z0 = m.encode(_frame(1)[None])
        st = m.prefill(z0, m.null_action()[None], 0)
        vec = m.action_vector(["forward"]) if actions else m.null_action()
        z = m.step([st], vec[None], [3], [1])
        outs.append((z, m.decode_step([st], z)))
    for z, f in outs[1:]:
        assert torch.equal(z, outs[0][0]) and torch.equal(f, outs[0][1])


def test_a_prompt_only_world(tmp_path) -> None:
    m = CausalDiTWorldModel.load(write_tiny_folder(tmp_path / "p", actions=False), options=TINY_OPTIONS, name="prompt")
    space = m.info.action_space
    assert space.keys == () and space.mouse_axes == () and m.null_action().shape == (0,)
    with pytest.raises(ValueError, match="model 'prompt' takes no actions"):
        m.action_vector(["forward"])
    with pytest.raises(ValueError, match="takes no actions"):
        m.action_vector([], {"yaw": 0.5})
    text = torch.randn(3, TINY_TEXT_DIM)
    st = m.prefill(m.encode(_frame()[None]), m.null_action()[None], 0, text=text)
    z = m.step([st], torch.zeros(1, 0), [0], [1])
    assert z.shape == (1, 4, 1, 8, 8)
    assert m.info.extra["text_dim"] == TINY_TEXT_DIM


def test_folder_faults(tmp_path) -> None:
    folder = write_tiny_folder(tmp_path / "f")
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="diffusion_pytorch_model.safetensors"):
        CausalDiTWorldModel.load(folder, options=TINY_OPTIONS)
    with pytest.raises(ValueError, match="unknown causal_dit option 'chunk_size'"):
        CausalDiTWorldModel.load(write_tiny_folder(tmp_path / "g"), options={"chunk_size": 3})


def test_options() -> None:
    o = CausalDiTOptions.from_options({"timesteps": [1000, 500], "shift": 1.0, "keys": ["w", "s"]})
    assert o.timesteps == (1000, 500) and o.keys == ("w", "s") and o.sigmas() == [1.0, 0.5, 0.0]
    assert CausalDiTOptions().sigmas()[:2] == [1.0, 0.9375]  # Wan's shift 5: 750 -> 937.5
    for bad in ({"timesteps": [500, 1000]}, {"chunk_frames": 0}, {"window_frames": 0}, {"shift": -1}, {"keys": "w"}):
        with pytest.raises(ValueError):
            CausalDiTOptions.from_options(bad)
    o = CausalDiTOptions(chunk_frames=3, sink_frames=1, window_frames=4)
    assert [list(o.step_frames(s)) for s in range(3)] == [[0], [1, 2, 3], [4, 5, 6]]
    assert o.visible_before(7) == [0, 3, 4, 5, 6] and o.visible_before(1) == [0]
    with pytest.raises(ValueError, match="the action module takes 4"):
        tiny_model(options={"keys": ["w", "s"]})


def test_without_exact_resume() -> None:
    """``exact_resume: false``: no resume data; a session rebuilt from its latents alone still steps."""
    m = tiny_model(options={"exact_resume": False})
    z0 = m.encode(_frame()[None])
    st = m.prefill(z0, m.null_action()[None], 0)
    lat = [z0[0]]
    for s in range(1, 6):
        z = m.step([st], m.null_action()[None], [0], [s])
        m.decode_step([st], z)
        assert m.resume_data(st) is None
        lat.append(z[0])
    cold = m.prefill(torch.stack(lat[-3:]), torch.stack([m.null_action()] * 3), 3)
    assert m.step([cold], m.null_action()[None], [0], [6]).shape == (1, 4, 1, 8, 8)


def test_call_order_is_checked() -> None:
    m = tiny_model()
    st = m.prefill(m.encode(_frame()[None]), m.null_action()[None], 0)
    z = m.step([st], m.null_action()[None], [0], [1])
    with pytest.raises(RuntimeError, match="decode_step first"):
        m.resume_data(st)
    m.decode_step([st], z)
    with pytest.raises(ValueError, match="decode_step takes each step's chunk once"):
        m.decode_step([st], z)
    with pytest.raises(ValueError, match="steps\\[0\\] = 3"):
        m.step([st], m.null_action()[None], [0], [3])
    with pytest.raises(ValueError, match="takes 64x64 frames"):
        m.encode(torch.zeros(1, 32, 32, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="no event conditioning"):
        m.step([st], m.null_action()[None], [0], [2], events=["night"])


@torch.no_grad()
def test_cpu_steps_per_second_of_the_tiny_instance() -> None:
    """Print the tiny instance's CPU speed (a step = one chunk + its decode), 1 and 4 sessions."""
    m = tiny_model()
    for n in (1, 4):
        states = [m.prefill(m.encode(_frame(i)[None]), m.null_action()[None], 0) for i in range(n)]
        vecs = torch.stack([m.action_vector(["forward"])] * n)
        steps = 6
        t0 = time.perf_counter()
        for s in range(1, steps + 1):
            z = m.step(states, vecs, list(range(n)), [s] * n)
            m.decode_step(states, z)
        dt = time.perf_counter() - t0
        print(
            f"tiny causal_dit on CPU, {n} session(s): {n * steps / dt:.1f} steps/s ({1e3 * dt / steps:.0f} ms a batch)"
        )
        for st in states:
            m.release_state(st)


@torch.no_grad()
def test_exact_resume_with_a_rebuilt_decode_cache() -> None:
    """``decode_cache: rebuild``: no decode cache in the resume data; a session resumed well past the
    VAE's history (its window then spans it) gets the cache back bitwise from the window's latents."""
    from worldserve.dynamics.interface import pack_resume, unpack_resume

    m = tiny_model(options={"decode_cache": "rebuild"})
    H = m.vae.history_frames
    assert m.info.context_frames - 1 >= H
    z0 = m.encode(_frame(2)[None])
    warm = m.prefill(z0, m.null_action()[None], 0)
    log = [(z0[0], m.null_action(), None)]
    vecs = [m.action_vector(["forward"]), m.action_vector(["left"], {"yaw": -0.5})]
    for s in range(1, H + 4):
        z = m.step([warm], vecs[s % 2][None], [4], [s])
        m.decode_step([warm], z)
        data = m.resume_data(warm)
        assert not any(k.startswith("vae.") for k in data)
        log.append((z[0], vecs[s % 2], pack_resume(data)))
    tail = log[-(m.info.context_frames - 1) :]
    first = len(log) - len(tail)
    cold = m.prefill(
        torch.stack([e[0] for e in tail]),
        torch.stack([e[1] for e in tail]),
        first,
        resume=[unpack_resume(e[2]) for e in tail],
    )
    n = len(log)
    zw = m.step([warm], vecs[0][None], [4], [n])
    zc = m.step([cold], vecs[0][None], [4], [n])
    assert torch.equal(zw, zc)
    assert torch.equal(m.decode_step([warm], zw), m.decode_step([cold], zc))
