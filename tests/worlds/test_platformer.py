"""The procedural platformer: determinism, scrolling, keys, events, captions and the palette check."""

from __future__ import annotations

import numpy as np
import pytest

from worldserve.worlds import (
    COLORS,
    EVENTS,
    Game,
    ObjectSpec,
    WorldSpec,
    caption_of,
    check_palette,
    generate_trajectory,
    parse_caption,
    random_spec,
)
from worldserve.worlds.platformer import KEYS, NIGHT_SCALE, RAIN_DIM, WORLD_WIDTH

SPEC = parse_caption("a red door on the left, a blue box on the right, grass, day")


def test_frames_are_64x64_rgb_uint8():
    f = Game(SPEC, seed=0).reset()
    assert f.shape == (64, 64, 3) and f.dtype == np.uint8


def test_trajectories_are_seeded_and_reproducible():
    a, b, c = generate_trajectory(5, 20), generate_trajectory(5, 20), generate_trajectory(6, 20)
    assert np.array_equal(a.frames, b.frames) and a.actions == b.actions and a.events == b.events
    assert a.caption == b.caption
    assert not np.array_equal(a.frames, c.frames)
    assert a.frames.shape == (21, 64, 64, 3) and len(a.actions) == len(a.events) == 21
    assert a.actions[0] == () and a.events[0] == ""
    assert parse_caption(a.caption) == a.spec


def test_first_view_depends_only_on_the_caption():
    assert np.array_equal(Game(SPEC, seed=1).reset(), Game(SPEC, seed=2).reset())
    # ...while the rest of the level is seeded
    g1, g2 = Game(SPEC, seed=1), Game(SPEC, seed=2)
    for _ in range(30):
        f1, f2 = g1.step(["right"]), g2.step(["right"])
    assert not np.array_equal(f1, f2)


def test_the_world_scrolls_and_coming_back_shows_the_same_place():
    g = Game(SPEC, seed=3)
    start = g.reset()
    assert g.camera == 0
    frames = [g.step(["right"]) for _ in range(40)]
    assert g.camera > 64  # the first view is entirely out of sight
    assert not np.array_equal(frames[-1], start)
    for _ in range(40):
        back = g.step(["left"])
    assert g.camera == 0 and g.x == 32
    assert not np.array_equal(back, start)  # the player faces left now...
    # ...but the place itself (everything off the player) is the same as at the start
    mask = np.ones((64, 64), bool)
    mask[30:48, 24:40] = False
    assert np.array_equal(back[mask], start[mask])
    assert WORLD_WIDTH > 64


@pytest.mark.parametrize("keys", [["left"], ["right"], ["up"], ["jump"], ["down"], ["fire"], ["left", "fire"]])
def test_every_key_changes_the_next_frame(keys):
    g = Game(SPEC, seed=0)
    g.reset()
    for _ in range(20):  # walk into the level so that "left" scrolls too
        g.step(["right"])
    g.step([])
    noop = Game(SPEC, seed=0)
    noop.reset()
    for _ in range(20):
        noop.step(["right"])
    noop.step([])
    assert not np.array_equal(g.step(keys), noop.step([]))


def test_up_and_jump_are_the_same_action():
    a, b = Game(SPEC, 0), Game(SPEC, 0)
    a.reset(), b.reset()
    for _ in range(6):
        assert np.array_equal(a.step(["up"]), b.step(["jump"]))


def test_unknown_key_and_event_are_rejected():
    g = Game(SPEC, 0)
    with pytest.raises(ValueError, match="'shoot'"):
        g.step(["shoot"])
    with pytest.raises(ValueError, match="'a meteor hits'"):
        g.step([], event="a meteor hits")
    assert set(KEYS) == {"left", "right", "up", "down", "jump", "fire"}


def test_night_falls_darkens_and_day_breaks_restores():
    g = Game(SPEC, 0)
    day = g.reset()
    night = g.step([], event="night falls")
    assert night.mean() < 0.6 * day.mean()
    assert g.night and g.event == "night falls"
    assert g.step([]).mean() == pytest.approx(night.mean())  # stays in force
    again = g.step([], event="day breaks")
    assert np.array_equal(again, day)


def test_rain_starts_and_stops():
    g = Game(SPEC, 0)
    dry = g.reset()
    wet = g.step([], event="it starts to rain")
    streaks = np.abs(wet.astype(int) - dry.astype(int) * RAIN_DIM).max(-1) > 8
    assert streaks.sum() > 80 and g.rain
    assert wet.mean() < dry.mean()  # overcast
    wet2 = g.step([])
    assert not np.array_equal(wet, wet2)  # the drops fall
    assert np.array_equal(g.step([], event="the rain stops"), dry)
    assert set(EVENTS) == {"it starts to rain", "the rain stops", "night falls", "day breaks"}


def test_caption_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(50):
        spec = random_spec(rng)
        assert parse_caption(caption_of(spec)) == spec
    s = parse_caption("A red door on the left and a blue door on the right, grass, night")
    assert s == WorldSpec((ObjectSpec("red", "door", "left"), ObjectSpec("blue", "door", "right")), "grass", True)
    assert caption_of(s) == "a red door on the left, a blue door on the right, grass, night"
    assert parse_caption("sand, rain") == WorldSpec((), "sand", False, True)


@pytest.mark.parametrize(
    "caption, quoted",
    [
        ("a red castle on the left", "castle"),
        ("a green door on the left", "green"),
        ("a red door on the top", "top"),
        ("lava", "lava"),
        ("", "''"),
        ("a red door on the left, a blue box on the left", "one object per side"),
    ],
)
def test_bad_captions_are_rejected(caption, quoted):
    with pytest.raises(ValueError, match=quoted):
        parse_caption(caption)


def test_palette_check_finds_described_objects_on_their_side():
    for night in (False, True):
        spec = WorldSpec(SPEC.objects, "snow", night, rain=True)
        frame = Game(spec, 0).reset()
        assert check_palette(frame, spec) == [True, True]
        swapped = WorldSpec(
            tuple(ObjectSpec(o.color, o.kind, "right" if o.side == "left" else "left") for o in spec.objects),
            "snow",
            night,
            True,
        )
        assert check_palette(frame, swapped) == [False, False]
        other = WorldSpec((ObjectSpec("purple", "door", "left"),), "snow", night)
        assert check_palette(frame, other) == [False]
    # a flat image of the right colour on the right half passes; nothing else does
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, 32:] = COLORS["blue"]
    assert check_palette(img, parse_caption("a blue box on the right")) == [True]
    assert check_palette(img, parse_caption("a blue box on the left")) == [False]
    dark = (np.asarray(COLORS["blue"]) * NIGHT_SCALE).astype(np.uint8)
    img[:, 32:] = dark
    assert check_palette(img, parse_caption("a blue box on the right, night")) == [True]


def test_many_random_worlds_show_their_caption():
    for seed in range(100):
        t = generate_trajectory(seed, 1)
        assert all(check_palette(t.frames[0], t.spec)), t.caption
