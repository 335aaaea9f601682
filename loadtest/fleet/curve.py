"""The day-shaped load curve: (hour, fraction of the peak load) points, JSON or YAML.

Either a list of ``[hour, fraction]`` pairs or ``{"points": [...]}`` (pairs, or objects with
``hour`` and ``fraction``). Hours are strictly increasing within [0, 24]; fractions in [0, 1];
between points the load is linear, and the curve wraps (the last point joins the first at 24 h).
Anything else is a :class:`~loadtest.fleet.service.FleetError` naming the bad value.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from loadtest.fleet.service import FleetError

DEFAULT_POINTS: tuple[tuple[float, float], ...] = (
    (0.0, 0.35),
    (4.0, 0.15),
    (7.0, 0.3),
    (10.0, 0.6),
    (13.0, 0.75),
    (17.0, 0.8),
    (20.0, 1.0),
    (22.0, 0.85),
    (24.0, 0.35),
)
"""A consumer-shaped day: a trough before dawn, a lunch shoulder, the peak at 20:00."""


@dataclass(frozen=True)
class LoadCurve:
    points: tuple[tuple[float, float], ...]

    def at(self, hour: float) -> float:
        """The fraction of the peak at ``hour`` (mod 24), linear between points."""
        h = hour % 24.0
        pts = list(self.points)
        if pts[0][0] > 0:
            pts.insert(0, (pts[-1][0] - 24.0, pts[-1][1]))
        if pts[-1][0] < 24:
            pts.append((pts[0][0] + 24.0, pts[0][1]))
        for (h0, f0), (h1, f1) in zip(pts, pts[1:]):
            if h0 <= h <= h1:
                return f0 if h1 == h0 else f0 + (f1 - f0) * (h - h0) / (h1 - h0)
        return pts[-1][1]

    @property
    def peak(self) -> float:
        return max(f for _, f in self.points)


def _number(v: object, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise FleetError(f"{what}={v!r}: expected a number")
    x = float(v)
    if not math.isfinite(x):
        raise FleetError(f"{what}={v!r}: expected a finite number")
    return x


def parse_curve(data: object, source: str = "curve") -> LoadCurve:
    """Validate parsed JSON/YAML into a :class:`LoadCurve`."""
    pts = data.get("points") if isinstance(data, dict) else data
    if not isinstance(pts, list):
        raise FleetError(f"{source}: expected a list of [hour, fraction] points (or {{points: [...]}}), got {pts!r}")
    if len(pts) < 2:
        raise FleetError(f"{source}: {len(pts)} point(s): expected at least 2")
    out: list[tuple[float, float]] = []
    for i, p in enumerate(pts):
        if isinstance(p, dict):
            if set(p) != {"hour", "fraction"}:
                raise FleetError(f"{source}: points[{i}]={p!r}: expected keys hour and fraction")
            h, f = p["hour"], p["fraction"]
        elif isinstance(p, (list, tuple)) and len(p) == 2:
            h, f = p
        else:
            raise FleetError(f"{source}: points[{i}]={p!r}: expected [hour, fraction]")
        hour = _number(h, f"{source}: points[{i}].hour")
        frac = _number(f, f"{source}: points[{i}].fraction")
        if not 0.0 <= hour <= 24.0:
            raise FleetError(f"{source}: points[{i}].hour={h!r}: expected an hour in [0, 24]")
        if not 0.0 <= frac <= 1.0:
            raise FleetError(f"{source}: points[{i}].fraction={f!r}: expected a fraction in [0, 1]")
        if out and hour <= out[-1][0]:
            raise FleetError(f"{source}: points[{i}].hour={h!r}: hours must increase (previous {out[-1][0]:g})")
        out.append((hour, frac))
    if max(f for _, f in out) <= 0:
        raise FleetError(f"{source}: every fraction is 0: no load at all")
    return LoadCurve(tuple(out))


def load_curve(path: Path | None) -> LoadCurve:
    """The curve in ``path`` (JSON or YAML), or the default day when None."""
    if path is None:
        return LoadCurve(DEFAULT_POINTS)
    try:
        text = path.read_text()
    except OSError as e:
        raise FleetError(f"--curve {path}: {e.strerror or e}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FleetError(f"--curve {path}: not {'JSON' if path.suffix == '.json' else 'YAML'} ({first})") from None
    return parse_curve(data, f"--curve {path}")
