"""The scroll-canvas model through the DynamicsModelProtocol interface (small random weights)."""

from __future__ import annotations

import pytest
import torch

from worldserve.common.config import ModelSpec
from worldserve.dynamics.interface import DynamicsModelProtocol
from worldserve.dynamics.models.canvas.model import (
    CanvasConfig,
    CanvasNet,
    CanvasWorldModel,
    paste_sprites,
    shift_view,
    window_cols,
)
from worldserve.dynamics.registry import REGISTRY, ModelLoadError
from worldserve.worlds import Game, parse_caption

SMALL = CanvasConfig(
    channels=(8, 16, 16),
    head_dim=8,
    world_channels=2,
    time_period=8,
    event_dim=8,
    cond_dim=16,
    canvas_width=256,
    canvas_origin=96,
    context_frames=6,
)


PLAYER = CanvasConfig(**{**SMALL.to_dict(), "player_layer": True})
BACKGROUND = CanvasConfig(**{**PLAYER.to_dict(), "background_canvas": True})
KINDS = {False: SMALL, True: PLAYER, "background": BACKGROUND}
"""player: False = the plain model, True = with the player layer, "background" = and a player-free canvas."""
FRAME = 3 * 64 * 64


def _model(seed: int = 0, player: bool | str = False) -> CanvasWorldModel:
    cfg = KINDS[player]
    torch.manual_seed(seed)
    net = CanvasNet(cfg)
    with torch.no_grad():  # make the zero-initialised paths (delta, FiLM'd residuals, priors) non-trivial
        for p in net.parameters():
            if not p.any():
                p.normal_(0, 0.05)
        net.unet.out.bias[3] = 1.0  # the change head lets the delta through
        if player:
            net.sprite_mask.normal_(0, 1.0)
    return CanvasWorldModel(cfg, net)


def _first(caption: str = "a red door on the left, a blue box on the right, grass, day") -> torch.Tensor:
    return torch.from_numpy(Game(parse_caption(caption), 3).reset())[None]


def _walk(model, state, keys_list, start: int = 1, events=None):
    lats = []
    for i, keys in enumerate(keys_list):
        a = model.action_vector(keys)[None]
        lats.append(model.step([state], a, [0], [start + i], events=None if events is None else [events[i]]))
    return torch.cat(lats)


def test_implements_the_interface_and_reports_itself():
    m = _model()
    assert isinstance(m, DynamicsModelProtocol)
    info = m.info
    assert (info.frame_width, info.frame_height, info.sample_steps) == (64, 64, 1)
    assert info.action_space.keys == SMALL.keys and info.events_supported and info.parameters > 0
    assert m.runtime.device == "cpu" and m.runtime.attention_backend == "sdpa"


def test_encode_decode_round_trip_is_exact_and_latents_carry_the_camera():
    m = _model()
    f = _first()
    z = m.encode(f)
    assert z.shape == (1, SMALL.latent_size) and z.dtype == torch.float32 and z[0, -1] == 0
    assert torch.equal(m.decode(z), f)
    with pytest.raises(ValueError, match="frames must be"):
        m.encode(f[:, :32])


