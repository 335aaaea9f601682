"""What a dynamics model gives the engine: the declared model interface.

The engine (scheduler -> state cache -> runner -> output) knows a model only through
:class:`DynamicsModelProtocol`. Anything that implements it can be served: the shipped
:class:`~worldserve.dynamics.models.transformer.WorldModel`, or a third-party model registered under the
``worldserve.dynamics_models`` entry-point group (see :mod:`worldserve.dynamics.registry`).

Per-session model state is *opaque* to the engine: a KV cache (the shipped model keeps its
keys/values in pages of a preallocated pool), or a plain frame history for a model without one.
The engine only keeps it, counts its bytes (``state_nbytes``), hands it back to ``step`` and
releases it (``release_state``) when it evicts the session.

**Exact resume.** Redis holds the truth; the engine's state cache is only a cache. A session whose
state was evicted (or that another replica stepped) is rebuilt by ``prefill`` from what the engine
keeps per step in Redis: the latent, the action, the event in force and the model's
``resume_data`` of the state that step produced (serialised by :func:`pack_resume`, safetensors;
kept for the last ``context_frames - 1`` steps and dropped after). The rebuilt state must be
*bitwise* the one the session had when stepped warm, so its next frames are too, however long
the session and wherever it walked. A model declares what it needs beyond the latent window
through ``resume_data`` (None: nothing; the transformer's KV page of the frame, the canvas's
world memory every ``context_frames - 1`` steps). :func:`worldserve.dynamics.testkit.check_exact_resume`
checks it for any model kind.

Tensors crossing the interface: frames are ``(N, H, W, 3)`` uint8 on the CPU; latents are
float32 on the CPU (the engine stores them in Redis as raw bytes); actions are ``(N, A)`` float32
vectors built by ``action_vector``. A model may run on any device and dtype inside. A step's latent
may differ in shape from step 0's (a chunked video model: one latent frame at step 0, a chunk of
them per later step); ``prefill`` then gets them as a list.

Two optional parts, used when a model has them:

- ``decode_step(states, latents) -> frames``: a streaming decoder with a cache per session (a
  causal video VAE decodes a chunk against the chunks before it). ``latents`` (N, ...) are the
  sessions' newest ``step`` output; it returns (N, H, W, 3) uint8 CPU frames and advances each
  state's decoder cache. The engine calls it instead of ``decode`` after every ``step``, before
  ``resume_data`` (so a step's resume data holds the decoder cache after that step's frames).
- ``prefill(..., text=...)``: a model whose ``info.extra["text_dim"]`` is set takes the session's
  text embedding, an (L, text_dim) float32 tensor (a precomputed prompt embedding), or None when
  the session has none. The engine passes ``text`` only to such a model, and only when the
  session has one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


def pack_resume(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """A model's ``resume_data`` as bytes for Redis: safetensors (a JSON header of names, dtypes
    and shapes, then raw bytes; never pickle), zstd-compressed where that makes it smaller
    (:func:`worldserve.common.codec.pack_bytes`: lossless). Tensors are copied to the CPU."""
    from safetensors.torch import save

    from worldserve.common.packing import pack_bytes

    return pack_bytes(save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


def unpack_resume(data: bytes) -> dict[str, torch.Tensor]:
    """The tensors of :func:`pack_resume` (CPU); also the plain safetensors older code wrote."""
    from safetensors.torch import load

    from worldserve.common.packing import unpack_bytes

    return load(unpack_bytes(data))


class StateMemoryFull(RuntimeError):
    """Raised by ``prefill`` when the model's state memory (e.g. its KV page pool) cannot hold one
    more session. The engine evicts least-recently-used sessions and retries."""


class ActionError(ValueError):
    """An action outside its :class:`ActionSpace`; ``str()`` is one line quoting the bad value.

    ``what`` and ``names`` say what was wrong, for a caller that words it its own way (the web's
    live protocol): ``"keys"`` with every unknown key in the order given, ``"axis"`` with the
    unknown mouse axis, ``"value"`` with the axis whose value is not a number in [-1, 1], ``"type"``
    when the keys are one string instead of a sequence of names.
    """

    def __init__(self, message: str, what: str = "", names: tuple[Any, ...] = ()):
        super().__init__(message)
        self.what, self.names = what, names


@dataclass(frozen=True)
class ActionSpace:
    """What a player may send. Exactly the fields that apply are non-empty / non-zero.

    :meth:`check` is the one check of an action's keys, mouse axes and values: the shipped models'
    ``action_vector`` (through :meth:`vector`) and the web gateway's live messages both use it.
    """

    keys: tuple[str, ...] = ()
    """Named keys, held or not (multi-hot)."""
    mouse_axes: tuple[str, ...] = ()
    """Continuous axes, each in [-1, 1]."""
    discrete_actions: int = 0
    """Number of distinct discrete actions an agent can index (2^len(keys) for key models)."""
    latent_actions: int = 0
    """Number of learned latent actions (Genie-style latent action models); 0 if none."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", tuple(self.keys))
        object.__setattr__(self, "mouse_axes", tuple(self.mouse_axes))

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> ActionSpace:
        """From a model's info as plain data (``service.model_info_dict``: what the web gateway gets)."""
        return cls(
            keys=tuple(info["keys"]),
            mouse_axes=tuple(info["mouse_axes"]),
            discrete_actions=int(info.get("discrete_actions") or 0),
            latent_actions=int(info.get("latent_actions") or 0),
        )

    def check(
        self, keys: Sequence[str], mouse: Mapping[str, Any] | None = None, *, numbers_only: bool = False
    ) -> tuple[tuple[str, ...], dict[str, float]]:
        """An action checked against this space: every key one of ``keys``, every mouse axis one of
        ``mouse_axes`` with a finite value in [-1, 1]. Returns (the keys, the mouse values as floats).

        Raises :class:`ActionError` (a ``ValueError``) on the first problem: the unknown keys
        first, then the mouse axes in order, each axis's name before its value. A value may be
        anything ``float()`` takes; ``numbers_only``: an int or a float only (a JSON number: no
        bool, no numeric string).
        """
        if isinstance(keys, (str, bytes)):
            raise ActionError(f"keys must be a sequence of key names, not the string {keys!r}", "type", (keys,))
        keys = tuple(keys)
        unknown = tuple(k for k in keys if not isinstance(k, str) or k not in self.keys)
        if unknown:
            raise ActionError(f"unknown key {unknown[0]!r}; expected one of {self.keys!r}", "keys", unknown)
        values: dict[str, float] = {}
        for axis, value in (mouse or {}).items():
            if not isinstance(axis, str) or axis not in self.mouse_axes:
                raise ActionError(f"unknown mouse axis {axis!r}; expected one of {self.mouse_axes!r}", "axis", (axis,))
            try:
                if numbers_only and (isinstance(value, bool) or not isinstance(value, (int, float))):
                    raise TypeError(value)
                fv = float(value)
            except OverflowError:  # an int too large for a float: out of range
                fv = math.inf
            except (TypeError, ValueError):
                raise ActionError(
                    f"mouse axis {axis!r} must be a number in [-1, 1], got {value!r}", "value", (axis,)
                ) from None
            if not (math.isfinite(fv) and -1.0 <= fv <= 1.0):
                raise ActionError(
                    f"mouse axis {axis!r} must be a finite number in [-1, 1], got {value!r}", "value", (axis,)
                )
            values[axis] = fv
        return keys, values

    def vector(self, keys: Sequence[str], mouse: Mapping[str, Any] | None = None) -> torch.Tensor:
        """(len(keys) + len(mouse_axes),) float32 on the CPU, after :meth:`check`: multi-hot of the
        held ``keys``, then the mouse axes (missing = 0). The shipped models' action vector."""
        held, values = self.check(keys, mouse)
        vec = torch.zeros(len(self.keys) + len(self.mouse_axes), dtype=torch.float32)
        for key in held:
            vec[self.keys.index(key)] = 1.0
        for axis, v in values.items():
            vec[len(self.keys) + self.mouse_axes.index(axis)] = v
        return vec


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
    events: tuple[str, ...] = ()
    """The event texts the model declares (a free-text event is mapped to one by the text app);
    empty: none declared (any text within ``event_max_bytes`` is passed through)."""
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
class DynamicsModelProtocol(Protocol):
    """The contract between a dynamics model and the engine.

    Not to be confused with the Serve deployments ``DynamicsModel-<name>``: those run
    :class:`~worldserve.dynamics.service.ModelServer`, which serves one model implementing this.

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
        value) and returns the vector ``step`` takes (``info.action_space.vector`` does both for
        the layout of keys then mouse axes)."""
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
        self,
        latents: torch.Tensor | Sequence[torch.Tensor],
        actions: torch.Tensor,
        first_step: int,
        events: Sequence[str] | None = None,
        resume: Sequence[Mapping[str, torch.Tensor] | None] | None = None,
    ) -> Any:
        """A session's state from its last frames: ``latents`` (T, ...) at absolute steps
        ``first_step .. first_step + T - 1`` (a list of T tensors when their shapes differ: see the
        module docstring), ``actions`` (T, A) that made them, ``events`` (T,)
        the event text in force per frame, ``resume`` (T,) the ``resume_data`` of each frame's state
        (None where there was none; the engine passes ``resume`` only when one is not None). The
        engine hands the last ``context_frames - 1`` frames (all since step 0 when fewer). The
        state must be bitwise the one stepping the session warm reached (see the module
        docstring). May raise :class:`StateMemoryFull`. A model with text conditioning also takes
        ``text=`` (see the module docstring)."""
        ...

    def resume_data(self, state: Any) -> Mapping[str, torch.Tensor] | None:
        """What an exact ``prefill`` needs, beyond latents, actions and events, to resume at the
        state's newest step: named tensors the engine stores with that step (bounded: kept for
        the last ``context_frames - 1`` steps) and hands back in ``prefill(..., resume=...)``.
        None when the frames suffice. Called on the model thread after each ``step``."""
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


DynamicsModel = DynamicsModelProtocol
"""The Protocol's former name, kept so that third-party models importing it still load."""
