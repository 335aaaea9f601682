"""A tiny side-scrolling platformer, rendered with numpy at the default model's frame size.

The level is ``WORLD_WIDTH`` (256) pixels wide and one view (64) high; the camera follows the
player, so walking right scrolls the world and walking back brings earlier places into view again
(which tests a model's memory). The first view (world x in [0, 64)) is a pure function of the
caption: its described objects, ground, time of day and weather, plus fixed clouds. Everything
further right (clouds, trees, more doors and boxes) comes from the seed.

Keys (the dynamics model's key set): ``left``/``right`` walk 4 px per step (the view scrolls, or
the player moves near the level's ends), ``up`` and ``jump`` both jump (from the ground), ``down``
crouches, ``fire`` shows a muzzle flash in front of the player. Mouse axes are ignored. Every held
key changes the frame (position, facing, pose or flash), except a jump while already in the air.

Events switch the world mid-play and stay in force until another event: ``"it starts to rain"``,
``"the rain stops"``, ``"night falls"``, ``"day breaks"``.

Captions read like ``"a red door on the left, a blue box on the right, grass, night"``:
``parse_caption`` and ``caption_of`` convert between captions and ``WorldSpec``; ``check_palette``
reads a rendered (or generated) first frame and says which described objects are visible on
their side, in their colour.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from worldserve.common.caption import (  # noqa: F401 (re-exported: worldserve.worlds)
    COLORS,
    EVENTS,
    GROUNDS,
    KINDS,
    SIDES,
    ObjectSpec,
    WorldSpec,
    _norm,
    caption_of,
    parse_caption,
)

VIEW = 64
"""Frame height and width in pixels."""
WORLD_WIDTH = 256
"""Level width in pixels (four views)."""
GROUND_Y = 48
"""First pixel row of the ground."""
SPEED = 4
"""Horizontal pixels per step while ``left`` or ``right`` is held."""
JUMP_VY = -7
"""Initial vertical velocity of a jump (pixels per step; gravity adds 1 per step)."""
NIGHT_SCALE = 0.5
"""Everything but the sky is this much darker at night."""
START_X = 32
"""Player's starting x (centre of the first view)."""

KEYS = ("left", "right", "up", "down", "jump", "fire")

# The caption grammar's vocabulary and parser live in worldserve.common.caption (served code reads
# captions too); they are re-exported here for the game and the trainers.


SKY_DAY = (110, 170, 240)
SKY_NIGHT = (15, 20, 50)
STAR = (210, 210, 170)
CLOUD = (245, 245, 250)
TRUNK = (100, 65, 30)
LEAVES = (30, 110, 45)
SKIN = (240, 200, 160)
SUIT = (35, 35, 35)
FLASH = (255, 250, 220)
RAIN = (170, 190, 235)
RAIN_DIM = 0.85
"""Rain makes the whole view this much darker (overcast)."""

# object footprints on the first view, world x of the left edge per side
_SLOT_X = {"left": 6, "right": 46}
_SIZE = {"door": (10, 16), "box": (10, 10)}  # (width, height)


def random_spec(rng: np.random.Generator) -> WorldSpec:
    """A random spec: each side holds an object with probability 0.75."""
    objects = []
    for side in SIDES:
        if rng.random() < 0.75:
            objects.append(ObjectSpec(str(rng.choice(list(COLORS))), str(rng.choice(KINDS)), side))
    return WorldSpec(
        tuple(objects), str(rng.choice(list(GROUNDS))), bool(rng.random() < 0.35), bool(rng.random() < 0.25)
    )


# --------------------------------------------------------------------------------------------------
# Palette check


