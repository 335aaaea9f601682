"""Frame checks: exact on the game's own frames, tolerant to small colour errors, and failing on
corrupted frames (player erased, object moved, wrong colour, box for door, no streaks)."""

from __future__ import annotations

import numpy as np
import pytest

from worldserve.worlds import Game, ObjectSpec, WorldSpec, parse_caption, random_spec
from worldserve.worlds.checks import (
    STREAK_COLUMNS,
    check_objects,
    find_player,
    object_rect,
    objects_in_place,
    objects_shown,
    player_distance,
    player_position,
    player_rect,
    rain_streak_columns,
    rain_streaks,
    stars,
)
from worldserve.worlds.platformer import GROUND_Y, WORLD_WIDTH, random_actions, random_events

SPEC = parse_caption("a red door on the left, a blue box on the right, grass, day")


def _played(seeds=range(16), steps=36):
    """(game state snapshot, frame) over random episodes with events, plus scripted ones that reach
    both level ends, crouch, jump and fire there, at night and in rain."""
    out = []

    def snap(g: Game, f: np.ndarray) -> None:
        out.append(
            dict(
                pos=player_position(g),
                camera=g.camera,
                night=g.night,
                rain=g.rain,
                crouch=g.crouch,
                flash=g.flash,
                air=g.y < GROUND_Y,
                x=g.x,
                shown=objects_shown(g),
                spec=g.spec,
                frame=f,
            )
        )

    for seed in seeds:
        rng = np.random.default_rng([seed, 99])
        spec = random_spec(rng)
        g = Game(spec, seed)
        snap(g, g.reset())
        for keys, ev in zip(random_actions(rng, steps), random_events(rng, spec, steps, p=0.15)):
            snap(g, g.step(keys, ev))
    script = (
        [("left",)] * 9
        + [("left", "jump")] * 3
        + [("down",), ("down", "fire"), ("fire",), ("left", "fire")]
        + [("right",)] * 60
        + [("right", "jump")] * 4
        + [("down", "fire"), ("right", "fire"), ("up",)]
    )
    for spec, ev in (
        (SPEC, None),
        (parse_caption("a pink box on the left, a cyan door on the right, snow, night, rain"), "day breaks"),
        (parse_caption("a yellow door on the right, sand, night"), None),
    ):
        g = Game(spec, 3)
        snap(g, g.reset())
        for t, keys in enumerate(script):
            snap(g, g.step(keys, ev if t == 40 else None))
    return out


@pytest.fixture(scope="module")
def played():
    return _played()


def test_find_player_is_exact_on_the_games_frames(played):
    found = [find_player(p["frame"]) for p in played]
    misses = [(p["pos"], f) for p, f in zip(played, found) if f != p["pos"]]
    assert not misses, misses[:5]
    # the frames cover every way the game draws the player
    for key in ("crouch", "flash", "air", "night", "rain"):
        assert any(p[key] for p in played), key
    assert any(p["crouch"] and p["flash"] and p["night"] for p in played)
    assert min(p["x"] for p in played) == 4 and max(p["x"] for p in played) == WORLD_WIDTH - 4
    assert any(p["pos"][0] < 8 for p in played) and any(p["pos"][0] > 56 for p in played)


def test_find_player_tolerates_small_colour_errors(played):
    rng = np.random.default_rng(0)
    for p in played[::7]:
        noisy = np.clip(p["frame"].astype(int) + rng.integers(-8, 9, p["frame"].shape), 0, 255).astype(np.uint8)
        assert player_distance(find_player(noisy), p["pos"]) <= 1


def test_find_player_fails_on_frames_without_the_player(played):
    for p in played[::5]:
        f = p["frame"].copy()
        x, y, w, h = (
            int(v) for v in (p["pos"][0] - 3, p["pos"][1] - (6 if p["crouch"] else 10), 6, 6 if p["crouch"] else 10)
        )
        f[max(y - 1, 0) : y + h + 1, max(x - 6, 0) : x + w + 6] = f[2, 0]  # paint it (and its flash) over with sky
        assert find_player(f) is None, p["pos"]
    assert find_player(np.zeros((64, 64, 3), np.uint8)) is None
    assert find_player(np.full((64, 64, 3), 128, np.uint8)) is None
    assert player_distance(None, (1, 2)) == float("inf")


def test_a_moved_player_is_found_where_it_is_drawn():
    g = Game(SPEC, 0)
    f = g.reset()
    x, y, w, h = player_rect(g)
    moved = f.copy()
    moved[y : y + h, x : x + w] = f[y : y + h, x + 10 : x + 10 + w]  # background from 10 px right
    moved[y : y + h, x + 6 : x + 6 + w] = f[y : y + h, x : x + w]
    found = find_player(moved)
    assert found == (player_position(g)[0] + 6, player_position(g)[1])
    assert player_distance(found, player_position(g)) == 6


