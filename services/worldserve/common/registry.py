"""A registry of model loaders, found by name, extensible through Python entry points.

A separately installed package adds a model by declaring an entry point in the registry's group,
e.g. in its ``pyproject.toml``::

    [project.entry-points."worldserve.dynamics_models"]
    my_world = "my_package.worldserve_adapter:load"

The loader is called as ``load(path, *, device, dtype, spec)`` (see the registry's owner for the
exact contract) and returns a loaded model. Names registered in-process (``register``) take
precedence over entry points; worldserve's own models are entry points of its own package too.
"""

from __future__ import annotations

import importlib
import json
import threading
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class UnknownModelKind(LookupError):
    """No loader is registered under this name."""


class ModelLoadError(RuntimeError):
    """A configured model cannot be loaded: the message names the model and the file at fault. A
    replica that raises it never starts (nothing falls back to random weights)."""


def load_folder(
    what: str,
    folder: Path,
    config_file: str,
    weights_file: str,
    load: Callable[[Path], T],
    errors: tuple[type[Exception], ...] = (RuntimeError, ValueError, KeyError, TypeError),
) -> T:
    """``load(folder)`` after checking the folder holds both files and valid JSON; a weights file
    that is not safetensors, and ``errors`` raised by ``load`` (shape/key mismatch, bad config
    values), become a :class:`ModelLoadError` naming the files. ``what`` names the model, e.g.
    ``"model 'platformer'"``."""
    from safetensors import SafetensorError

    for name in (config_file, weights_file):
        if not (folder / name).is_file():
            raise ModelLoadError(f"{what}: {str(folder / name)!r} not found")
    try:
        json.loads((folder / config_file).read_text())
    except ValueError as e:
        raise ModelLoadError(f"{what}: {str(folder / config_file)!r} is not valid JSON: {e}") from None
    try:
        return load(folder)
    except SafetensorError as e:
        raise ModelLoadError(f"{what}: {str(folder / weights_file)!r} is not a safetensors file: {_first(e)}") from None
    except errors as e:
        raise ModelLoadError(
            f"{what}: {str(folder / weights_file)!r} does not match {str(folder / config_file)!r}: {_first(e)}"
        ) from None


def load_pretrained(
    what: str,
    path: str | None,
    random: Callable[[], T],
    load: Callable[[Path], T],
    errors: tuple[type[Exception], ...] = (RuntimeError, ValueError, KeyError, TypeError),
    *,
    layout: str = "worldserve",
) -> T:
    """A model loader's body: ``random()`` when ``path`` is None (the config said "random"), else
    ``load(folder)``. ``layout``: ``"worldserve"``, a checked ``config.json`` + ``model.safetensors``
    folder (:func:`load_folder`); ``"own"``, a folder whose layout the model checks itself (e.g. a
    published diffusers folder): ``errors`` it raises, which name the file and the tensor, become a
    :class:`ModelLoadError` naming the model too (:func:`load_own_folder`)."""
    from worldserve.common.pretrained import CONFIG_FILE, WEIGHTS_FILE

    if path is None:
        return random()
    if layout == "own":
        return load_own_folder(what, Path(path), load, errors)
    return load_folder(what, Path(path), CONFIG_FILE, WEIGHTS_FILE, load, errors)


def load_own_folder(
    what: str,
    folder: Path,
    load: Callable[[Path], T],
    errors: tuple[type[Exception], ...] = (RuntimeError, ValueError, KeyError, TypeError),
) -> T:
    """``load(folder)`` for a model that checks its folder's layout itself: its ``errors`` (and a
    missing file, and a weights file that is not safetensors) become one-line
    :class:`ModelLoadError` s ``"<what>: <its message>"``; its message names the file and the tensor."""
    from safetensors import SafetensorError

    try:
        return load(folder)
    except ModelLoadError as e:
        raise ModelLoadError(str(e) if str(e).startswith(what) else f"{what}: {_first(e)}") from None
    except FileNotFoundError as e:
        raise ModelLoadError(f"{what}: {str(e.filename or folder)!r} not found") from None
    except SafetensorError as e:
        raise ModelLoadError(
            f"{what}: a weights file in {str(folder)!r} is not a safetensors file: {_first(e)}"
        ) from None
    except errors as e:
        raise ModelLoadError(f"{what}: {_first(e)}") from None


def _first(e: BaseException) -> str:
    return str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__


class Registry:
    def __init__(self, group: str, builtins: dict[str, str] | None = None):
        self.group = group
        self._builtins = dict(builtins or {})  # name -> "module:attr", used when metadata lacks them
        self._local: dict[str, Callable[..., Any]] = {}
        self._lock = threading.Lock()

    def register(self, name: str, loader: Callable[..., Any]) -> None:
        """Register ``loader`` under ``name`` in this process (tests, notebooks, plugins)."""
        with self._lock:
            self._local[name] = loader

    def unregister(self, name: str) -> None:
        with self._lock:
            self._local.pop(name, None)

    def _entry_points(self) -> dict[str, EntryPoint]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def names(self) -> list[str]:
        """Every registered name: in-process, entry points, built-ins."""
        return sorted(set(self._local) | set(self._entry_points()) | set(self._builtins))

    def get(self, name: str) -> Callable[..., Any]:
        """The loader registered as ``name``; ``UnknownModelKind`` naming the known ones otherwise."""
        with self._lock:
            if name in self._local:
                return self._local[name]
        eps = self._entry_points()
        loader: Callable[..., Any]  # whatever the plugin names: the contract is checked where it is called
        if name in eps:
            loader = eps[name].load()
            return loader
        if name in self._builtins:  # an uninstalled checkout (no package metadata) still finds its own
            module, _, attr = self._builtins[name].partition(":")
            loader = getattr(importlib.import_module(module), attr)
            return loader
        raise UnknownModelKind(f"no model kind {name!r} in registry {self.group!r}; known: {self.names()}")