def check_palette(frame: np.ndarray, spec: WorldSpec, *, tol: float = 40.0, min_pixels: int = 12) -> list[bool]:
    """For each of ``spec.objects``: is its colour (darkened at night) on its half of the frame?

    A pixel matches when every channel is within ``tol`` of the object colour (``tol`` and the
    colour scale with the night and rain dimming, as rendered); the object counts
    as present when at least ``min_pixels`` pixels of its half match. Reads only the frame's
    palette, so it works on generated frames as well as rendered ones.
    """
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"frame must be (H, W, 3), got {frame.shape}")
    half = frame.shape[1] // 2
    scale = (NIGHT_SCALE if spec.night else 1.0) * (RAIN_DIM if spec.rain else 1.0)
    out = []
    for o in spec.objects:
        region = frame[:, :half] if o.side == "left" else frame[:, half:]
        diff = np.abs(region.astype(np.float32) - np.asarray(COLORS[o.color], np.float32) * scale).max(axis=-1)
        out.append(bool((diff <= tol * scale).sum() >= min_pixels))
    return out


# --------------------------------------------------------------------------------------------------
# The game


def _fill(img: np.ndarray, x0: int, y0: int, w: int, h: int, rgb) -> None:
    x1, y1 = max(x0, 0), max(y0, 0)
    x2, y2 = min(x0 + w, img.shape[1]), min(y0 + h, img.shape[0])
    if x2 > x1 and y2 > y1:
        img[y1:y2, x1:x2] = rgb


