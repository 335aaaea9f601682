"""Frame checks that read a frame the way the platformer draws it (``worldserve.worlds.platformer``).

They work on the game's own frames (where they are exact) and on frames a model made (where they
tolerate small colour errors: a pixel matches a colour when every channel is within ``tol``, 40 by
default, scaled like the colour by the night and rain dimming -- as in ``check_palette``):

- :func:`find_player`: where the player sprite is, as ``(x, y)`` = (centre column, feet row) in
  screen pixels, or None. :func:`player_position` gives the same point from a :class:`Game`:
  ``(game.x - game.camera, game.y)``. The 6-px-wide sprite covers columns ``x - 3 .. x + 2`` and
  rows ``y - h .. y - 1`` (``h`` = 10, or 6 when crouching): a head (``SKIN``, 4 rows, 3 when
  crouching, with a black eye pixel) above a body (``SUIT``).
- :func:`objects_in_place`: is each caption object drawn at its place for a known camera position
  (its colour, its kind's size -- door 10x16, box 10x10 -- within ``slack`` px)?
  :func:`objects_shown` says which of them the game's current frame shows whole.
- :func:`check_objects`: on a first frame (e.g. a generated one), is each caption object on its
  half, in its colour, with its kind's height?
- :func:`rain_streaks` / :func:`rain_streak_columns`: the game's rain streaks (columns 1, 5, 9, ...
  carry a 6-px vertical streak blended 70 % with the ``RAIN`` colour).
- :func:`stars`: how many isolated ``STAR``-coloured pixels the sky holds (night).

Colours: at night everything but the sky is scaled by ``NIGHT_SCALE``; in rain the whole frame is
scaled by ``RAIN_DIM`` and the streak pixels are ``0.3 * pixel + 0.7 * RAIN`` (RAIN itself scaled
at night). A streak over the player or an object is read as part of it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .platformer import (
    _SIZE,
    _SLOT_X,
    COLORS,
    GROUND_Y,
    NIGHT_SCALE,
    RAIN,
    RAIN_DIM,
    SKIN,
    STAR,
    SUIT,
    VIEW,
    Game,
    WorldSpec,
)

TOL = 40.0
"""Default per-channel colour tolerance (at full brightness; scaled with the dimming)."""
MIN_TOL = 12.0
"""The scaled tolerance never goes below this (night-and-rain colours are small numbers)."""
PLAYER_WIDTH = 6
STREAK_COLUMNS = tuple(range(1, VIEW - 1, 4))
"""Screen columns that carry a rain streak: 1, 5, ..., 61."""

_LIGHTING = ((False, False), (True, False), (False, True), (True, True))  # (night, rain)

Rect = tuple[int, int, int, int]
"""(x, y, width, height) in screen pixels."""


# --------------------------------------------------------------------------------------------------
# colour matching


def _float(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be (H, W, 3), got {frame.shape}")
    return frame.astype(np.float32)


def scale_of(night: bool, rain: bool) -> float:
    """How much darker than day every colour but the night sky is drawn."""
    return (NIGHT_SCALE if night else 1.0) * (RAIN_DIM if rain else 1.0)


def _near(f: np.ndarray, colours, tols) -> np.ndarray:
    """(K, H, W) bool: every channel of ``f`` (H, W, 3) within ``tols[k]`` of ``colours[k]``
    (channel by channel: numpy reduces a length-3 axis slowly)."""
    c = np.asarray(colours, np.float32).reshape(-1, 3)
    t = np.broadcast_to(np.asarray(tols, np.float32).reshape(-1), (len(c),))[:, None, None]
    d = np.abs(f[None, ..., 0] - c[:, 0, None, None])
    d = np.maximum(d, np.abs(f[None, ..., 1] - c[:, 1, None, None]))
    d = np.maximum(d, np.abs(f[None, ..., 2] - c[:, 2, None, None]))
    return d <= t


def _streak_colour(c: np.ndarray, night: bool) -> np.ndarray:
    """A rain streak pixel over colour ``c`` (already dimmed): 0.3 c + 0.7 RAIN (RAIN dimmed at night)."""
    return 0.3 * c + 0.7 * np.asarray(RAIN, np.float32) * (NIGHT_SCALE if night else 1.0)


def _streak_cols(width: int) -> np.ndarray:
    return np.asarray([x for x in STREAK_COLUMNS if x < width])


def matches(frame: np.ndarray, rgb: Sequence[float], *, night: bool, rain: bool, tol: float = TOL) -> np.ndarray:
    """(H, W) bool: pixels showing ``rgb`` as the game draws it under this lighting (dimmed at
    night and in rain). In rain, a pixel of a streak column (1, 5, ...) that reads as a streak over
    the colour (``0.3 * colour + 0.7 * RAIN``) counts too; there the colour is only 30 % of the
    pixel, so the tolerance is 30 % of the scaled one (the same colour error)."""
    f = frame if frame.dtype == np.float32 else _float(frame)
    s = scale_of(night, rain)
    t = max(tol * s, MIN_TOL)
    c = np.asarray(rgb, np.float32) * s
    out = _near(f, c, t)[0]
    if rain:
        cols = _streak_cols(f.shape[1])
        out[:, cols] |= _near(f[:, cols], _streak_colour(c, night), max(0.3 * t, 6.0))[0]
    return out


def _boxes(integral: np.ndarray, t0: int, nt: int, nl: int, h: int, w: int) -> np.ndarray:
    """(..., nt, nl) counts of the boxes [top, top + h) x [left, left + w) for top in
    t0 .. t0 + nt - 1 and left in 0 .. nl - 1, from (..., H + 1, W + 1) integral images."""
    I = integral
    return (
        I[..., t0 + h : t0 + h + nt, w : w + nl]
        - I[..., t0 : t0 + nt, w : w + nl]
        - I[..., t0 + h : t0 + h + nt, :nl]
        + I[..., t0 : t0 + nt, :nl]
    )


# --------------------------------------------------------------------------------------------------
# the player


def player_position(game: Game) -> tuple[int, int]:
    """The true player position in screen pixels, as :func:`find_player` reports it:
    ``(game.x - game.camera, game.y)`` (sprite centre column, feet row = one below its last row)."""
    return int(game.x - game.camera), int(game.y)


def player_rect(game: Game) -> Rect:
    """The player sprite's screen rectangle."""
    h = 6 if game.crouch else 10
    return int(game.x - game.camera - 3), int(game.y - h), PLAYER_WIDTH, h


