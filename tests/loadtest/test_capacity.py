"""The capacity table (loadtest/capacity): the FLOP counter (by hand on a tiny config, and equal to
FlopCounterMode on the served step of each model kind), the command's errors (one line, exit 2,
nothing written) and a --quick run against a real Redis."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from loadtest.capacity.__main__ import app
from loadtest.capacity.flops import canvas_step_flops, conv2d, transformer_step_flops
from loadtest.capacity.models import DIT_NAME, SIZES, CannotRun, config_at, served_config, served_models

TINY = dict(
    frame_height=16,
    frame_width=16,
    downsample=8,
    latent_channels=4,
    ae_channels=4,
    dim=16,
    n_layers=1,
    n_heads=2,
    mlp_ratio=4.0,
    context_frames=2,
    sample_steps=1,
    guidance=1.0,
    keys=("a",),
    mouse_axes=(),
    event_dim=0,
)


def test_transformer_flops_by_hand():
    from worldserve.dynamics.models.transformer import WorldModelConfig

    f = transformer_step_flops(WorldModelConfig(**TINY))
    # F = 2x2 = 4 tokens, D = 16, MLP 64, 4 latent channels, 1 layer, keys = 2 frames x 4 = 8, no CFG
    denoise_linear = 2 * 4 * 4 * 16 + 2 * 4 * 16 * 48 + (2 * 4 * 16 * 16 + 2 * 2 * 4 * 16 * 64) + 2 * 4 * 16 * 4
    commit_linear = 2 * 4 * 4 * 16 + 2 * 4 * 16 * 48  # the last (only) layer: q/k/v, no projection or MLP
    cond = 2 * (1 * 16 + 16 * 16) * 2 + 2 * (2 * 16 * 16) * 2  # action MLP (step, commit), time MLP (2 passes)
    assert f.linear == denoise_linear + commit_linear + cond == 35392
    assert f.attention == 2 * (4 * 4 * 8 * 16) == 4096
    # decoder widths 16, 16, 8, 4 from the 2x2 latent up to 16x16
    decoder = (
        conv2d(4, 16, 3, 2, 2)
        + conv2d(16, 16, 3, 4, 4) * 3
        + conv2d(16, 8, 3, 8, 8)
        + conv2d(8, 8, 3, 8, 8) * 2
        + conv2d(8, 4, 3, 16, 16)
        + conv2d(4, 4, 3, 16, 16) * 2
        + conv2d(4, 3, 3, 16, 16)
    )
    assert f.conv == decoder == 870912
    assert f.total == 910400
    # classifier-free guidance doubles the denoising pass, two sampler steps double it again
    g = transformer_step_flops(WorldModelConfig(**(TINY | {"guidance": 2.0, "sample_steps": 2})))
    assert g.attention == (4 + 1) * 4 * 4 * 8 * 16


def _counted(model) -> int:
    from loadtest.engine_bench_sessions import _window, engine_parts, flops_per_frame

    parts = engine_parts()
    return flops_per_frame(model, parts, _window(model, parts, "cpu"), "cpu")


def test_transformer_flops_equal_flop_counter_on_the_served_step():
    from worldserve.dynamics.models.transformer import WorldModel, WorldModelConfig

    cfg = WorldModelConfig(**(TINY | {"frame_height": 32, "frame_width": 48, "context_frames": 4, "guidance": 2.0}))
    model = WorldModel.random(cfg, seed=0).to_serving("cpu")
    model.configure_state_pool(model.page_nbytes * 16)
    assert transformer_step_flops(cfg).total == _counted(model)


def test_canvas_flops_equal_flop_counter_on_the_served_step():
    from worldserve.dynamics.models.canvas.config import CanvasConfig
    from worldserve.dynamics.models.canvas.model import CanvasWorldModel

    for extra in ({}, {"player_layer": True, "background_canvas": True}):
        cfg = CanvasConfig(
            frame_height=32,
            frame_width=48,
            canvas_width=128,
            canvas_origin=32,
            channels=(8, 16, 16),
            head_dim=8,
            context_frames=4,
            event_dim=8,
            cond_dim=16,
            **extra,
        )
        assert canvas_step_flops(cfg).total == _counted(CanvasWorldModel.random(cfg, seed=0))


def test_sizes_each_model_cannot_run_say_why():
    models = {m.name: m for m in served_models(served_config())}
    assert {"platformer", "platformer-fast"} <= set(models)
    for name in ("platformer", "platformer-fast"):  # both served tiers are scroll canvases
        with pytest.raises(CannotRun, match="canvas_origin 384 outside"):
            config_at(models[name], SIZES["720x1280"])
        config_at(models[name], SIZES["360x640"])


@pytest.mark.parametrize(
    "args, named",
    [
        (["--model", "nosuch"], "'nosuch'"),
        (["--model", "platformer", "--size", "720x1280"], "720x1280"),
        (["--size", "big"], "'big'"),
        (["--efficiency", "1.5"], "1.5"),
    ],
)
def test_errors_are_one_line_exit_2_and_write_nothing(tmp_path, args, named):
    out = tmp_path / "docs" / "capacity.md"
    res = CliRunner().invoke(app, [*args, "--out", str(out), "--redis-url", "redis://127.0.0.1:1/0"])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], res.stderr
    assert not (tmp_path / "docs").exists() or not any((tmp_path / "docs").iterdir())


def test_an_unreachable_redis_is_one_line(tmp_path):
    out = tmp_path / "capacity.md"
    res = CliRunner().invoke(
        app,
        [
            "--model",
            "platformer",
            "--size",
            "64x64",
            "--quick",
            "--out",
            str(out),
            "--redis-url",
            "redis://127.0.0.1:1/0",
        ],
    )
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --redis-url 'redis://127.0.0.1:1/0'"), res.stderr
    assert not out.exists()


def test_gpu_figures_that_are_not_figures_are_an_error(tmp_path):
    bad = tmp_path / "gpu.json"
    bad.write_text('{"runs": []}')
    out = tmp_path / "capacity.md"
    res = CliRunner().invoke(app, ["--gpu-figures", str(bad), "--out", str(out)])
    assert res.exit_code == 2 and "gpu.json" in res.stderr and not out.exists()


@pytest.mark.timeout(600)
def test_quick_run_on_a_real_redis_writes_every_model_and_size(tmp_path, redis_server):
    out = tmp_path / "capacity.md"
    res = CliRunner().invoke(app, ["--quick", "--out", str(out), "--redis-url", redis_server.url])
    assert res.exit_code == 0, res.output
    doc = out.read_text()
    data = json.loads((tmp_path / "capacity.json").read_text())
    models = [m.name for m in served_models(served_config())] + [DIT_NAME]
    rows = {(r["model"], r["size"]): r for r in data["rows"]}
    assert set(rows) == {(m, s) for m in models for s in SIZES}
    for (m, s), r in rows.items():
        # both tables name every pair once
        assert doc.count(f"| {m} | {s} |") == 2, (m, s)
        if r.get("cannot_run"):
            assert f"| {m} | {s} | cannot run: {r['cannot_run']}" in doc
            continue
        if m == DIT_NAME:  # FLOPs and declared shapes only
            assert r["steps_per_s_h200"] > 0 and r["redis_not_measured"] and r["steps_per_s_cpu"] is None
            continue
        for key in ("steps_per_s_cpu", "steps_per_s_h200", "redis_bytes_active", "redis_bytes_idle"):
            assert r[key] > 0, (m, s, key)
        assert r["steps_per_s_h200_estimate"] is True
        assert r["redis_bytes_active"] > r["redis_bytes_idle"]
        assert r["redis_ops_per_step"] >= 2  # at least the read and the append script
        assert r["archive_bytes_per_step"] >= r["payload"]["latent_bytes"]  # the chunk holds the latents
        assert r["archived_steps"] == 8  # two chunks of 4 (--quick)
    assert rows[("platformer", "720x1280")]["cannot_run"]
    assert "multiple of 16" in rows[(DIT_NAME, "360x640")]["cannot_run"]
    # bigger frames, more bytes and more FLOPs
    fast = [rows[("platformer-fast", s)] for s in SIZES if not rows[("platformer-fast", s)].get("cannot_run")]
    assert len(fast) >= 2
    assert [r["redis_bytes_active"] for r in fast] == sorted(r["redis_bytes_active"] for r in fast)
    assert [r["flops_per_step"] for r in fast] == sorted(r["flops_per_step"] for r in fast)
    assert "ESTIMATE" in doc and "$0.02" in doc


def test_gpu_check_figures_give_the_efficiency_and_measured_steps_win(tmp_path):
    from loadtest.capacity import estimate as E

    f = tmp_path / "engine_default.json"
    f.write_text(
        json.dumps(
            {
                "model": "platformer (kind scroll_canvas, registry)",
                "device": "cuda",
                "flops_per_frame": 2e9,
                "peak_flops": 989e12,
                "runs": [{"frames_per_s": 1000.0}, {"frames_per_s": 40000.0}, {"fits": False}],
                "steps_per_s": {"platformer": {"64x64": 30000.0}},
            }
        )
    )
    gpu = E.read_gpu_figures(f)
    assert gpu.efficiency == pytest.approx(40000 * 2e9 / 989e12)
    base = dict(
        kind="world_model",
        flops_per_step=1e12,
        state_bytes_per_session=4e9,  # float32 on the CPU: 2e9 in bf16 on the GPU
        archive_bytes_per_step=1000,
        redis_bytes_active=2**30,
        redis_bytes_idle=2**29,
    )
    est = E.derive(dict(base, model="platformer-fast", size="64x64"), efficiency=0.5, gpu=gpu, usd_per_h=3.6)
    assert est["steps_per_s_h200"] == pytest.approx(989e12 * 0.5 / 1e12) and est["steps_per_s_h200_estimate"]
    assert est["sessions_per_gpu_memory"] == int(141e9 * 0.8 // 2e9) == 56
    assert est["sessions_per_gpu_24fps"] == pytest.approx(494.5 / 24)
    assert est["usd_per_simulated_s_24fps"] == pytest.approx(0.001 / (494.5 / 24))
    assert est["sessions_per_redis_node_active"] == 48 and est["sessions_per_redis_node_idle"] == 96
    assert est["archive_write_bytes_per_s_per_1000_sessions_24fps"] == 24_000_000
    got = E.derive(
        dict(base, model="platformer", size="64x64", kind="scroll_canvas"), efficiency=0.5, gpu=gpu, usd_per_h=3.6
    )
    assert got["steps_per_s_h200"] == 30000.0 and not got["steps_per_s_h200_estimate"]
    assert got["sessions_per_gpu_8fps"] == int(141e9 * 0.8 // 4e9)  # memory-bound: 4e9 bytes each
