"""The live rooms' metrics: per-model playout of this gateway replica's rooms and players, with
bounded labels (model, role, outcome; never a session id)."""

from __future__ import annotations

FPS_WINDOW_S = 2.0  # achieved fps is observed over windows this long


class LiveMetrics:
    """Per-session playout, exported with bounded labels (model, role, outcome; never a session id)."""

    def __init__(self, metrics) -> None:
        m = metrics
        self._frames = m.counter("live_frames", "Frames a live session produced (rate: achieved frames/s)", ("model",))
        self._missed = m.counter(
            "live_deadline_misses",
            "Live ticks skipped: their step ended after the tick's deadline (or failed)",
            ("model",),
        )
        self._dropped = m.counter(
            "live_frames_dropped",
            "Frames a slow client had not taken when the next came (dropped for that client alone)",
            ("model",),
        )
        self._k2f = m.histogram(
            "live_key_to_frame_seconds",
            "From a controller's action arriving to the first frame that shows it",
            ("model",),
            (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0),
        )
        self._fps = m.histogram(
            "live_session_fps",
            f"Achieved frames/s of a live session (one observation per session each {FPS_WINDOW_S:g} s)",
            ("model",),
            (1, 2, 5, 8, 10, 12, 15, 20, 24, 30, 60),
        )
        self._sessions = m.gauge("live_sessions", "Live sessions this gateway replica ticks", ("model",))
        self._players = m.gauge("live_players", "Players connected to this gateway replica", ("model", "role"))
        self._errors = m.counter("live_step_errors", "Live steps that failed, by status", ("model", "code"))
        self.messages_dropped = m.counter("live_messages_dropped", "Player messages dropped, by reason", ("reason",))
        self._n_sessions: dict[str, int] = {}
        self._n_players: dict[tuple[str, str], int] = {}

    def frame(self, model: str) -> None:
        self._frames.inc(model=model)

    def missed(self, model: str, n: int) -> None:
        self._missed.inc(n, model=model)

    def dropped(self, model: str) -> None:
        self._dropped.inc(model=model)

    def key_to_frame(self, model: str, s: float) -> None:
        self._k2f.observe(s, model=model)

    def fps(self, model: str, v: float) -> None:
        self._fps.observe(v, model=model)

    def step_error(self, model: str, code: str) -> None:
        self._errors.inc(model=model, code=code)

    def sessions(self, model: str, d: int) -> None:
        n = self._n_sessions[model] = self._n_sessions.get(model, 0) + d
        self._sessions.set(n, model=model)

    def players(self, model: str, role: str, d: int) -> None:
        n = self._n_players[(model, role)] = self._n_players.get((model, role), 0) + d
        self._players.set(n, model=model, role=role)

    def refresh(self) -> None:
        """Set the gauges again: Ray exports a gauge only while it is being set (it drops one left
        alone for about two export intervals), and players may stay for hours."""
        for model, n in self._n_sessions.items():
            self._sessions.set(n, model=model)
        for (model, role), n in self._n_players.items():
            self._players.set(n, model=model, role=role)


__all__ = ["LiveMetrics", "FPS_WINDOW_S"]
