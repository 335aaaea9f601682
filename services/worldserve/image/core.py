"""Prompt -> first frame, independent of gRPC: validation and the backend call."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from worldserve.common.errors import InvalidArgument
from worldserve.common.registry import ModelLoadError, Registry, load_pretrained

MAX_PROMPT_CHARS = 2000
MAX_STEPS = 64
MAX_GUIDANCE = 20.0


class ImageCore:
    def __init__(self, backend):
        self.backend = backend

    @property
    def name(self) -> str:
        return getattr(self.backend, "name", type(self.backend).__name__)

    @property
    def default_size(self) -> tuple[int, int]:
        w, h = self.backend.supported_sizes[0]
        return int(w), int(h)

    def generate(
        self, prompt: str, *, seed: int = 0, width: int = 0, height: int = 0, steps: int = 0, guidance: float = 0.0
    ) -> np.ndarray:
        """(H, W, 3) uint8; INVALID_ARGUMENT quoting any bad value."""
        if not prompt or not prompt.strip():
            raise InvalidArgument("prompt is empty")
        if len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidArgument(f"prompt of {len(prompt)} characters exceeds the limit of {MAX_PROMPT_CHARS}")
        dw, dh = self.default_size
        width, height = width or dw, height or dh
        if (width, height) not in {tuple(s) for s in self.backend.supported_sizes}:
            raise InvalidArgument(
                f"size {width}x{height} is not one the model can make; supported: "
                + ", ".join(f"{w}x{h}" for w, h in self.backend.supported_sizes)
            )
        if not 0 <= steps <= MAX_STEPS:
            raise InvalidArgument(f"steps={steps} is out of range [0, {MAX_STEPS}]")
        if not (0.0 <= guidance <= MAX_GUIDANCE) or guidance != guidance:
            raise InvalidArgument(f"guidance={guidance!r} is out of range [0, {MAX_GUIDANCE}]")
        steps = steps or self.backend.default_steps
        guidance = guidance or self.backend.default_guidance
        try:
            img = self.backend.generate(
                prompt, seed=int(seed), width=width, height=height, steps=steps, guidance=guidance
            )
        except ValueError as e:
            raise InvalidArgument(str(e)) from None
        return np.asarray(img, dtype=np.uint8)


GROUP = "worldserve.image_models"
REGISTRY = Registry(
    GROUP,
    builtins={
        "tiny_text_to_image": "worldserve.image.core:load_tiny_text_to_image",
        "caption_decoder": "worldserve.image.decoder:load_caption_decoder",
    },
)


def load_tiny_text_to_image(path: str | None, *, device: str):
    """The shipped prompt-to-image model (:class:`~worldserve.image.model.TinyTextToImage`)."""
    from worldserve.image.model import TinyTextToImage

    return load_pretrained(
        "image model 'tiny_text_to_image'",
        path,
        lambda: TinyTextToImage.random(seed=0).to(device),
        lambda folder: TinyTextToImage.from_pretrained(folder).to(device),
    )


def load_backend(config, device: str = "cpu"):
    """The image model of kind ``image_model_kind`` (the ``worldserve.image_models`` entry-point
    group) from ``image_model_path``, else the shipped weights; random init (seed 0) only for
    ``image_model_path: random``. A loader is ``load(path, *, device) -> ImageBackend``; a missing
    folder, a missing or corrupt file or an unknown kind is a :class:`ModelLoadError` naming it."""
    from worldserve.common.config import model_path

    kind = config.image_model_kind
    path = model_path(config.image_model_path, "image")
    if path is not None and not Path(path).is_dir():
        raise ModelLoadError(f"image model {kind!r}: model folder {path!r} not found")
    try:
        loader = REGISTRY.get(kind)
    except LookupError as e:
        raise ModelLoadError(f"image model {kind!r}: {e}") from None
    return loader(path, device=device)
