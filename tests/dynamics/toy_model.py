"""A tiny third-party-style dynamics model: no KV cache, a frame history as its state.

It implements :class:`worldserve.dynamics.interface.DynamicsModelProtocol` with numpy-simple maths so the
engine can be tested fast and exactly: the new latent is the last one shifted by the held keys
plus seeded noise. A session whose seed is ``POISON_SEED`` makes ``step`` raise (to test that one
item's failure fails only that item). Also loadable through the registry (``load``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from worldserve.dynamics.interface import ActionSpace, ModelInfo, Runtime, StateMemoryFull

POISON_SEED = 666
KEYS = ("left", "right", "up", "down")
H = W = 16


@dataclass
class History:
    latents: list[torch.Tensor] = field(default_factory=list)  # each (3, H, W)
    last_step: int = -1
    released: bool = False


class ToyModel:
    def __init__(self, context_frames: int = 4, max_states: int | None = None):
        self.context_frames = context_frames
        self.max_states = max_states
        self.live: set[int] = set()  # ids of unreleased states
        self.step_calls: list[int] = []  # batch size of every step call
        self.released = 0

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            frame_width=W,
            frame_height=H,
            action_space=ActionSpace(keys=KEYS, discrete_actions=16),
            context_frames=self.context_frames,
            sample_steps=1,
            default_guidance=1.0,
        )

    @property
    def runtime(self) -> Runtime:
        return Runtime(device="cpu", dtype="float32", attention_backend="none", decode_kernel="none")

    def action_vector(self, keys, mouse=None) -> torch.Tensor:
        return self.info.action_space.vector(keys, mouse)  # keys only: no mouse axis is known

    def null_action(self) -> torch.Tensor:
        return torch.zeros(len(KEYS))

    def encode(self, frames: torch.Tensor) -> torch.Tensor:  # (N, H, W, 3) uint8 -> (N, 3, H, W)
        return frames.permute(0, 3, 1, 2).float() / 255.0

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()

    def prefill(self, latents, actions, first_step, events=None, resume=None) -> History:
        if self.max_states is not None and len(self.live) >= self.max_states:
            raise StateMemoryFull("toy pool full")
        h = History([z.clone() for z in latents[-(self.context_frames - 1) :]], first_step + len(latents) - 1)
        self.live.add(id(h))
        return h

    def step(self, states, actions, seeds, steps, guidance=None, events=None) -> torch.Tensor:
        self.step_calls.append(len(states))
        if POISON_SEED in seeds:
            raise RuntimeError("poisoned session in this batch")
        out = []
        for h, a, seed, s in zip(states, actions, seeds, steps):
            assert not h.released, "stepped a released state"
            assert s == h.last_step + 1
            shift = int(a[1] - a[0])
            z = torch.roll(h.latents[-1], shifts=shift, dims=2)
            g = np.random.default_rng([seed, s])
            z = (z + torch.from_numpy(g.normal(0, 0.01, z.shape).astype(np.float32))).clamp(0, 1)
            h.latents = (h.latents + [z])[-(self.context_frames - 1) :]
            h.last_step = s
            out.append(z)
        return torch.stack(out)

    def resume_data(self, state: History) -> None:
        return None  # its state is its last frames: the window alone resumes it exactly

    def state_nbytes(self, state: History) -> int:
        return sum(z.numel() * 4 for z in state.latents)

    def release_state(self, state: History) -> None:
        if not state.released:
            state.released = True
            self.live.discard(id(state))
            self.released += 1

    def state_step(self, state: History) -> int:
        return state.last_step


def load(path, *, device, dtype, spec):
    """Registry loader (``kind: toy``)."""
    return ToyModel(**dict(spec.options))