def flash_rect(game: Game) -> Rect | None:
    """The muzzle flash's screen rectangle (None when not firing)."""
    if not game.flash:
        return None
    x, top, _, _ = player_rect(game)
    head = 3 if game.crouch else 4
    return (x + 7 if game.facing > 0 else x - 6), top + head, 5, 3


def airborne(game: Game) -> bool:
    """The player is in the air (above the ground)."""
    return game.y < GROUND_Y


def find_player(frame: np.ndarray, *, tol: float = TOL) -> tuple[int, int] | None:
    """The player's ``(x, y)`` = (centre column, feet row) in screen pixels, or None.

    Looks for the sprite as drawn: a 6-px-wide ``SKIN`` head (4 rows) on a ``SUIT`` body (6 rows),
    or crouching (3 + 3 rows), under any lighting (day/night, dry/rain). A placement is a candidate
    when at least 60 % of the head pixels and of the body pixels match, and 75 % of all; the best
    candidate wins, a standing sprite before a crouching one (the top of a standing sprite also
    looks like a crouching one). The feet are searched down to 2 rows below ``GROUND_Y`` (the game
    never draws them lower than ``GROUND_Y``). On the game's frames the result is exact."""
    f = _float(frame)
    H, W = f.shape[:2]
    m = _player_masks(f, tol)  # (lighting, [skin, suit], H, W)
    I = np.zeros((*m.shape[:2], H + 1, W + 1), np.int32)
    I[..., 1:, 1:] = m.astype(np.int32).cumsum(-2).cumsum(-1)
    nl = W - PLAYER_WIDTH + 1
    lowest = min(H, GROUND_Y + 2)  # the feet never go below the ground's first row (2 px slack)
    for head, h in ((4, 10), (3, 6)):  # standing, then crouching
        nt = lowest - h + 1
        if nt <= 0 or nl <= 0:
            continue
        hc = _boxes(I[:, 0], 0, nt, nl, head, PLAYER_WIDTH)  # (lighting, nt, nl)
        bc = _boxes(I[:, 1], head, nt, nl, h - head, PLAYER_WIDTH)
        hf, bf = hc / (PLAYER_WIDTH * head), bc / (PLAYER_WIDTH * (h - head))
        total = (hc + bc) / (PLAYER_WIDTH * h)
        score = np.where((hf >= 0.6) & (bf >= 0.6) & (total >= 0.75), total, -1.0)
        k, ti, li = np.unravel_index(int(np.argmax(score)), score.shape)
        if score[k, ti, li] > 0:
            return int(li) + 3, int(ti) + h
    return None


