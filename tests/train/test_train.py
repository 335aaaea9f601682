"""Training on tiny configs: every phase lowers its loss, checkpoints, and resumes where it stopped."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from worldserve.dynamics.models.transformer import WorldModel, WorldModelConfig
from worldserve.image.model import TinyTextToImage, TinyTextToImageConfig
from worldserve.train import PhaseConfig, TrainConfig, export, train_all
from worldserve.train.data import action_matrix, make_trajectories, step_generator
from worldserve.train.trainer import STATE_FILE, normalize_latents, train_dynamics, train_image

TINY_DYN = WorldModelConfig(ae_channels=4, dim=32, n_layers=1, n_heads=2, context_frames=4, event_dim=16, mlp_ratio=2.0)
TINY_IMG = TinyTextToImageConfig(channels=8, text_dim=16, text_layers=1, text_heads=2, cond_dim=16)


def tiny_config(out, iters: int = 12) -> TrainConfig:
    def pc(batch: int, lr: float) -> PhaseConfig:
        return PhaseConfig(iters, batch, lr, budget_s=1e9, warmup=2, ckpt_every=4)

    return TrainConfig(
        out=out,
        n_traj=4,
        traj_steps=8,
        clip=4,
        ae=pc(4, 3e-3),
        dynamics=pc(2, 3e-3),
        image=pc(2, 3e-3),
        dynamics_config=TINY_DYN,
        image_config=TINY_IMG,
        device="cpu",
        show_progress=False,
    )


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_tiny_run_lowers_every_loss_and_exports(tmp_path):
    tc = tiny_config(tmp_path / "run", iters=16)
    logs: list[str] = []
    times = train_all(tc, log=logs.append)
    assert set(times) == {"data", "autoencoder", "dynamics", "image"}
    for phase in ("ae", "dynamics", "image"):
        state = torch.load(tc.out / phase / STATE_FILE, weights_only=True)
        losses = state["losses"]
        assert state["step"] == 16 and len(losses) == 16 and all(np.isfinite(losses))
        if phase != "dynamics":  # the flow loss at a random t is too noisy to compare; see below
            assert np.mean(losses[-4:]) < np.mean(losses[:4]), (phase, losses)
    # dynamics: the trained model against its own start, on the same clips, noise and t
    start = WorldModel.random(TINY_DYN, seed=tc.dynamics.seed)
    start.autoencoder.load_state_dict(WorldModel.from_pretrained(tc.out / "ae").autoencoder.state_dict())
    trained = WorldModel.from_pretrained(tc.out / "dynamics")
    assert _fixed_flow_loss(trained, tc) < 0.9 * _fixed_flow_loss(start, tc)
    assert (tc.out / "ae" / "normalized").is_file()
    out = export(tc, tmp_path / "weights")
    assert sorted(p.name for p in out["dynamics"].iterdir()) == ["config.json", "model.safetensors"]
    model = WorldModel.from_pretrained(out["dynamics"])
    assert model.config == TINY_DYN and model.events_supported
    assert TinyTextToImage.from_pretrained(out["image"]).config == TINY_IMG


def _fixed_flow_loss(model: WorldModel, tc: TrainConfig) -> float:
    """The dynamics loss on every trajectory's first clip at t = 0.5 and fixed noise."""
    data = make_trajectories(range(tc.n_traj), tc.traj_steps)
    latents = np.load(tc.out / "dynamics" / "latents.npy", allow_pickle=False)
    z = torch.from_numpy(latents[:, : tc.clip])  # (N, T, C, h, w)
    a = torch.from_numpy(data.actions[:, : tc.clip])
    events = [e[: tc.clip] for e in data.events]
    t = torch.full(z.shape[:2], 0.5)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        loss = model.train()(z, a, events=events, t=t, first_steps=torch.zeros(len(z), dtype=torch.long), generator=g)
    return float(loss)


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    data = make_trajectories(range(4), 8)
    # the dynamics phase needs an autoencoder folder to start from
    WorldModel.random(TINY_DYN, seed=0).save_pretrained(tmp_path / "a" / "ae")
    WorldModel.random(TINY_DYN, seed=0).save_pretrained(tmp_path / "b" / "ae")
    full = tiny_config(tmp_path / "a", iters=8)
    whole_dyn = train_dynamics(full, data)
    whole_img = train_image(full)

    cut = tiny_config(tmp_path / "b", iters=8)
    half = dataclasses.replace(
        cut, dynamics=dataclasses.replace(cut.dynamics, stop_at=3), image=dataclasses.replace(cut.image, stop_at=3)
    )
    train_dynamics(half, data), train_image(half)  # interrupted after 3 of 8 iterations
    assert torch.load(half.out / "dynamics" / STATE_FILE, weights_only=True)["step"] == 3
    resumed = cut
    res_dyn, res_img = train_dynamics(resumed, data), train_image(resumed)
    assert len(res_dyn) == len(res_img) == 8
    np.testing.assert_allclose(res_dyn, whole_dyn, rtol=1e-4)
    np.testing.assert_allclose(res_img, whole_img, rtol=1e-4)
    a = WorldModel.from_pretrained(full.out / "dynamics").state_dict()
    b = WorldModel.from_pretrained(half.out / "dynamics").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    # a finished phase does nothing more
    assert len(train_image(resumed)) == 8


def test_normalize_latents_keeps_reconstructions_and_gives_unit_scale():
    model = WorldModel.random(TINY_DYN, seed=2)
    frames = make_trajectories(range(2), 4).frames.reshape(-1, 64, 64, 3)
    x = torch.from_numpy(frames)
    before = model.decode(model.encode(x))
    normalize_latents(model, frames)
    z = model.encode(x)
    assert abs(float(z.std()) - 1.0) < 0.05
    assert (model.decode(z).int() - before.int()).abs().max() <= 1


def test_data_helpers():
    assert action_matrix([(), ("left", "jump"), ("fire",)]).tolist() == [
        [0, 0, 0, 0, 0, 0, 0, 0],
        [1, 0, 0, 0, 1, 0, 0, 0],
        [0, 0, 0, 0, 0, 1, 0, 0],
    ]
    d = make_trajectories(range(3), 5)
    assert d.frames.shape == (3, 6, 64, 64, 3) and d.actions.shape == (3, 6, 8) and len(d.events[0]) == 6
    r1, g1 = step_generator(0, 7)
    r2, g2 = step_generator(0, 7)
    assert r1.integers(0, 1000) == r2.integers(0, 1000) and torch.equal(
        torch.rand(3, generator=g1), torch.rand(3, generator=g2)
    )


def test_training_config_json_is_shipped_with_events():
    cfg = TrainConfig().dynamics_config
    assert cfg.event_dim > 0 and (cfg.frame_height, cfg.frame_width) == (64, 64)
    assert json.loads(json.dumps(cfg.to_dict()))["keys"] == ["left", "right", "up", "down", "jump", "fire"]
