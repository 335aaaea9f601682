"""Baselines the fidelity evaluation must fail: models that do nothing a world model should.

- :class:`StillFrame` shows its first frame forever (whatever the keys or events).
- :class:`ConstantDimming` shows its first frame, darkened by a constant per event in force (the
  game's night and rain brightness): it passes a brightness-only event check and nothing else.

Both implement :class:`~worldserve.dynamics.interface.DynamicsModelProtocol` (latents are the
frames as float32), so the evaluator serves them exactly as it serves a trained model, cache-miss
resume included (their resume data is the first frame and the weather in force)::

    python -m worldserve.train.evaluate --baseline still
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from worldserve.dynamics.interface import ActionSpace, ModelInfo, Runtime
from worldserve.dynamics.layers.actions import normalize_event
from worldserve.worlds import EVENTS, Game, WorldSpec, random_spec
from worldserve.worlds.platformer import KEYS, VIEW


class StillFrame:
    """A session's frames are its first frame, forever."""

    name = "still"

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            frame_width=VIEW,
            frame_height=VIEW,
            action_space=ActionSpace(keys=KEYS),
            context_frames=16,
            sample_steps=1,
            default_guidance=1.0,
            events_supported=True,
            event_max_bytes=64,
            events=tuple(EVENTS),
        )

    @property
    def runtime(self) -> Runtime:
        return Runtime(device="cpu", dtype="float32", attention_backend="none")

    def action_vector(self, keys: Sequence[str], mouse: Mapping[str, float] | None = None) -> torch.Tensor:
        return self.info.action_space.vector(keys, mouse)

    def null_action(self) -> torch.Tensor:
        return torch.zeros(len(KEYS))

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.float()  # (N, H, W, 3)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.round().clamp(0, 255).to(torch.uint8)

    def prefill(
        self,
        latents: torch.Tensor | Sequence[torch.Tensor],
        actions: torch.Tensor,
        first_step: int,
        events: Sequence[str] | None = None,
        resume: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
    ) -> dict[str, Any]:
        last = (resume or [None])[-1]
        state: dict[str, Any] = {"step": first_step + len(latents) - 1, "night": False, "rain": False}
        if last is not None:  # a resumed session: its first frame and the weather in force, as kept
            state["first"] = last["first"].float()
            state["night"], state["rain"] = (bool(x) for x in last["flags"].tolist())
        else:
            state["first"] = torch.as_tensor(latents[-1]).float()
        for ev in events or []:
            self._event(state, ev)
        return state

    def _event(self, state: dict[str, Any], event: str) -> None:
        """Keep the weather an event switches (``EVENTS``) in the state."""
        text = normalize_event(event)
        if text in EVENTS:
            flag, value = EVENTS[text]
            state[flag] = value

    def _scale(self, state: dict[str, Any]) -> float:
        """How much the frame is darkened: not at all."""
        return 1.0

    def step(
        self,
        states: list[Any],
        actions: torch.Tensor,
        seeds: Sequence[int],
        steps: Sequence[int],
        guidance: float | None = None,
        events: Sequence[str] | None = None,
    ) -> torch.Tensor:
        out = []
        for i, (st, s) in enumerate(zip(states, steps)):
            self._event(st, (events or [""] * len(states))[i])
            st["step"] = int(s)
            out.append((st["first"] * self._scale(st)).floor())
        return torch.stack(out)

    def resume_data(self, state: Any) -> Mapping[str, torch.Tensor]:
        return {"first": state["first"].to(torch.uint8), "flags": torch.tensor([state["night"], state["rain"]])}

    def state_nbytes(self, state: Any) -> int:
        return VIEW * VIEW * 3 * 4

    def release_state(self, state: Any) -> None:
        pass

    def state_step(self, state: Any) -> int:
        return int(state["step"])


@functools.cache
def _game_dimming(worlds: int = 16) -> tuple[float, float]:
    """How much the game darkens a first view on average: (night, rain) mean-brightness ratios."""
    rng = np.random.default_rng(0)
    day, night, rain = 0.0, 0.0, 0.0
    for _ in range(worlds):
        s = random_spec(rng)
        day += float(Game(WorldSpec(s.objects, s.ground, False, False)).reset().mean())
        night += float(Game(WorldSpec(s.objects, s.ground, True, False)).reset().mean())
        rain += float(Game(WorldSpec(s.objects, s.ground, False, True)).reset().mean())
    return night / day, rain / day


class ConstantDimming(StillFrame):
    """The first frame, darkened by a constant while night or rain is in force (as much as the game
    darkens a frame on average): brightness follows the events, nothing else does."""

    name = "dimming"

    def _scale(self, state: dict[str, Any]) -> float:
        night, rain = _game_dimming()
        return (night if state["night"] else 1.0) * (rain if state["rain"] else 1.0)


BASELINES: dict[str, type[StillFrame]] = {"still": StillFrame, "dimming": ConstantDimming}
"""Name (``--baseline``) -> baseline model."""