def _player_masks(f: np.ndarray, tol: float) -> np.ndarray:
    """(4, 2, H, W) bool: :func:`matches` of ``SKIN`` and ``SUIT`` under the four lightings."""
    centres, tols, streaks, rains = [], [], [], []
    for night, rain in _LIGHTING:
        s = scale_of(night, rain)
        c = np.asarray([SKIN, SUIT], np.float32) * s
        centres.append(c)
        tols += [max(tol * s, MIN_TOL)] * 2
        if rain:
            streaks.append(_streak_colour(c, night))
            rains.append(max(0.3 * max(tol * s, MIN_TOL), 6.0))
    H, W = f.shape[:2]
    out = _near(f, np.concatenate(centres), tols).reshape(len(_LIGHTING), 2, H, W)
    cols = _streak_cols(W)
    rainy = [i for i, (_, r) in enumerate(_LIGHTING) if r]
    streak = _near(f[:, cols], np.concatenate(streaks), np.repeat(rains, 2)).reshape(len(rainy), 2, H, len(cols))
    for j, i in enumerate(rainy):
        out[i][:, :, cols] |= streak[j]
    return out


def player_distance(found: tuple[int, int] | None, true: tuple[int, int]) -> float:
    """Chebyshev distance in pixels (max of |dx|, |dy|); inf when no player was found."""
    if found is None:
        return float("inf")
    return float(max(abs(found[0] - true[0]), abs(found[1] - true[1])))


# --------------------------------------------------------------------------------------------------
# caption objects


def object_rect(side: str, kind: str, camera: int = 0) -> Rect:
    """Screen rectangle of the caption object on ``side`` of the first view (world x 6 or 46)."""
    w, h = _SIZE[kind]
    return _SLOT_X[side] - int(camera), GROUND_Y - h, w, h


def _overlap(a: Rect, b: Rect | None) -> bool:
    if b is None:
        return False
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def objects_shown(game: Game) -> list[bool]:
    """For each of ``game.spec.objects``: does the game's current frame show it whole (entirely in
    the view, not covered by the player or its muzzle flash)?"""
    out = []
    for o in game.spec.objects:
        r = object_rect(o.side, o.kind, game.camera)
        inside = r[0] >= 0 and r[0] + r[2] <= VIEW
        out.append(bool(inside and not _overlap(r, player_rect(game)) and not _overlap(r, flash_rect(game))))
    return out


