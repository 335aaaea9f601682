"""Dynamics models by name: the ``worldserve.dynamics_models`` entry-point group.

A loader is ``load(path, *, device, dtype, spec) -> DynamicsModelProtocol``: ``path`` is a local folder
(config + safetensors; never pickle) or None for a random initialisation, ``device`` a torch
device string, ``dtype`` a torch dtype, ``spec`` the served model's
:class:`~worldserve.common.config.ModelSpec` (kind-specific ``options``, ``sample_steps``).
:func:`load_model` resolves a served model's spec against the config and the registry, checks the
result against :class:`~worldserve.dynamics.interface.DynamicsModelProtocol`, and turns every loading
failure into :class:`ModelLoadError` naming the model and the file.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from worldserve.common.config import Config, ModelSpec, folder_kind, model_path, torch_dtype
from worldserve.common.registry import ModelLoadError, Registry, load_pretrained
from worldserve.dynamics.interface import DynamicsModelProtocol

GROUP = "worldserve.dynamics_models"
REGISTRY = Registry(
    GROUP,
    builtins={
        "world_model": "worldserve.dynamics.registry:load_world_model",
        "scroll_canvas": "worldserve.dynamics.registry:load_scroll_canvas",
        "causal_dit": "worldserve.dynamics.registry:load_causal_dit",
    },
)


def load_world_model(path: str | None, *, device: str, dtype: Any, spec: ModelSpec) -> DynamicsModelProtocol:
    """The shipped architecture (:class:`~worldserve.dynamics.models.transformer.WorldModel`); ``path=None`` is a
    random initialisation (seed 0) of the default config."""
    from worldserve.dynamics.models.transformer import WorldModel

    overrides = {"sample_steps": spec.sample_steps} if spec.sample_steps else None
    return load_pretrained(
        f"model {spec.name!r}",
        path,
        lambda: WorldModel.load(None, device=device, dtype=dtype, overrides=overrides),
        lambda folder: WorldModel.load(folder, device=device, dtype=dtype, overrides=overrides),
        errors=(RuntimeError, ValueError, KeyError),
    )


def load_scroll_canvas(path: str | None, *, device: str, dtype: Any, spec: ModelSpec) -> DynamicsModelProtocol:
    """The scroll-canvas model (:class:`~worldserve.dynamics.models.canvas.CanvasWorldModel`), deterministic
    and single-pass (``sample_steps`` does not apply); ``path=None`` is a random initialisation."""
    from worldserve.dynamics.models.canvas.model import CanvasWorldModel

    return load_pretrained(
        f"model {spec.name!r}",
        path,
        lambda: CanvasWorldModel.random(seed=0, device=device, dtype=dtype),
        lambda folder: CanvasWorldModel.from_pretrained(folder, device=device, dtype=dtype),
    )


def load_causal_dit(path: str | None, *, device: str, dtype: Any, spec: ModelSpec) -> DynamicsModelProtocol:
    """The Wan-lineage causal video DiT (:class:`~worldserve.dynamics.models.causal_dit.CausalDiTWorldModel`)
    from a published folder (diffusers' layout: ``transformer/`` + ``vae/``, or the original Wan
    repository's names through one key map), run as ``spec.options`` say (chunks, rolling cache,
    denoising schedule, frame size, action names: ``CausalDiTOptions``). ``path=None`` ("random")
    is the tiny random test model (``causal_dit.testing.tiny_config``) at the options' frame size.
    A folder that does not load is a :class:`ModelLoadError` naming the model, the file and the
    tensor; a bad option one naming the option."""
    from worldserve.dynamics.models.causal_dit import CausalDiTWorldModel

    def random() -> DynamicsModelProtocol:
        from worldserve.dynamics.models.causal_dit.testing import tiny_config
        from worldserve.dynamics.models.causal_dit.vae import tiny_vae_config

        return CausalDiTWorldModel.random(
            tiny_config(), tiny_vae_config(z_dim=4), device=device, dtype=dtype, options=spec.options, name=spec.name
        )

    def load(folder: Path) -> DynamicsModelProtocol:
        return CausalDiTWorldModel.load(folder, device=device, dtype=dtype, options=spec.options, name=spec.name)

    try:
        return load_pretrained(
            f"model {spec.name!r}",
            path,
            random,
            load,
            errors=(RuntimeError, ValueError, KeyError, TypeError, OSError),
            layout="own",
        )
    except ValueError as e:  # a bad option (random weights too)
        raise ModelLoadError(f"model {spec.name!r}: {e}") from None


def load_model(spec: ModelSpec, config: Config, device: str) -> DynamicsModelProtocol:
    """Load the served model ``spec`` on ``device`` in the configured dtype. A spec without a kind
    takes the ``"kind"`` of its folder's config.json (else ``world_model``)."""
    path = model_path(spec.path or config.dynamics_model_path, "dynamics")
    if path is not None and not Path(path).is_dir():
        raise ModelLoadError(f"model {spec.name!r}: model folder {path!r} not found")
    if not spec.kind:
        spec = dataclasses.replace(spec, kind=folder_kind(path, "world_model"))
    try:
        loader = REGISTRY.get(spec.kind)
    except LookupError as e:
        raise ModelLoadError(f"model {spec.name!r}: {e}") from None
    model = loader(path, device=device, dtype=torch_dtype(config, device), spec=spec)
    missing = [
        m
        for m in (
            "info",
            "runtime",
            "action_vector",
            "null_action",
            "encode",
            "decode",
            "prefill",
            "step",
            "state_nbytes",
            "release_state",
            "state_step",
        )
        if not hasattr(model, m)
    ]
    if missing:
        raise ModelLoadError(
            f"model {spec.name!r} (kind {spec.kind!r}) lacks {missing} of the DynamicsModelProtocol interface"
        )
    return model