def test_objects_in_place_on_the_games_frames(played):
    n = 0
    for p in played:
        got = objects_in_place(p["frame"], p["spec"], p["camera"], night=p["night"], rain=p["rain"])
        for shown, ok in zip(p["shown"], got):
            if shown:
                n += 1
                assert ok, (p["spec"], p["camera"])
    assert n > 100
    # out of view: reported False; a wrong camera (by 6 px) fails too
    g = Game(SPEC, 0)
    f = g.reset()
    assert objects_shown(g) == [True, True] and objects_in_place(f, SPEC, 0) == [True, True]
    assert objects_in_place(f, SPEC, 6) == [False, False]
    assert objects_in_place(f, SPEC, -6) == [False, False]
    assert objects_in_place(f, SPEC, 100) == [False, False]


def _move(frame: np.ndarray, rect, dx: int, fill) -> np.ndarray:
    x, y, w, h = rect
    out = frame.copy()
    patch = frame[y : y + h, x : x + w].copy()
    out[y : y + h, x : x + w] = fill
    out[y : y + h, x + dx : x + dx + w] = patch
    return out


@pytest.mark.parametrize("night,rain", [(False, False), (True, False), (False, True), (True, True)])
def test_objects_in_place_fails_on_corrupted_frames(night, rain):
    spec = WorldSpec(SPEC.objects, "sand", night, rain)
    f = Game(spec, 0).reset()
    assert objects_in_place(f, spec, 0) == [True, True]
    assert check_objects(f, spec) == [True, True]
    sky = f[20, 20].copy()
    for i, o in enumerate(spec.objects):
        r = object_rect(o.side, o.kind)
        for dx in (6, -6):
            bad = objects_in_place(_move(f, r, dx, sky), spec, 0)
            assert bad[i] is False and bad[1 - i] is True, (o, dx)
        ok = objects_in_place(_move(f, r, 2, sky), spec, 0)  # within the 2 px slack
        assert ok[i] is True
    # wrong colour, and box for door / door for box
    recolour = WorldSpec((ObjectSpec("pink", "door", "left"), ObjectSpec("cyan", "box", "right")), "sand", night, rain)
    swapped = WorldSpec((ObjectSpec("red", "box", "left"), ObjectSpec("blue", "door", "right")), "sand", night, rain)
    for other in (recolour, swapped):
        g = Game(other, 0).reset()
        assert objects_in_place(g, spec, 0) == [False, False]
        assert check_objects(g, spec) == [False, False]
        assert objects_in_place(g, other, 0) == [True, True]


def test_objects_in_place_tolerates_small_colour_errors():
    rng = np.random.default_rng(1)
    for seed in range(20):
        spec = random_spec(np.random.default_rng([seed, 3]))
        f = Game(spec, 0).reset()
        noisy = np.clip(f.astype(int) + rng.integers(-6, 7, f.shape), 0, 255).astype(np.uint8)
        assert all(objects_in_place(noisy, spec, 0)) and all(check_objects(noisy, spec))


def test_check_objects_on_first_frames_and_wrong_sides():
    rng = np.random.default_rng(5)
    n = 0
    for _ in range(150):
        spec = random_spec(rng)
        assert all(check_objects(Game(spec, 0).reset(), spec)), spec
        n += len(spec.objects)
    assert n > 150
    left = parse_caption("a red door on the left")
    right = parse_caption("a red door on the right")
    assert check_objects(Game(left, 0).reset(), right) == [False]
    assert check_objects(Game(right, 0).reset(), left) == [False]
    assert check_objects(np.zeros((64, 64, 3), np.uint8), SPEC) == [False, False]
    assert check_objects(Game(parse_caption("grass"), 0).reset(), SPEC) == [False, False]


def test_rain_streaks_on_rain_frames_only(played):
    rain = [p for p in played if p["rain"]]
    dry = [p for p in played if not p["rain"]]
    assert len(rain) > 50 and len(dry) > 50
    assert all(rain_streaks(p["frame"]) for p in rain)
    assert not any(rain_streaks(p["frame"]) for p in dry)
    assert min(rain_streak_columns(p["frame"]) for p in rain) >= 12
    assert max(rain_streak_columns(p["frame"]) for p in dry) <= 2
    # a rain frame with its streaks painted over with their neighbours: dry
    f = Game(WorldSpec(SPEC.objects, "grass", False, True), 0).reset().copy()
    for c in STREAK_COLUMNS:
        f[:, c] = f[:, c - 1]
    assert rain_streak_columns(f) == 0 and not rain_streaks(f)


def test_stars_at_night_only(played):
    night = [stars(p["frame"]) for p in played if p["night"]]
    day = [stars(p["frame"]) for p in played if not p["night"]]
    assert np.mean(night) > 5 and min(night) >= 1
    assert max(day) == 0
    g = Game(parse_caption("grass, night"), 0)
    f = g.reset()
    assert stars(f) > 5
    assert stars(np.broadcast_to(f[GROUND_Y - 10, 30], f.shape).copy()) == 0  # an empty night sky


def test_frames_must_be_rgb():
    with pytest.raises(ValueError, match="frame must be"):
        find_player(np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="frame must be"):
        check_objects(np.zeros((64, 64, 4), np.uint8), SPEC)
