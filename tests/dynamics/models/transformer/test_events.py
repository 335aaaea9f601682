"""WorldModel event conditioning: optional, backward compatible, cached like actions."""

from __future__ import annotations

import json

import pytest
import torch

from worldserve.dynamics.layers.events import normalize_event, tokenize_events
from worldserve.dynamics.models.transformer import WorldModel, WorldModelConfig

TINY = WorldModelConfig(
    frame_height=32,
    frame_width=32,
    latent_channels=4,
    ae_channels=8,
    dim=64,
    n_layers=2,
    n_heads=2,
    context_frames=4,
    event_dim=32,
)


@pytest.fixture(scope="module")
def tiny() -> WorldModel:
    return WorldModel.random(TINY, seed=0)


def _z(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 4, 4, 4, generator=torch.Generator().manual_seed(seed))


def _a(model: WorldModel, n: int) -> torch.Tensor:
    return torch.stack([model.null_action()] + [model.action_vector(["right"])] * (n - 1))


def test_events_supported_and_the_default_config_has_them():
    assert WorldModelConfig().event_dim > 0
    assert WorldModel.random(TINY).events_supported
    off = WorldModel.random(WorldModelConfig(**{**TINY.to_dict(), "event_dim": 0}))
    assert not off.events_supported and off.event_encoder is None
    cache = off.prefill(_z(1), _a(off, 1), 0, events=[""])  # "" is always fine
    off.step([cache], _a(off, 2)[1:], [0], [1], events=[""])
    with pytest.raises(ValueError, match="no event conditioning.*night falls"):
        off.step([cache], _a(off, 2)[1:], [0], [2], events=["night falls"])


def test_the_event_encoder_does_not_change_the_other_weights():
    on = WorldModel.random(TINY, seed=4).state_dict()
    off = WorldModel.random(WorldModelConfig(**{**TINY.to_dict(), "event_dim": 0}), seed=4).state_dict()
    assert all(torch.equal(on[k], off[k]) for k in off)


def test_no_events_equals_empty_events(tiny):
    def run(**kw) -> torch.Tensor:
        cache = tiny.prefill(_z(2), _a(tiny, 2), 0, **({"events": kw["pre"]} if "pre" in kw else {}))
        extra = {"events": kw["ev"]} if "ev" in kw else {}
        return tiny.step([cache], _a(tiny, 3)[2:], [1], [2], **extra)

    base = run()
    assert torch.equal(base, run(pre=None, ev=None))
    assert torch.equal(base, run(pre=["", ""], ev=["  "]))


def test_events_change_frames_and_text_is_normalized(tiny):
    def run(pre: list[str], ev: list[str]) -> torch.Tensor:
        cache = tiny.prefill(_z(2), _a(tiny, 2), 0, events=pre)
        return tiny.step([cache], _a(tiny, 3)[2:], [1], [2], events=ev)

    none = run(["", ""], [""])
    night = run(["", ""], ["night falls"])
    assert (night - none).abs().max() > 1e-3
    assert torch.equal(night, run(["", ""], ["  Night   FALLS "]))
    past = run(["", "night falls"], [""])  # an event on a past frame reaches later frames through the cache
    assert (past - none).abs().max() > 1e-4
    assert normalize_event(" It  Starts to RAIN ") == "it starts to rain"


def test_batched_step_with_mixed_events_matches_single_steps(tiny):
    evs = ["night falls", "", "it starts to rain"]
    caches = [tiny.prefill(_z(2, i), _a(tiny, 2), 0) for i in range(3)]
    solo = [tiny.prefill(_z(2, i), _a(tiny, 2), 0) for i in range(3)]
    got = tiny.step(caches, _a(tiny, 4)[1:], [5, 6, 7], [2, 2, 2], events=evs)
    want = torch.cat([tiny.step([c], _a(tiny, 2)[1:], [5 + i], [2], events=[evs[i]]) for i, c in enumerate(solo)])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_prefill_with_events_equals_streaming(tiny):
    evs = ["", "night falls", "night falls"]
    a = _a(tiny, 4)
    stream = tiny.prefill(_z(1), a[:1], 0, events=evs[:1])
    frames = [_z(1)] + [tiny.step([stream], a[s : s + 1], [3], [s], events=[evs[s]]) for s in (1, 2)]
    rebuilt = tiny.prefill(torch.cat(frames), a[:3], 0, events=evs)
    (rk, rv), (sk, sv) = tiny.state_kv(rebuilt, 1), tiny.state_kv(stream, 1)
    torch.testing.assert_close(rk, sk, atol=1e-4, rtol=0)
    torch.testing.assert_close(rv, sv, atol=1e-4, rtol=0)


def test_bad_events_are_rejected(tiny):
    cache = tiny.prefill(_z(1), _a(tiny, 1), 0)
    act = _a(tiny, 2)[1:]
    with pytest.raises(ValueError, match="1 strings"):
        tiny.step([cache], act, [0], [1], events=["a", "b"])
    with pytest.raises(ValueError, match="sequence"):
        tiny.step([cache], act, [0], [1], events="night falls")
    with pytest.raises(ValueError, match="65 bytes"):
        tiny.step([cache], act, [0], [1], events=["x" * 65])
    with pytest.raises(ValueError, match="must be a string"):
        tiny.step([cache], act, [0], [1], events=[3])
    assert cache.last_step == 0
    with pytest.raises(ValueError, match="event_dim"):
        WorldModelConfig(event_dim=3)


def test_training_reaches_the_event_encoder():
    m = WorldModel.random(TINY, seed=1)
    m.train()
    z, a = _z(4).view(1, 4, 4, 4, 4), _a(m, 4)[None]
    loss = m(
        z, a, events=[["", "night falls", "night falls", ""]], t=torch.full((1, 4), 0.5), first_steps=torch.tensor([3])
    )
    loss.backward()
    assert m.event_encoder.tok.weight.grad.abs().sum() > 0


def test_save_load_and_legacy_checkpoints(tmp_path, tiny):
    tiny.save_pretrained(tmp_path / "m")
    loaded = WorldModel.from_pretrained(tmp_path / "m")
    assert loaded.events_supported and loaded.config == tiny.config
    # a checkpoint written before event conditioning (no event_* fields, no encoder weights) still loads
    legacy = WorldModel.random(WorldModelConfig(**{**TINY.to_dict(), "event_dim": 0}))
    legacy.save_pretrained(tmp_path / "old")
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    for k in ("event_dim", "event_layers", "event_max_bytes"):
        cfg.pop(k)
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    assert not WorldModel.from_pretrained(tmp_path / "old").events_supported


def test_tokenizer_is_byte_level():
    ids, mask = tokenize_events(["ab", ""], 8)
    assert ids.tolist() == [[256, 97, 98, 257], [256, 257, 258, 258]]
    assert mask.sum(1).tolist() == [4, 2]


def test_the_declared_events_are_the_configs_else_the_platformers():
    from worldserve.common.caption import EVENTS

    assert WorldModel.random(TINY).info.events == tuple(EVENTS)
    own = WorldModelConfig.from_dict(json.loads(json.dumps({**TINY.to_dict(), "events": ["the sun sets"]})))
    assert own.events == ("the sun sets",) and WorldModel.random(own).info.events == ("the sun sets",)
    off = WorldModel.random(WorldModelConfig(**{**TINY.to_dict(), "event_dim": 0}))
    assert off.info.events == ()  # no event conditioning: none declared
    with pytest.raises(ValueError, match="events must be non-empty strings"):
        WorldModelConfig(**{**TINY.to_dict(), "events": ["ok", " "]})
