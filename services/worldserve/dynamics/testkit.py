"""The model registry's test kit: checks any dynamics model kind must pass, whatever it is.

Pytest-free, so a model package's own tests call them as they are (``tests/dynamics`` runs them for
the shipped kinds and the toy model)::

    from worldserve.dynamics.testkit import away_and_back, check_exact_resume

    report = check_exact_resume(model, first_frame, away_and_back(model.info.action_space, 80))
    assert report.differing == [], report

:func:`check_exact_resume` is the exact-resume contract of
:class:`~worldserve.dynamics.interface.DynamicsModelProtocol`: a session stepped warm (its state
kept between steps) and the same session resumed before *every* step from what the engine keeps
for it (the last ``context_frames - 1`` latents, their actions and events, and the model's
``resume_data`` of each, through its serialised bytes) give bitwise the same frames.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from worldserve.dynamics.interface import ActionSpace, DynamicsModelProtocol, pack_resume, unpack_resume

Action = tuple[Sequence[str], Mapping[str, float]]


def away_and_back(space: ActionSpace, steps: int) -> list[Action]:
    """``steps`` actions that walk away and back: the first half holds "right" (else the first key,
    else mouse axis 0 at +1), the rest "left" (else the second key, else the axis at -1): the view
    returns to places seen more than a context window before."""
    half = steps // 2
    if space.keys:
        fwd = "right" if "right" in space.keys else space.keys[0]
        back = "left" if "left" in space.keys else space.keys[min(1, len(space.keys) - 1)]
        return [((fwd,), {}) for _ in range(half)] + [((back,), {}) for _ in range(steps - half)]
    if space.mouse_axes:
        axis = space.mouse_axes[0]
        return [((), {axis: 1.0}) for _ in range(half)] + [((), {axis: -1.0}) for _ in range(steps - half)]
    return [((), {}) for _ in range(steps)]


@dataclass
class ResumeReport:
    """What :func:`check_exact_resume` found."""

    steps: int
    differing: list[int] = field(default_factory=list)
    """Steps whose resumed frame is not bitwise the warm one (empty: the contract holds)."""
    resume_bytes: int = 0
    """The most bytes of ``resume_data`` the model kept for the window at any step."""
    frames_changed: int = 0
    """Steps whose warm frame differs from the one before (a world that never changes proves little)."""
    latents: list[torch.Tensor] = field(default_factory=list, repr=False)
    """The warm session's latents, steps 0 .. ``steps`` (a caller checks where the walk went)."""


@torch.no_grad()
def check_exact_resume(
    model: DynamicsModelProtocol,
    first_frame: torch.Tensor,
    actions: Sequence[Action],
    *,
    seed: int = 0,
    events: Sequence[str] | None = None,
    text: torch.Tensor | None = None,
) -> ResumeReport:
    """Step a session warm, and its twin resumed before every step, through ``actions``.

    ``first_frame`` (H, W, 3) uint8; ``events[i]`` the event in force for step i + 1 ("" none);
    ``text`` the session's text embedding (models with text only). The twin keeps only what the
    engine keeps in Redis per step (latent, action, event and the serialised ``resume_data``), and
    before each step its state is rebuilt by ``prefill`` from the last ``context_frames - 1`` of
    them, then released after the step. Frames are decoded as the engine's runner does: with the
    model's ``decode_step`` when it has one (before ``resume_data``), else ``decode``.
    """
    info = model.info
    window = max(1, info.context_frames - 1)
    ev = list(events) if events is not None else [""] * len(actions)
    if len(ev) != len(actions):
        raise ValueError(f"got {len(actions)} actions and {len(ev)} events")
    use_events = info.events_supported and any(ev)
    z0 = model.encode(first_frame[None])
    vecs = [model.action_vector(list(k), dict(m)) for k, m in actions]
    report = ResumeReport(steps=len(actions))

    def prefill(lat: list[torch.Tensor], act: list[torch.Tensor], first: int, evs: list[str], res: list[Any]) -> Any:
        kw: dict[str, Any] = {"events": evs} if use_events else {}
        if any(r is not None for r in res):
            kw["resume"] = [None if r is None else unpack_resume(r) for r in res]
        if text is not None:
            kw["text"] = text
        stacked = torch.stack(lat) if len({z.shape for z in lat}) == 1 else lat  # as the engine's runner
        return model.prefill(stacked, torch.stack(act), first, **kw)

    decode_step = getattr(model, "decode_step", None)

    def decode(state: Any, z: torch.Tensor) -> torch.Tensor:  # as the engine's runner: streaming when it can
        return (decode_step([state], z) if decode_step is not None else model.decode(z))[0]

    warm = prefill([z0[0]], [model.null_action()], 0, [""], [None])
    # the twin's log, as Redis keeps it: (latent, action vector, event, packed resume data or None)
    log: list[tuple[torch.Tensor, torch.Tensor, str, bytes | None]] = [(z0[0], model.null_action(), "", None)]
    prev_frame = model.decode(z0)[0]
    report.latents.append(z0[0])
    try:
        for i, vec in enumerate(vecs):
            n = i + 1
            zw = model.step([warm], vec[None], seeds=[seed], steps=[n], events=[ev[i]] if use_events else None)
            fw = decode(warm, zw)
            report.latents.append(zw[0])
            tail = log[-window:]
            cold = prefill(
                [e[0] for e in tail], [e[1] for e in tail], n - len(tail), [e[2] for e in tail], [e[3] for e in tail]
            )
            try:
                zc = model.step([cold], vec[None], seeds=[seed], steps=[n], events=[ev[i]] if use_events else None)
                fc = decode(cold, zc)
                data = model.resume_data(cold)  # after the decode, as the runner does
            finally:
                model.release_state(cold)
            log.append((zc[0], vec, ev[i], None if data is None else pack_resume(data)))
            report.resume_bytes = max(report.resume_bytes, sum(len(e[3] or b"") for e in log[-window:]))
            if not torch.equal(fw, fc):
                report.differing.append(n)
            if not torch.equal(fw, prev_frame):
                report.frames_changed += 1
            prev_frame = fw
    finally:
        model.release_state(warm)
    return report
