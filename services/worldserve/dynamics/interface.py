"""What a dynamics model gives the engine: the declared model interface.

The engine (scheduler -> state cache -> runner -> output) knows a model only through
:class:`DynamicsModel`. Anything that implements it can be served: the shipped
:class:`~worldserve.dynamics.models.transformer.WorldModel`, or a third-party model registered under the
``worldserve.dynamics_models`` entry-point group (see :mod:`worldserve.dynamics.registry`).

Per-session model state is *opaque* to the engine: a KV cache (the shipped model keeps its
keys/values in pages of a preallocated pool), or a plain frame history for a model without one.
The engine only keeps it, counts its bytes (``state_nbytes``), hands it back to ``step`` and
releases it (``release_state``) when it evicts the session.

Tensors crossing the interface: frames are ``(N, H, W, 3)`` uint8 on the CPU; latents are
float32 on the CPU (the engine stores them in Redis as raw bytes); actions are ``(N, A)`` float32
vectors built by ``action_vector``. A model may run on any device and dtype inside.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


class StateMemoryFull(RuntimeError):
    """Raised by ``prefill`` when the model's state memory (e.g. its KV page pool) cannot hold one
    more session. The engine evicts least-recently-used sessions and retries."""


@dataclass(frozen=True)
class ActionSpace:
    """What a player may send. Exactly the fields that apply are non-empty / non-zero."""

    keys: tuple[str, ...] = ()
    """Named keys, held or not (multi-hot)."""
    mouse_axes: tuple[str, ...] = ()
    """Continuous axes, each in [-1, 1]."""
    discrete_actions: int = 0
    """Number of distinct discrete actions an agent can index (2^len(keys) for key models)."""
    latent_actions: int = 0
    """Number of learned latent actions (Genie-style latent action models); 0 if none."""


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about a model, reported by GetModelInfo and used to validate requests."""

    frame_width: int
    frame_height: int
    action_space: ActionSpace
    context_frames: int
    """Frames a new frame attends to, itself included."""
    sample_steps: int
    """Denoising steps per frame (1 for a single-pass model)."""
    default_guidance: float
    events_supported: bool = False
    event_max_bytes: int = 0
    """Longest event text in UTF-8 bytes after normalisation (0: events unsupported)."""
    parameters: int = 0
    """Parameter count (informational)."""
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Runtime:
    """Where and how a loaded model runs: reported by GetModelInfo and the metrics."""

    device: str
    """e.g. "cpu", "cuda:0"."""
    dtype: str
    """e.g. "float32", "bfloat16"."""
    attention_backend: str
    """The attention backend the model's served step resolves to: "triton" or "sdpa"."""
    decode_kernel: str = ""
    """The kernel a served step runs for attention, e.g. "flash_decode_paged" or "sdpa"."""


@runtime_checkable
class DynamicsModel(Protocol):
    """The contract between a dynamics model and the engine.

    Thread-safety: the engine calls ``prefill``, ``step``, ``encode``, ``decode`` and
    ``release_state`` from one model thread only; ``action_vector`` and ``info`` may be called
    from the event loop concurrently.
    """

    @property
    def info(self) -> ModelInfo: ...

    @property
    def runtime(self) -> Runtime: ...

    def action_vector(self, keys: Sequence[str], mouse: Mapping[str, float] | None = None) -> torch.Tensor:
        """(A,) float32: validates key and axis names and ranges (``ValueError`` quoting the bad
        value) and returns the vector ``step`` takes."""
        ...

    def null_action(self) -> torch.Tensor:
        """(A,) the no-op action (also what frame 0 is given in ``prefill``)."""
        ...

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, H, W, 3) uint8 -> (N, ...) float32 CPU latents. Deterministic."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """(N, ...) latents -> (N, H, W, 3) uint8 CPU frames."""
        ...

    def prefill(
        self, latents: torch.Tensor, actions: torch.Tensor, first_step: int, events: Sequence[str] | None = None
    ) -> Any:
        """A session's state from its last frames: ``latents`` (T, ...) at absolute steps
        ``first_step .. first_step + T - 1``, ``actions`` (T, A) that made them, ``events`` (T,)
        the event text in force per frame. May raise :class:`StateMemoryFull`."""
        ...

    def step(
        self,
        states: list[Any],
        actions: torch.Tensor,
        seeds: Sequence[int],
        steps: Sequence[int],
        guidance: float | None = None,
        events: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """One new frame per session: (N, ...) float32 CPU latents; advances each state in place.
        ``steps[i]`` is the absolute step of session i's new frame; the noise of a frame depends
        only on (seeds[i], steps[i]), never on the rest of the batch."""
        ...

    def state_nbytes(self, state: Any) -> int:
        """Bytes of memory the state holds (device memory for a GPU model)."""
        ...

    def release_state(self, state: Any) -> None:
        """Free the state's memory (idempotent). The state must not be used afterwards."""
        ...

    def state_step(self, state: Any) -> int:
        """Absolute step of the newest frame the state holds."""
        ...