def _draw_object(img: np.ndarray, x: int, kind: str, rgb) -> None:
    w, h = _SIZE[kind]
    y = GROUND_Y - h
    dark = tuple(int(c * 0.55) for c in rgb)
    _fill(img, x, y, w, h, dark)  # frame
    _fill(img, x + 1, y + 1, w - 2, h - 1 if kind == "door" else h - 2, rgb)
    if kind == "door":
        _fill(img, x + w - 3, y + h // 2, 1, 2, (40, 40, 40))  # knob
    else:
        _fill(img, x + 1, y + h // 2, w - 2, 1, dark)  # plank line


def _draw_cloud(img: np.ndarray, x: int, y: int) -> None:
    _fill(img, x + 2, y, 8, 2, CLOUD)
    _fill(img, x, y + 2, 14, 3, CLOUD)


def _draw_tree(img: np.ndarray, x: int) -> None:
    _fill(img, x + 3, GROUND_Y - 8, 2, 8, TRUNK)
    _fill(img, x, GROUND_Y - 16, 8, 8, LEAVES)


class Game:
    """One world: ``reset()`` gives the first frame, ``step(keys)`` the next one. Deterministic:
    the same (spec, seed) and the same keys/events give the same frames."""

    def __init__(self, spec: WorldSpec, seed: int = 0):
        self.spec = spec
        self.seed = int(seed)
        self._day, self._night, self._sky = self._build_level()
        self.reset()

    # --- level ------------------------------------------------------------------------------------
    def _build_level(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Static level art: day image, night image (H, WORLD_WIDTH, 3) uint8, sky mask (H, W)."""
        img = np.zeros((VIEW, WORLD_WIDTH, 3), dtype=np.uint8)
        img[:GROUND_Y] = SKY_DAY
        fixed = np.random.default_rng(12345)  # the first view does not depend on the seed
        rng = np.random.default_rng([self.seed, 7])
        # clouds: two fixed ones on the first view, seeded ones further right
        for x, y in ((2, 6), (38, 12)):
            _draw_cloud(img, x, y)
        for x in range(VIEW + 4, WORLD_WIDTH, 28):
            _draw_cloud(img, x + int(rng.integers(0, 12)), int(rng.integers(3, 22)))
        # seeded scenery beyond the first view: trees, doors and boxes
        x = VIEW + 2
        while x < WORLD_WIDTH - 12:
            r = rng.random()
            if r < 0.35:
                _draw_tree(img, x)
            elif r < 0.75:
                _draw_object(img, x, str(rng.choice(KINDS)), COLORS[str(rng.choice(list(COLORS)))])
            x += int(rng.integers(14, 30))
        for o in self.spec.objects:
            _draw_object(img, _SLOT_X[o.side], o.kind, COLORS[o.color])
        top, soil = GROUNDS[self.spec.ground]
        img[GROUND_Y : GROUND_Y + 3] = top
        img[GROUND_Y + 3 :] = soil
        # ground texture every 16 px: the view visibly scrolls even over plain ground
        dark = tuple(int(c * 0.75) for c in soil)
        for gx in range(0, WORLD_WIDTH, 16):
            _fill(img, gx, GROUND_Y + 6, 3, 2, dark)
            _fill(img, gx + 8, GROUND_Y + 11, 3, 2, dark)
        sky = np.all(img == SKY_DAY, axis=-1)  # after all scenery is drawn
        sky[GROUND_Y:] = False
        night = (img.astype(np.float32) * NIGHT_SCALE).round().astype(np.uint8)
        night[sky] = SKY_NIGHT
        sx, sy = fixed.integers(0, WORLD_WIDTH, 40), fixed.integers(0, GROUND_Y - 6, 40)
        star = sky[sy, sx]
        night[sy[star], sx[star]] = STAR
        return img, night, sky

    # --- play -------------------------------------------------------------------------------------
    def reset(self) -> np.ndarray:
        """Back to the start (player on the first view, the caption's time and weather)."""
        self.x, self.y, self.vy = START_X, GROUND_Y, 0
        self.facing = 1
        self.crouch = self.flash = False
        self.night, self.rain = self.spec.night, self.spec.rain
        self.event = ""
        self.t = 0
        return self.render()

    @property
    def camera(self) -> int:
        return int(np.clip(self.x - VIEW // 2, 0, WORLD_WIDTH - VIEW))

    def set_event(self, event: str) -> None:
        """Switch the world by event text (see ``EVENTS``); "" leaves the world as it is."""
        text = _norm(event)
        if text and text not in EVENTS:
            raise ValueError(f"unknown event {event!r}; expected one of {tuple(EVENTS)} or ''")
        if text:
            flag, value = EVENTS[text]
            setattr(self, flag, value)
        self.event = text

    def step(self, keys: Sequence[str], event: str | None = None) -> np.ndarray:
        """Apply one action (the held keys) and, if given, an event; returns the new frame."""
        held = set()
        for k in keys:
            if k not in KEYS:
                raise ValueError(f"unknown key {k!r}; expected one of {KEYS}")
            held.add(k)
        if event is not None:
            self.set_event(event)
        dx = SPEED * (("right" in held) - ("left" in held))
        if dx:
            self.facing = 1 if dx > 0 else -1
        self.x = int(np.clip(self.x + dx, 4, WORLD_WIDTH - 4))
        on_ground = self.y >= GROUND_Y
        if on_ground and ("up" in held or "jump" in held):
            self.vy = JUMP_VY
        self.y += self.vy
        self.vy += 1
        if self.y >= GROUND_Y:
            self.y, self.vy = GROUND_Y, 0
        self.crouch = "down" in held and self.y >= GROUND_Y
        self.flash = "fire" in held
        self.t += 1
        return self.render()

    def render(self, player: bool = True) -> np.ndarray:
        """The current view, (64, 64, 3) uint8; ``player=False``: the same view without the player
        and its muzzle flash (what is behind them; training labels for a model's player layer)."""
        cam = self.camera
        frame = (self._night if self.night else self._day)[:, cam : cam + VIEW].copy()
        scale = NIGHT_SCALE if self.night else 1.0

        def col(rgb):
            return tuple(int(round(c * scale)) for c in rgb)

        px = self.x - cam - 3  # player is 6 px wide
        h = 6 if self.crouch else 10
        top = self.y - h
        head = 3 if self.crouch else 4
        if player:
            _fill(frame, px, top, 6, head, col(SKIN))
            _fill(frame, px, top + head, 6, h - head, col(SUIT))
            _fill(frame, px + (4 if self.facing > 0 else 1), top + 1, 1, 1, (0, 0, 0))  # eye
        if player and self.flash:
            fx = px + 7 if self.facing > 0 else px - 6
            _fill(frame, fx, top + head, 5, 3, col(FLASH))
        if self.rain:  # overcast (a little darker), and streaks falling 5 px per step in screen space
            frame = (frame.astype(np.float32) * RAIN_DIM).astype(np.uint8)
            for c in range(1, VIEW, 4):
                y0 = (c * 37 + 5 * self.t) % VIEW
                rows = (np.arange(6) + y0) % VIEW
                frame[rows, c] = (frame[rows, c].astype(np.float32) * 0.3 + np.asarray(col(RAIN)) * 0.7).astype(
                    np.uint8
                )
        return frame


# --------------------------------------------------------------------------------------------------
# Trajectories


@dataclass
class Trajectory:
    """``frames[t]`` (T+1, 64, 64, 3) uint8; ``actions[t]`` the keys that made frame t (() for
    frame 0); ``events[t]`` the event text in force for frame t ("" = none); the caption of the
    world it was played in; the seed that made it."""

    frames: np.ndarray
    actions: list[tuple[str, ...]]
    events: list[str]
    caption: str
    seed: int
    spec: WorldSpec = field(default_factory=WorldSpec)


_MACROS: tuple[tuple[tuple[str, ...], float], ...] = (
    ((), 0.12),
    (("left",), 0.16),
    (("right",), 0.2),
    (("up",), 0.06),
    (("jump",), 0.06),
    (("right", "jump"), 0.08),
    (("left", "up"), 0.06),
    (("down",), 0.06),
    (("fire",), 0.06),
    (("right", "fire"), 0.05),
    (("left", "fire"), 0.04),
    (("down", "fire"), 0.02),
    (("left", "jump"), 0.03),
)


def random_actions(rng: np.random.Generator, n: int, hold: float = 0.75) -> list[tuple[str, ...]]:
    """``n`` actions from a sticky random policy: each macro-action is held for a geometric time."""
    keys = [m for m, _ in _MACROS]
    p = np.asarray([w for _, w in _MACROS])
    p = p / p.sum()
    out: list[tuple[str, ...]] = []
    cur = keys[int(rng.choice(len(keys), p=p))]
    for _ in range(n):
        if rng.random() > hold:
            cur = keys[int(rng.choice(len(keys), p=p))]
        out.append(cur)
    return out


def random_events(rng: np.random.Generator, spec: WorldSpec, n: int, p: float = 0.05) -> list[str | None]:
    """Per step: None (no new event) or an event that changes the world (each step with prob. p)."""
    night, rain = spec.night, spec.rain
    out: list[str | None] = []
    for _ in range(n):
        ev = None
        if rng.random() < p:
            if rng.random() < 0.5:
                ev = "day breaks" if night else "night falls"
                night = not night
            else:
                ev = "the rain stops" if rain else "it starts to rain"
                rain = not rain
        out.append(ev)
    return out


def generate_trajectory(
    seed: int, steps: int = 48, *, spec: WorldSpec | None = None, event_p: float = 0.05
) -> Trajectory:
    """A seeded, reproducible trajectory of ``steps`` actions (``steps + 1`` frames)."""
    rng = np.random.default_rng([int(seed), 1])
    spec = spec if spec is not None else random_spec(rng)
    game = Game(spec, seed)
    frames = [game.reset()]
    actions: list[tuple[str, ...]] = [()]
    events = [""]
    for keys, ev in zip(random_actions(rng, steps), random_events(rng, spec, steps, event_p)):
        frames.append(game.step(keys, ev))
        actions.append(keys)
        events.append(game.event)
    return Trajectory(np.stack(frames), actions, events, caption_of(spec), int(seed), spec)