def test_a_player_free_canvas_keeps_the_world_and_latents_carry_the_sprite():
    m = _model(player="background")
    f = _first()
    z = m.encode(f)
    assert z.shape == (1, FRAME + 5) and z[0, FRAME:].tolist() == [0, -1, 0, 0, 0]  # no sprite: the frame whole
    assert torch.equal(m.decode(z), f)
    s = m.prefill(z, m.null_action()[None], 0)
    lats = _walk(m, s, [("right",), ("jump",), ("fire",)])
    frames = m.decode(lats)  # (3, H, W, 3) as served
    for lat, fr in zip(lats, frames):
        bg = torch.round(lat[:FRAME].view(3, 64, 64) * 255).to(torch.uint8).permute(1, 2, 0)
        ay, ax, pose, light = (int(v) for v in lat[FRAME + 1 :])
        # decode pastes the pose's mask, in its template's colours, at the anchor -- nowhere else
        differ = (fr != bg).any(-1).nonzero()
        assert differ.numel() > 0
        sh, sw = BACKGROUND.sprite_size
        assert (differ[:, 0] <= ay).all() and (differ[:, 0] > ay - sh).all()
        assert (differ[:, 1] >= ax - sw // 2).all() and (differ[:, 1] < ax - sw // 2 + sw).all()
    # the canvas holds the player-free frame; the state's newest frame is the served one
    x0 = s.cam + BACKGROUND.canvas_origin
    assert torch.equal(
        s.canvas[:, :, x0 : x0 + 64].permute(1, 2, 0),
        torch.round(lats[-1, :FRAME].view(3, 64, 64) * 255).to(torch.uint8).permute(1, 2, 0),
    )
    assert torch.equal(s.prev.permute(1, 2, 0), frames[-1])
    # a damaged latent (an anchor no step gives) decodes clipped, without wrapping around
    bad = lats[-1:].clone()
    bad[0, FRAME + 1 :] = torch.tensor([500.0, -50.0, 99.0, -3.0])
    assert m.decode(bad).shape == (1, 64, 64, 3)


@pytest.mark.parametrize("player", [False, True, "background"])
def test_steps_are_deterministic_and_ignore_seed_and_guidance(player):
    m = _model(player=player)
    z = m.encode(_first())
    outs = []
    for seed, g in ((0, None), (99, 5.0)):
        s = m.prefill(z, m.null_action()[None], 0)
        outs.append(
            torch.cat(
                [
                    m.step([s], m.action_vector(k)[None], [seed], [i + 1], guidance=g)
                    for i, k in enumerate([("right",), ("jump",), ("left", "fire")])
                ]
            )
        )
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("player", [False, True, "background"])
def test_prefill_from_the_last_frames_continues_exactly_like_the_live_state(player):
    m = _model(player=player)
    z0 = m.encode(_first())
    live = m.prefill(z0, m.null_action()[None], 0)
    keys = [("right",)] * 3 + [("jump",), ("left",)]
    lats = _walk(m, live, keys)
    window = torch.cat([z0, lats])  # steps 0..5, all inside context_frames
    acts = torch.stack([m.null_action()] + [m.action_vector(k) for k in keys])
    rebuilt = m.prefill(window, acts, 0)
    assert rebuilt.step == live.step == 5 and rebuilt.cam == live.cam
    assert torch.equal(rebuilt.canvas, live.canvas) and torch.equal(rebuilt.valid, live.valid)
    nxt = [m.step([s], m.action_vector(("right",))[None], [0], [6]) for s in (live, rebuilt)]
    assert torch.equal(nxt[0], nxt[1])


@pytest.mark.parametrize("player", [False, True, "background"])
def test_a_batch_gives_each_session_what_it_gets_alone(player):
    m = _model(player=player)
    z = m.encode(torch.cat([_first(), _first("snow, night"), _first("a cyan box on the left, sand, rain")]))
    keys = [("right",), ("left", "jump"), ()]
    batch_states = [m.prefill(z[i : i + 1], m.null_action()[None], 0) for i in range(3)]
    acts = torch.stack([m.action_vector(k) for k in keys])
    together = m.step(batch_states, acts, [0, 1, 2], [1, 1, 1])
    for i in range(3):
        s = m.prefill(z[i : i + 1], m.null_action()[None], 0)
        alone = m.step([s], acts[i : i + 1], [i], [1])
        # batched convolutions may round differently by one 8-bit level at most
        assert (together[i, :FRAME] - alone[0, :FRAME]).abs().max() <= 1 / 255 + 1e-6
        assert torch.equal(together[i, FRAME:], alone[0, FRAME:])  # camera (and sprite)


def test_the_canvas_remembers_what_the_view_saw():
    m = _model()
    s = m.prefill(m.encode(_first()), m.null_action()[None], 0)
    first = s.canvas[:, :, SMALL.canvas_origin : SMALL.canvas_origin + 64].clone()
    _walk(m, s, [("right",)] * 4)
    seen = s.valid.nonzero().flatten()
    assert seen.min() <= SMALL.canvas_origin  # the first view is still remembered
    # columns of the first view that the view has left are untouched
    left_edge = s.cam + SMALL.canvas_origin
    if s.cam > 0:
        assert torch.equal(s.canvas[:, :, SMALL.canvas_origin : left_edge], first[:, :, : s.cam])
    assert m.state_nbytes(s) >= s.canvas.numel()


def test_bad_inputs_are_refused_with_a_message():
    m = _model()
    s = m.prefill(m.encode(_first()), m.null_action()[None], 0)
    a = m.action_vector(("right",))[None]
    with pytest.raises(ValueError, match="newest frame is step 0"):
        m.step([s], a, [0], [5])
    with pytest.raises(ValueError, match="shape"):
        m.step([s], a[:, :3], [0], [1])
    with pytest.raises(ValueError, match="out of range"):
        m.step([s], a * 3, [0], [1])
    with pytest.raises(ValueError, match="at most 64 allowed"):
        m.step([s], a, [0], [1], events=["x" * 65])
    with pytest.raises(ValueError, match="unknown key"):
        m.action_vector(["dance"])
    m.release_state(s)
    m.release_state(s)  # idempotent
    with pytest.raises(ValueError, match="released"):
        m.step([s], a, [0], [1])


def test_events_change_the_frame_and_an_empty_event_is_no_event():
    m = _model()
    z = m.encode(_first())
    runs = {}
    for ev in (None, "", "night falls"):
        s = m.prefill(z, m.null_action()[None], 0)
        runs[ev] = _walk(m, s, [()] * 2, events=None if ev is None else [ev] * 2)
    assert torch.equal(runs[None], runs[""])
    assert not torch.equal(runs[None], runs["night falls"])


def test_shift_and_window_helpers():
    f = torch.arange(8.0).view(1, 1, 1, 8)
    fill = torch.full_like(f, -1.0)
    assert shift_view(f, torch.tensor([2]), fill).flatten().tolist() == [2, 3, 4, 5, 6, 7, -1, -1]
    assert shift_view(f, torch.tensor([-3]), fill).flatten().tolist() == [-1, -1, -1, 0, 1, 2, 3, 4]
    assert window_cols(torch.arange(10.0).view(1, 10), torch.tensor([3]), 4).tolist() == [[3, 4, 5, 6]]


def test_save_load_round_trip_and_registry(tmp_path):
    m = _model()
    m.save_pretrained(tmp_path / "m")
    loaded = REGISTRY.get("scroll_canvas")(
        str(tmp_path / "m"), device="cpu", dtype=torch.float32, spec=ModelSpec(name="canvas", kind="scroll_canvas")
    )
    z = m.encode(_first())
    outs = []
    for mm in (m, loaded):
        s = mm.prefill(z, mm.null_action()[None], 0)
        outs.append(_walk(mm, s, [("right",), ("jump",)]))
    assert torch.equal(outs[0], outs[1])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"channels": [8, 16, 24], "head_dim": 8}')
    (tmp_path / "bad" / "model.safetensors").write_bytes((tmp_path / "m" / "model.safetensors").read_bytes())
    with pytest.raises(ModelLoadError, match="does not match"):
        REGISTRY.get("scroll_canvas")(
            str(tmp_path / "bad"),
            device="cpu",
            dtype=torch.float32,
            spec=ModelSpec(name="canvas", kind="scroll_canvas"),
        )
    with pytest.raises(ModelLoadError, match="not found"):
        REGISTRY.get("scroll_canvas")(
            str(tmp_path / "none"),
            device="cpu",
            dtype=torch.float32,
            spec=ModelSpec(name="canvas", kind="scroll_canvas"),
        )