def _interior(kind: str) -> np.ndarray:
    """(h, w) bool: the pixels of an object drawn in its own colour (not frame, knob or plank)."""
    w, h = _SIZE[kind]
    m = np.zeros((h, w), bool)
    m[1 : h if kind == "door" else h - 1, 1 : w - 1] = True
    if kind == "door":
        m[h // 2 : h // 2 + 2, w - 3] = False  # knob
    else:
        m[h // 2, 1 : w - 1] = False  # plank line
    return m


def _fraction(mask: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> float | None:
    """Fraction of mask pixels at (ys, xs) that are set, over the ones inside the frame."""
    ok = (ys >= 0) & (ys < mask.shape[0]) & (xs >= 0) & (xs < mask.shape[1])
    if not ok.any():
        return None
    return float(mask[ys[ok], xs[ok]].mean())


def _object_at(mask: np.ndarray, kind: str, x: int, top: int, *, fill: float, ring: float) -> bool:
    """Is an object of ``kind`` drawn with its top-left at (x, top)? Its colour fills at least
    ``fill`` of its interior, and at most ``ring`` of each side of the ring 2 px outside it (left
    column, right column, row above): that fixes its size (a door is taller than a box)."""
    w, h = _SIZE[kind]
    iy, ix = np.nonzero(_interior(kind))
    inside = _fraction(mask, iy + top, ix + x)
    if inside is None or inside < fill:
        return False
    rows = np.arange(top, top + h)
    for ys, xs in (
        (rows, np.full(h, x - 2)),
        (rows, np.full(h, x + w + 1)),
        (np.full(w, top - 2), np.arange(x, x + w)),
    ):
        f = _fraction(mask, ys, xs)
        if f is not None and f > ring:
            return False
    return True


def objects_in_place(
    frame: np.ndarray,
    spec: WorldSpec,
    camera: int,
    *,
    night: bool | None = None,
    rain: bool | None = None,
    tol: float = TOL,
    slack: int = 2,
    fill: float = 0.7,
    ring: float = 0.3,
) -> list[bool]:
    """For each of ``spec.objects``: is it drawn where the game draws it with the camera at
    ``camera`` -- in its colour, with its kind's size, its top-left within ``slack`` px of the true
    one? ``night``/``rain`` (default: the spec's) give the lighting the colours are read under. An
    object not entirely in the view is reported False (see :func:`objects_shown`)."""
    f = _float(frame)
    night = spec.night if night is None else night
    rain = spec.rain if rain is None else rain
    out = []
    for o in spec.objects:
        x0, top0, w, _ = object_rect(o.side, o.kind, camera)
        if x0 < 0 or x0 + w > f.shape[1]:
            out.append(False)
            continue
        mask = matches(f, COLORS[o.color], night=night, rain=rain, tol=tol)
        out.append(
            any(
                _object_at(mask, o.kind, x0 + dx, top0 + dy, fill=fill, ring=ring)
                for dy in range(-slack, slack + 1)
                for dx in range(-slack, slack + 1)
            )
        )
    return out


def check_objects(frame: np.ndarray, spec: WorldSpec, *, tol: float = TOL, min_pixels: int = 20) -> list[bool]:
    """For each of ``spec.objects`` on a first frame (rendered or generated): is an object of its
    colour on its half of the frame, with its kind's height? Rows and columns with at least 3
    pixels of the colour give the object's extent: 5..14 px wide (a door's or a box's inside is
    8), and 12..20 px tall for a door (15), 5..11 for a box (8). At least ``min_pixels`` pixels of
    the colour (under the spec's lighting) must be there."""
    f = _float(frame)
    half = f.shape[1] // 2
    out = []
    for o in spec.objects:
        region = f[:, :half] if o.side == "left" else f[:, half:]
        m = matches(region, COLORS[o.color], night=spec.night, rain=spec.rain, tol=tol)
        rows, cols = np.flatnonzero(m.sum(1) >= 3), np.flatnonzero(m.sum(0) >= 3)
        if m.sum() < min_pixels or rows.size == 0 or cols.size == 0:
            out.append(False)
            continue
        height, width = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        lo, hi = (12, 20) if o.kind == "door" else (5, 11)
        out.append(bool(lo <= height <= hi and 5 <= width <= 14))
    return out


# --------------------------------------------------------------------------------------------------
# weather and time of day


def rain_streak_columns(frame: np.ndarray, *, tol: float = 24.0, margin: float = 10.0, run: int = 4) -> int:
    """How many of the streak columns (1, 5, ..., 61) hold a rain streak: a vertical run of at least
    ``run`` pixels (wrapping round, as the game's streaks do) that read as a neighbouring column's
    pixel blended with the rain colour (``0.3 * neighbour + 0.7 * RAIN``, RAIN halved at night)
    and differ from that neighbour by at least ``margin``."""
    f = _float(frame)
    cols = np.asarray([c for c in STREAK_COLUMNS if c + 1 < f.shape[1]])
    pix = f[:, cols]  # (H, C, 3)
    streak = np.zeros(pix.shape[:2], bool)

    def dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = np.abs(a - b)
        return np.maximum(np.maximum(d[..., 0], d[..., 1]), d[..., 2])

    for nb in (f[:, cols - 1], f[:, cols + 1]):
        differs = dist(pix, nb) >= margin
        for r in (np.asarray(RAIN, np.float32), np.asarray(RAIN, np.float32) * NIGHT_SCALE):
            streak |= differs & (dist(pix, 0.3 * nb + 0.7 * r) <= tol)
    wrapped = np.concatenate([streak, streak[: run - 1]]).astype(np.int32)
    c = np.cumsum(np.concatenate([np.zeros((1, wrapped.shape[1]), np.int32), wrapped]), axis=0)
    runs = (c[run:] - c[:-run]) >= run  # windows of `run` rows all streaked
    return int(runs.any(axis=0).sum())


def rain_streaks(frame: np.ndarray, *, min_columns: int = 8) -> bool:
    """Does the frame show the game's rain (streaks in at least ``min_columns`` of the 16 streak
    columns)? The game's rain frames show them in (nearly) all, dry frames in none."""
    return rain_streak_columns(frame) >= min_columns


def stars(frame: np.ndarray, *, tol: float = TOL) -> int:
    """Stars in the sky rows (above ``GROUND_Y - 6``): single ``STAR``-coloured pixels (also as
    dimmed by rain) on a dark sky -- none of their 8 neighbours has the colour, and the neighbours
    are on average less than half as bright (a day sky, clouds or the player's head are not)."""
    f = _float(frame)[: GROUND_Y - 6]
    star = np.asarray(STAR, np.float32)
    m = _near(f, [star, star * RAIN_DIM], [tol, tol * RAIN_DIM]).any(0)
    h, w = m.shape
    pm = np.pad(m, 1).astype(np.int32)
    pb = np.pad(f.mean(-1), 1, mode="edge")
    around = np.zeros((h, w), np.int32)
    light = np.zeros((h, w), np.float32)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy == dx == 1:
                continue
            around += pm[dy : dy + h, dx : dx + w]
            light += pb[dy : dy + h, dx : dx + w]
    return int((m & (around == 0) & (light / 8 < 0.5 * f.mean(-1))).sum())
