"""Model folders: ``config.json`` + ``model.safetensors`` (never pickle), as every worldserve model
writes and reads them (``save_pretrained`` / ``from_pretrained``)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def read_folder(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config dict, CPU state dict) of a model folder; FileNotFoundError naming a missing file."""
    path = Path(path)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{str(path / name)!r} not found; expected a save_pretrained directory")
    return json.loads((path / CONFIG_FILE).read_text()), load_file(path / WEIGHTS_FILE, device="cpu")


def write_folder(path: str | Path, config: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> None:
    """Write a model folder, each file replaced atomically (tensors copied to the CPU first)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / (WEIGHTS_FILE + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp, metadata={"format": "pt"})
    os.replace(tmp, path / WEIGHTS_FILE)
    tmp = path / (CONFIG_FILE + ".tmp")
    tmp.write_text(json.dumps(dict(config), indent=2) + "\n")
    os.replace(tmp, path / CONFIG_FILE)