def test_the_player_layer_pastes_its_template_at_the_anchor_and_clips_at_the_edges():
    frame = torch.zeros(2, 3, 64, 64)
    rgb = torch.rand(2, 3, 10, 18)
    mask = torch.zeros(2, 10, 18, dtype=torch.bool)
    mask[:, 4:, 6:12] = True  # a 6 x 6 body
    out = paste_sprites(frame, rgb, mask, torch.tensor([47, 3]), torch.tensor([32, 1]))
    q = torch.round(rgb * 255) / 255
    # session 0: bottom row 47, centre column 32 -> rows 42..47, columns 29..34
    assert torch.equal(out[0, :, 42:48, 29:35], q[0, :, 4:, 6:12])
    assert out[0].ne(0).any(0).sum() == int((q[0, :, 4:, 6:12] != 0).any(0).sum())
    # session 1: body rows -2..3 (two are above the frame), columns -2..3 (two are left of it)
    assert torch.equal(out[1, :, 0:4, 0:4], q[1, :, 6:, 8:12])
    assert out[1].ne(0).any(0).sum() == int((q[1, :, 6:, 8:12] != 0).any(0).sum())


def test_a_player_layer_model_draws_its_sprite_in_every_frame_and_round_trips(tmp_path):
    m = _model(player=True)
    s = m.prefill(m.encode(_first()), m.null_action()[None], 0)
    lats = _walk(m, s, [("right",), ("jump",), ()])
    frames = m.decode(lats)
    # the learned mask's cells are drawn in the template's (quantized) colours somewhere in each frame
    assert frames.shape == (3, 64, 64, 3)
    m.save_pretrained(tmp_path / "p")
    back = CanvasWorldModel.from_pretrained(tmp_path / "p")
    assert back.config.player_layer and back.config.sprite_size == (10, 18)
    s2 = back.prefill(back.encode(_first()), back.null_action()[None], 0)
    assert torch.equal(_walk(back, s2, [("right",), ("jump",), ()]), lats)


def test_the_declared_events_are_the_configs_else_the_platformers():
    from worldserve.common.caption import EVENTS

    assert _model().info.events == tuple(EVENTS)
    own = CanvasConfig.from_dict({**SMALL.to_dict(), "events": ["the sun sets", "fog rolls in"]})
    assert own.events == ("the sun sets", "fog rolls in") and own.to_dict()["events"] == [
        "the sun sets",
        "fog rolls in",
    ]
    assert CanvasWorldModel(own, CanvasNet(own)).info.events == ("the sun sets", "fog rolls in")
    with pytest.raises(ValueError, match="events must be non-empty strings"):
        CanvasConfig.from_dict({**SMALL.to_dict(), "events": [""]})
